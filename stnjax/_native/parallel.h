// ParallelFor over XLA's intra-op thread pool, shared by the FFI handlers.

#ifndef STNJAX_NATIVE_PARALLEL_H_
#define STNJAX_NATIVE_PARALLEL_H_

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>

#include "xla/ffi/api/ffi.h"

namespace stnjax {

// Runs body(i) for i in [0, n) on the calling thread and the pool's workers; returns
// when every index is done. Late workers find no index left and touch nothing else.
template <typename Body>
void ParallelFor(xla::ffi::ThreadPool& pool, int64_t n, Body body) {
  struct Progress {
    std::atomic<int64_t> next{0};
    int64_t done = 0;
    std::mutex mutex;
    std::condition_variable all_done;
  };
  auto progress = std::make_shared<Progress>();
  auto work = [progress, n, body]() {
    for (int64_t i; (i = progress->next.fetch_add(1)) < n;) {
      body(i);
      std::lock_guard<std::mutex> lock(progress->mutex);
      if (++progress->done == n) progress->all_done.notify_all();
    }
  };
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), n) - 1;
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule([work] { work(); });
  work();
  std::unique_lock<std::mutex> lock(progress->mutex);
  progress->all_done.wait(lock, [&] { return progress->done == n; });
}

}  // namespace stnjax

#endif  // STNJAX_NATIVE_PARALLEL_H_
