"""numpy (OpenBLAS) SGEMM reference for bench/gemm.ts: prints one JSON line per shape.

Usage: python bench/ref_gemm.py M,N,K [M,N,K ...]   (thread count from OPENBLAS_NUM_THREADS)
"""
import json
import sys
import time

import numpy as np


def best_gflops(M: int, N: int, K: int, runs: int = 5, min_time: float = 0.3) -> float:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((M, K), dtype=np.float32)
    b = rng.standard_normal((K, N), dtype=np.float32)
    c = np.empty((M, N), dtype=np.float32)
    np.matmul(a, b, out=c)  # warm-up
    best = 0.0
    for _ in range(runs):
        n, t0 = 0, time.perf_counter()
        while True:
            np.matmul(a, b, out=c)
            n += 1
            dt = time.perf_counter() - t0
            if dt >= min_time:
                break
        best = max(best, 2.0 * M * N * K * n / dt / 1e9)
    return best


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        M, N, K = (int(x) for x in arg.split(","))
        print(json.dumps({"shape": [M, N, K], "gflops": best_gflops(M, N, K)}), flush=True)
