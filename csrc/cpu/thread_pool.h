// A small persistent thread pool for jang's CPU kernels. MLX's CPU encoder
// runs each task on one stream thread; a kernel that wants more cores calls
// parallel_for from inside its dispatched task.
#pragma once

#include <cstdint>
#include <functional>

namespace jang::cpu {

/// Number of threads parallel_for uses (workers plus the caller): the
/// JANG_NUM_THREADS environment variable if set, else the hardware count.
int num_threads();

/// Calls fn(task) for every task in [0, n_tasks), spread over the pool; the
/// caller runs tasks too and returns when all are done. Runs serially when
/// n_tasks is 1, the pool has one thread, or another caller holds the pool.
/// An exception thrown by fn is rethrown in the caller.
void parallel_for(int64_t n_tasks, const std::function<void(int64_t)>& fn);

} // namespace jang::cpu
