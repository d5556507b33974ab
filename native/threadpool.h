// One persistent pool of worker threads for every parallel kernel.
//
// parallel_run(n, fn) calls fn(tid, n) for tid = 0..n-1, tid 0 on the calling thread, and returns
// when all have finished. Workers spin briefly after a task (consecutive kernels then start in
// about a microsecond) and sleep on a condition variable otherwise. The pool is process-wide; a
// call made while another thread is inside a parallel region (e.g. a second worker_thread of
// Node) runs fn serially as fn(0, 1) instead of waiting, so kernels never deadlock or oversubscribe.
#pragma once
#include <functional>

namespace peft {

// Number of threads used by parallel kernels (>= 1). Default: hardware concurrency.
int num_threads();
// Sets the thread count (clamped to [1, 256]); workers are created or retired lazily.
void set_num_threads(int n);
// Runs fn(tid, nthreads) on min(n, num_threads()) threads; returns the count actually used.
int parallel_run(int n, const std::function<void(int, int)>& fn);
// Splits [0, total) into nthreads contiguous chunks of `align`-multiples; chunk for tid.
void split_range(long total, int tid, int nthreads, long align, long* begin, long* end);
// Deterministic reductions: slots(work, min_work) is the number of partial results to keep (1 when
// work < min_work, else num_threads()); run_slots(total, slots, body) calls body(begin, end, slot)
// on contiguous chunks of [0, total), at most one per slot (all of it in slot 0 when the pool is
// busy). Combining the partials in slot order gives the same result for a given thread count.
int slots(long work, long min_work);
void run_slots(long total, int nslots, const std::function<void(long, long, int)>& body);
// Parallel loop over [0, total) in contiguous chunks; runs serially when total < min_per_thread*2.
void parallel_for(long total, long min_per_thread, const std::function<void(long, long)>& body);

}  // namespace peft
