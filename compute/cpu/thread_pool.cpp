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

namespace {

// Spins, then yields, until done(): a worker that lost its core gets ours.
template <class Done>
void wait_until(Done&& done) {
    for (int spins = 0; !done(); ++spins) {
        if (spins < spin_iterations) _mm_pause();
        else std::this_thread::yield();
    }
}

}  // namespace

void ThreadPool::run_erased(void* task, Trampoline trampoline, bool joinable) {
    if (workers_.empty()) {
        trampoline(task, 0);
        return;
    }
    const uint32_t generation = generation_.load(std::memory_order_relaxed) + 1;   // only this thread writes it
    const uint32_t seq = params_seq_.load(std::memory_order_relaxed);
    params_seq_.store(seq + 1, std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_release);
    params_generation_.store(generation, std::memory_order_relaxed);
    task_.store(task, std::memory_order_relaxed);
    trampoline_.store(trampoline, std::memory_order_relaxed);
    joinable_.store(joinable, std::memory_order_relaxed);
    params_seq_.store(seq + 2, std::memory_order_release);
    if (joinable) {
        finished_.store(0, std::memory_order_relaxed);
        region_.store(uint64_t(generation) << 32, std::memory_order_relaxed);
    } else {
        pending_.store(static_cast<int>(workers_.size()), std::memory_order_relaxed);
    }
    generation_.store(generation, std::memory_order_release);
    generation_.notify_all();
    trampoline(task, 0);
    if (joinable) {
        const int joined = static_cast<int>(region_.fetch_or(region_closed, std::memory_order_acq_rel) & (region_closed - 1));
        wait_until([&] { return finished_.load(std::memory_order_acquire) == joined; });
    } else {
        wait_until([&] { return pending_.load(std::memory_order_acquire) == 0; });
    }
}

bool ThreadPool::join(uint32_t generation) {
    uint64_t region = region_.load(std::memory_order_acquire);
    while ((region >> 32) == generation && !(region & region_closed))
        if (region_.compare_exchange_weak(region, region + 1, std::memory_order_acq_rel)) return true;
    return false;
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
        if (stop_.load(std::memory_order_relaxed)) return;
        // The region's parameters, whole (sequence lock) and of region `now`; else read again (the
        // caller is writing, or a newer region began meanwhile: serve that one). An every-thread
        // region cannot be passed over: its caller waits for this worker.
        const uint32_t seq = params_seq_.load(std::memory_order_acquire);
        const uint32_t generation = params_generation_.load(std::memory_order_relaxed);
        void* const task = task_.load(std::memory_order_relaxed);
        const Trampoline trampoline = trampoline_.load(std::memory_order_relaxed);
        const bool joinable = joinable_.load(std::memory_order_relaxed);
        std::atomic_thread_fence(std::memory_order_acquire);
        if (seq % 2 != 0 || params_seq_.load(std::memory_order_relaxed) != seq || generation != now) continue;
        seen = now;
        if (!joinable) {
            trampoline(task, thread);
            pending_.fetch_sub(1, std::memory_order_acq_rel);
        } else if (join(now)) {   // the caller cannot change the region while a joined worker runs it
            trampoline(task, thread);
            finished_.fetch_add(1, std::memory_order_acq_rel);
        }
    }
}

}  // namespace twinfer::compute::cpu
