// The pool: workers sleep on a condition variable between jobs and spin
// briefly before sleeping, so back-to-back kernels (a decode step is hundreds
// of them) do not pay a wake-up each time.
#include "cpu/thread_pool.h"

#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace jang::cpu {

namespace {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

class Pool {
public:
  explicit Pool(int threads) : threads_(threads) {
    for (int i = 1; i < threads_; ++i) {
      std::thread([this] {
        worker();
      }).detach();
    }
  }

  int size() const {
    return threads_;
  }

  void run(int64_t n_tasks, const std::function<void(int64_t)>& fn) {
    std::unique_lock<std::mutex> busy(run_mutex_, std::try_to_lock);
    if (!busy.owns_lock() || threads_ == 1 || n_tasks <= 1) {
      for (int64_t i = 0; i < n_tasks; ++i) {
        fn(i);
      }
      return;
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      fn_ = &fn;
      n_tasks_ = n_tasks;
      next_.store(0);
      done_.store(0);
      error_ = nullptr;
      generation_.fetch_add(1, std::memory_order_release);
    }
    cv_.notify_all();
    work();
    // Wait for tasks other threads claimed. On a loaded machine a worker may
    // be descheduled mid-task: after a short spin, give the core away.
    for (int spin = 0; done_.load(std::memory_order_acquire) < n_tasks;
         ++spin) {
      if (spin < 256) {
        cpu_relax();
      } else {
        std::this_thread::yield();
      }
    }
    std::exception_ptr error;
    {
      // No worker joins after this; wait for those that joined to leave, so
      // none can touch fn (or the next job's counters) after we return.
      std::lock_guard<std::mutex> lock(mutex_);
      fn_ = nullptr;
      error = error_;
    }
    while (active_.load(std::memory_order_acquire) != 0) {
      std::this_thread::yield();
    }
    if (error) {
      std::rethrow_exception(error);
    }
  }

private:
  void work() {
    work(fn_, n_tasks_);
  }

  void work(const std::function<void(int64_t)>* fn, int64_t n) {
    int64_t i;
    while ((i = next_.fetch_add(1, std::memory_order_relaxed)) < n) {
      try {
        (*fn)(i);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mutex_);
        if (!error_) {
          error_ = std::current_exception();
        }
      }
      done_.fetch_add(1, std::memory_order_acq_rel);
    }
  }

  void worker() {
    uint64_t seen = 0;
    for (;;) {
      // Spin briefly (a few microseconds) before sleeping: longer spins steal
      // the core from other threads (MLX, BLAS, other processes) on small
      // machines.
      bool fresh = false;
      for (int spin = 0; spin < 256; ++spin) {
        if (generation_.load(std::memory_order_acquire) != seen) {
          fresh = true;
          break;
        }
        cpu_relax();
      }
      std::unique_lock<std::mutex> lock(mutex_);
      if (!fresh) {
        cv_.wait(lock, [&] {
          return generation_.load() != seen;
        });
      }
      seen = generation_.load();
      if (fn_ == nullptr) {
        continue;
      }
      const auto* fn = fn_;
      const int64_t n = n_tasks_;
      active_.fetch_add(1, std::memory_order_acq_rel);
      lock.unlock();
      work(fn, n);
      active_.fetch_sub(1, std::memory_order_acq_rel);
    }
  }

  const int threads_;
  std::mutex run_mutex_;
  std::mutex mutex_;
  std::condition_variable cv_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int64_t> next_{0};
  std::atomic<int64_t> done_{0};
  std::atomic<int> active_{0};
  const std::function<void(int64_t)>* fn_ = nullptr;
  int64_t n_tasks_ = 0;
  std::exception_ptr error_;
};

int threads_from_env() {
  if (const char* env = std::getenv("JANG_NUM_THREADS")) {
    const int n = std::atoi(env);
    if (n >= 1) {
      return n;
    }
  }
  const unsigned hw = std::thread::hardware_concurrency();
  return hw ? static_cast<int>(hw) : 1;
}

Pool& pool() {
  // Never destroyed: detached workers may still be asleep at interpreter exit.
  static Pool* p = new Pool(threads_from_env());
  return *p;
}

} // namespace

int num_threads() {
  return pool().size();
}

void parallel_for(int64_t n_tasks, const std::function<void(int64_t)>& fn) {
  pool().run(n_tasks, fn);
}

} // namespace jang::cpu
