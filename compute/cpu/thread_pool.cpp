#include "compute/cpu/thread_pool.hpp"

#include <immintrin.h>

#include <stdexcept>
#include <string>
#include <system_error>

namespace twinfer::compute::cpu {
namespace {

// About 50 µs of spinning (a pause is ~140 cycles on recent Intel cores): longer than the gap
// between two regions of one forward pass, shorter than anything a person would notice.
constexpr int spin_iterations = 1000;

}  // namespace

ThreadPool::ThreadPool(int n_threads) {
    try {
        for (int t = 1; t < n_threads; ++t) workers_.emplace_back([this, t] { worker_loop(t); });
    } catch (const std::system_error& e) {
        // The system refused a thread (-t far beyond the cores): stop those started, then say so.
        stop_workers();
        throw std::runtime_error("cannot start " + std::to_string(n_threads) + " CPU threads (" + std::to_string(workers_.size() + 1) +
                                 " started): " + e.what());
    }
}

ThreadPool::~ThreadPool() { stop_workers(); }

void ThreadPool::stop_workers() {
    stop_.store(true, std::memory_order_relaxed);
    generation_.fetch_add(1, std::memory_order_release);
    generation_.notify_all();
    for (auto& w : workers_) w.join();
}

void ThreadPool::run_erased(void* task, Trampoline trampoline) {
    if (workers_.empty()) {
        trampoline(task, 0);
        return;
    }
    task_ = task;
    trampoline_ = trampoline;
    pending_.store(static_cast<int>(workers_.size()), std::memory_order_relaxed);
    generation_.fetch_add(1, std::memory_order_release);
    generation_.notify_all();
    trampoline(task, 0);
    for (int spins = 0; pending_.load(std::memory_order_acquire) != 0; ++spins) {
        if (spins < spin_iterations) _mm_pause();
        else std::this_thread::yield();   // a worker lost its core: let it have ours
    }
}

void ThreadPool::worker_loop(int thread) {
    uint32_t seen = 0;
    for (;;) {
        uint32_t now = generation_.load(std::memory_order_acquire);
        for (int spins = 0; now == seen && spins < spin_iterations; ++spins) {
            _mm_pause();
            now = generation_.load(std::memory_order_acquire);
        }
        while (now == seen) {
            generation_.wait(seen, std::memory_order_acquire);
            now = generation_.load(std::memory_order_acquire);
        }
        seen = now;
        if (stop_.load(std::memory_order_relaxed)) return;
        trampoline_(task_, thread);
        pending_.fetch_sub(1, std::memory_order_acq_rel);
    }
}

}  // namespace twinfer::compute::cpu
