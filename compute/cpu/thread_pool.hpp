#pragma once
// A small persistent pool for the CPU kernels. Decoding one token runs a few hundred parallel
// regions, a few microseconds each, so workers spin briefly before sleeping on a futex
// (std::atomic::wait): waking a sleeping thread costs more than most regions take.
#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <thread>
#include <type_traits>
#include <vector>

namespace twinfer::compute::cpu {

class ThreadPool {
public:
    explicit ThreadPool(int n_threads);   // n_threads >= 1; the caller is thread 0
    ThreadPool(const ThreadPool&) = delete;
    ThreadPool& operator=(const ThreadPool&) = delete;
    ~ThreadPool();

    int size() const { return static_cast<int>(workers_.size()) + 1; }

    // Calls task(thread) once on each thread, the caller being thread 0; returns when all have
    // returned. Not reentrant. Exceptions must not escape the task.
    template <class F>
    void run(F&& task) {
        run_erased(&task, [](void* f, int thread) { (*static_cast<std::remove_reference_t<F>*>(f))(thread); });
    }

    // Hands [0, n) out in chunks of `chunk` to whichever thread asks next (so a core busy with
    // something else costs only its own share) and calls fn(begin, end, thread) for each.
    template <class F>
    void parallel_for(size_t n, size_t chunk, F&& fn) {
        if (chunk == 0) chunk = 1;
        if (n <= chunk || size() == 1) {
            if (n > 0) fn(size_t{0}, n, 0);
            return;
        }
        std::atomic<size_t> next{0};
        run([&](int thread) {
            for (;;) {
                const size_t begin = next.fetch_add(chunk, std::memory_order_relaxed);
                if (begin >= n) break;
                fn(begin, std::min(n, begin + chunk), thread);
            }
        });
    }

private:
    void stop_workers();   // wakes every worker to exit and joins it
    using Trampoline = void (*)(void*, int);
    void run_erased(void* task, Trampoline trampoline);
    void worker_loop(int thread);

    std::vector<std::thread> workers_;
    void* task_ = nullptr;
    Trampoline trampoline_ = nullptr;
    std::atomic<uint32_t> generation_{0};
    std::atomic<int> pending_{0};
    std::atomic<bool> stop_{false};
};

}  // namespace twinfer::compute::cpu
