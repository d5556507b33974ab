#include "threadpool.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

namespace peft {
namespace {

struct Pool {
  std::mutex region;                 // held by the thread that owns the current parallel region
  std::mutex m;
  std::condition_variable cv;
  std::vector<std::thread> workers;
  const std::function<void(int, int)>* task = nullptr;
  int task_threads = 0;
  std::atomic<unsigned long> generation{0};
  std::atomic<int> remaining{0};
  std::atomic<int> sleepers{0};
  int wanted = 1;
  bool stopping = false;

  Pool() {
    unsigned hc = std::thread::hardware_concurrency();
    wanted = hc == 0 ? 1 : static_cast<int>(std::min(hc, 256u));
  }
  ~Pool() {
    {
      std::lock_guard<std::mutex> g(m);
      stopping = true;
      generation.fetch_add(1);
    }
    cv.notify_all();
    for (auto& t : workers) t.join();
  }

  void worker_loop(int idx) {
    unsigned long seen = 0;
    for (;;) {
      // spin a little for the next region, then sleep
      unsigned long g = generation.load(std::memory_order_acquire);
      auto spin_until = std::chrono::steady_clock::now() + std::chrono::microseconds(200);
      while (g == seen && std::chrono::steady_clock::now() < spin_until) {
        for (int i = 0; i < 64; ++i) {
#if defined(__x86_64__) || defined(__i386__)
          __builtin_ia32_pause();
#endif
        }
        g = generation.load(std::memory_order_acquire);
      }
      if (g == seen) {
        std::unique_lock<std::mutex> lk(m);
        sleepers.fetch_add(1);
        cv.wait(lk, [&] { return generation.load() != seen; });
        sleepers.fetch_sub(1);
        g = generation.load();
      }
      const std::function<void(int, int)>* fn;
      int nt;
      {
        // generation, task and thread count change together under m: read them together
        std::lock_guard<std::mutex> lk(m);
        if (stopping) return;
        seen = generation.load();
        fn = task;
        nt = task_threads;
      }
      int tid = idx + 1;
      if (fn && tid < nt) {
        (*fn)(tid, nt);
        remaining.fetch_sub(1, std::memory_order_acq_rel);
      }
    }
  }

  void ensure_workers(int n) {
    while (static_cast<int>(workers.size()) < n - 1) {
      int idx = static_cast<int>(workers.size());
      workers.emplace_back([this, idx] { worker_loop(idx); });
    }
  }
};

Pool& pool() {
  static Pool* p = new Pool();  // never destroyed: workers may outlive static destruction order
  return *p;
}

}  // namespace

int num_threads() { return pool().wanted; }

void set_num_threads(int n) {
  Pool& p = pool();
  std::lock_guard<std::mutex> g(p.region);
  p.wanted = std::max(1, std::min(n, 256));
}

int parallel_run(int n, const std::function<void(int, int)>& fn) {
  Pool& p = pool();
  n = std::min(n, p.wanted);
  if (n <= 1) {
    fn(0, 1);
    return 1;
  }
  std::unique_lock<std::mutex> region(p.region, std::try_to_lock);
  if (!region.owns_lock()) {  // someone else is inside a parallel region: run serially
    fn(0, 1);
    return 1;
  }
  p.ensure_workers(n);
  {
    std::lock_guard<std::mutex> lk(p.m);
    p.task = &fn;
    p.task_threads = n;
    p.remaining.store(n - 1);
    p.generation.fetch_add(1, std::memory_order_release);
  }
  if (p.sleepers.load() > 0) p.cv.notify_all();
  fn(0, n);
  while (p.remaining.load(std::memory_order_acquire) > 0) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#else
    std::this_thread::yield();
#endif
  }
  {
    std::lock_guard<std::mutex> lk(p.m);
    p.task = nullptr;
  }
  return n;
}

void split_range(long total, int tid, int nthreads, long align, long* begin, long* end) {
  long units = (total + align - 1) / align;
  long per = units / nthreads, extra = units % nthreads;
  long ub = tid * per + std::min<long>(tid, extra);
  long ue = ub + per + (tid < extra ? 1 : 0);
  *begin = std::min(total, ub * align);
  *end = std::min(total, ue * align);
}

int slots(long work, long min_work) { return work < min_work ? 1 : num_threads(); }

void run_slots(long total, int nslots, const std::function<void(long, long, int)>& body) {
  parallel_run(nslots, [&](int tid, int n) {
    long b, e;
    split_range(total, tid, n, 1, &b, &e);
    body(b, e, tid);
  });
}

void parallel_for(long total, long min_per_thread, const std::function<void(long, long)>& body) {
  if (total <= 0) return;
  int nt = num_threads();
  if (min_per_thread < 1) min_per_thread = 1;
  long max_threads = total / min_per_thread;
  if (max_threads < 2 || nt < 2) {
    body(0, total);
    return;
  }
  int n = static_cast<int>(std::min<long>(nt, max_threads));
  parallel_run(n, [&](int tid, int nthreads) {
    long b, e;
    split_range(total, tid, nthreads, 1, &b, &e);
    if (b < e) body(b, e);
  });
}

}  // namespace peft
