"""numpy (OpenBLAS) SGEMM reference for bench/gemm.ts: prints one JSON line with the BLAS that
threadpoolctl reports (library, version, architecture = the kernel OpenBLAS chose), then one JSON
line per shape with GFLOP/s by wall clock and by process CPU time (flops / (CPU seconds / threads),
which a busy shared machine disturbs less).

Usage: python bench/ref_gemm.py M,N,K [M,N,K ...]   (thread count from OPENBLAS_NUM_THREADS)
"""
import json
import os
import sys
import time

import numpy as np

try:
    from threadpoolctl import threadpool_info
except ImportError:  # pragma: no cover
    threadpool_info = lambda: []  # noqa: E731


def best_gflops(M: int, N: int, K: int, threads: int, runs: int = 7, min_time: float = 0.25):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((M, K), dtype=np.float32)
    b = rng.standard_normal((K, N), dtype=np.float32)
    c = np.empty((M, N), dtype=np.float32)
    np.matmul(a, b, out=c)  # warm-up
    best_wall = best_cpu = 0.0
    for _ in range(runs):
        n, t0, c0 = 0, time.perf_counter(), time.process_time()
        while True:
            np.matmul(a, b, out=c)
            n += 1
            dt = time.perf_counter() - t0
            if dt >= min_time:
                break
        dc = time.process_time() - c0
        flops = 2.0 * M * N * K * n
        best_wall = max(best_wall, flops / dt / 1e9)
        best_cpu = max(best_cpu, flops / (dc / threads) / 1e9)
    return best_wall, best_cpu


if __name__ == "__main__":
    threads = int(os.environ.get("OPENBLAS_NUM_THREADS", "1"))
    blas = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    print(json.dumps({"blas": [{k: i.get(k) for k in ("internal_api", "version", "architecture", "num_threads")} for i in blas]}), flush=True)
    for arg in sys.argv[1:]:
        M, N, K = (int(x) for x in arg.split(","))
        w, c = best_gflops(M, N, K, threads)
        print(json.dumps({"shape": [M, N, K], "gflops": w, "cpu_gflops": c}), flush=True)
