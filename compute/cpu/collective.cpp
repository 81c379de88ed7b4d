// The in-memory all-reduce of the CPU simulation of N ranks: every rank's thread publishes its
// buffer, then sums one slice of the elements over all ranks and writes the sum back to every
// rank's buffer. Two barriers per call: one before anyone reads, one before anyone returns (and
// may overwrite its buffer).
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "compute/collective.hpp"

namespace twinfer::compute::cpu {
namespace {

class MemoryCollective final : public Collective {
public:
    explicit MemoryCollective(int n_ranks) : n_ranks_(n_ranks), buffers_(n_ranks, nullptr) {}

    int n_ranks() const override { return n_ranks_; }
    void bind_thread(int) override {}

    void all_reduce_sum(int rank, Context&, float* data, size_t n) override {
        if (rank < 0 || rank >= n_ranks_) throw std::out_of_range("all-reduce: no rank " + std::to_string(rank));
        if (n_ranks_ == 1) return;
        buffers_[rank] = data;
        barrier();
        // The same order of additions for every element, whichever rank sums it.
        const size_t begin = n * rank / n_ranks_, end = n * (rank + 1) / n_ranks_;
        for (size_t i = begin; i < end; ++i) {
            float sum = buffers_[0][i];
            for (int r = 1; r < n_ranks_; ++r) sum += buffers_[r][i];
            for (int r = 0; r < n_ranks_; ++r) buffers_[r][i] = sum;
        }
        barrier();
    }

    void abort() noexcept override {
        std::lock_guard lock(mutex_);
        aborted_ = true;
        arrived_cv_.notify_all();
    }

private:
    void barrier() {
        std::unique_lock lock(mutex_);
        const uint64_t generation = generation_;
        if (!aborted_ && ++arrived_ == n_ranks_) {
            arrived_ = 0;
            ++generation_;
            arrived_cv_.notify_all();
        } else {
            arrived_cv_.wait(lock, [&] { return aborted_ || generation_ != generation; });
        }
        if (aborted_) throw CollectiveAborted("all-reduce: another rank failed");
    }

    const int n_ranks_;
    std::vector<float*> buffers_;   // each rank's buffer of the current call
    std::mutex mutex_;
    std::condition_variable arrived_cv_;
    int arrived_ = 0;
    uint64_t generation_ = 0;
    bool aborted_ = false;
};

}  // namespace

std::unique_ptr<Collective> make_collective(int n_ranks) {
    if (n_ranks < 1) throw std::invalid_argument("a collective needs at least one rank");
    return std::make_unique<MemoryCollective>(n_ranks);
}

}  // namespace twinfer::compute::cpu
