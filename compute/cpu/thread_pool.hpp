#pragma once
// A small persistent pool for the CPU kernels. Decoding one token runs a few hundred parallel
// regions, a few microseconds each, so workers spin briefly before sleeping on a futex
// (std::atomic::wait): waking a sleeping thread costs more than most regions take.
//
// On a CPU shared with other busy processes a worker can lose its core for a scheduler time slice
// (milliseconds). A region that waited for every worker would then wait that long each time, a
// few hundred times a token; so parallel_for's regions are joined, not awaited: a worker takes
// part only if it arrives while the region is open, and the caller, once it has run out of
// chunks itself, closes the region and waits only for the workers that joined.
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
        run_erased(&task, [](void* f, int thread) { (*static_cast<std::remove_reference_t<F>*>(f))(thread); }, false);
    }

    // Hands [0, n) out in chunks of `chunk` to whichever thread asks next (so a core busy with
    // something else costs only its own share) and calls fn(begin, end, thread) for each; a
    // worker that does not arrive before the caller has taken the last chunk takes no part.
    template <class F>
    void parallel_for(size_t n, size_t chunk, F&& fn) {
        if (chunk == 0) chunk = 1;
        if (n <= chunk || size() == 1) {
            if (n > 0) fn(size_t{0}, n, 0);
            return;
        }
        std::atomic<size_t> next{0};
        auto chunks = [&](int thread) {
            for (;;) {
                const size_t begin = next.fetch_add(chunk, std::memory_order_relaxed);
                if (begin >= n) break;
                fn(begin, std::min(n, begin + chunk), thread);
            }
        };
        run_erased(&chunks, [](void* f, int thread) { (*static_cast<decltype(chunks)*>(f))(thread); }, true);
    }

private:
    void stop_workers();   // wakes every worker to exit and joins it
    using Trampoline = void (*)(void*, int);
    // joinable: parallel_for's region (workers join while it is open); otherwise every thread runs it.
    void run_erased(void* task, Trampoline trampoline, bool joinable);
    void worker_loop(int thread);
    // For a joinable region, whether `thread` got in before the caller closed region `generation`.
    bool join(uint32_t generation);

    std::vector<std::thread> workers_;
    // The current region, written by the caller under a sequence lock (params_seq_ odd while it
    // writes) before it bumps generation_: a late worker may read them while the next region's
    // are written, and must see one region's whole set, its generation included.
    std::atomic<uint32_t> params_seq_{0};
    std::atomic<uint32_t> params_generation_{0};
    std::atomic<void*> task_{nullptr};
    std::atomic<Trampoline> trampoline_{nullptr};
    std::atomic<bool> joinable_{false};
    std::atomic<uint32_t> generation_{0};
    std::atomic<int> pending_{0};       // every-thread regions: workers still running it
    // Joinable regions: the region's generation (high 32 bits), a closed flag, the count of workers
    // that joined; and how many of those have finished.
    static constexpr uint64_t region_closed = uint64_t{1} << 31;
    std::atomic<uint64_t> region_{0};
    std::atomic<int> finished_{0};
    std::atomic<bool> stop_{false};
};

}  // namespace twinfer::compute::cpu
