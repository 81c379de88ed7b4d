// The all-reduce of tensor parallelism over NCCL, one GPU per rank, all in one process.
//
// One process, one thread per GPU (models/tp_model.cpp runs the threads). Why not one
// process per GPU (MPI-style): a process holds one model and one HTTP server; splitting it would
// need a launcher and a second channel for tokens, for nothing NCCL needs. Why not one thread
// issuing to every GPU: a decode step of a 7B model enqueues ~500 kernels per GPU, a few
// microseconds each to launch, against ~1 ms of GPU work at TP=2; from one thread the launches
// of all GPUs add up, from one thread each they overlap. With per-thread ranks, each thread calls
// ncclAllReduce on its own communicator (made together by ncclCommInitAll), which NCCL supports
// without ncclGroupStart/End (those are for one thread driving several communicators).
#include <cuda_runtime.h>
#include <nccl.h>

#include <atomic>
#include <cstdlib>
#include <numeric>
#include <string>
#include <vector>

#include "compute/collective.hpp"
#include "compute/cuda/runtime.hpp"

namespace twinfer::compute::cuda {
namespace {

void check(ncclResult_t result, const char* call, const char* file, int line) {
    if (result == ncclSuccess) return;
    throw Error(std::string(call) + ": " + ncclGetErrorString(result) + " (" + ncclGetLastError(nullptr) + ") at " + file +
                ":" + std::to_string(line));
}
void check(cudaError_t error, const char* call, const char* file, int line) {
    if (error == cudaSuccess) return;
    throw Error(std::string(call) + ": " + cudaGetErrorString(error) + " at " + file + ":" + std::to_string(line));
}
#define TWINFER_NCCL_CHECK(call) check((call), #call, __FILE__, __LINE__)

class NcclCollective final : public Collective {
public:
    explicit NcclCollective(int n_ranks) : comms_(n_ranks, nullptr) {
        const int n_gpus = device_count();
        if (n_gpus < n_ranks)
            throw Error("tensor parallel size " + std::to_string(n_ranks) + " needs as many GPUs; " +
                        std::to_string(n_gpus) + " visible");
        // NVLink SHARP multicast (NVLS) stays off: the GPUs we run on are shared and their
        // multicast setup is not ours to claim, and ring and tree all-reduces are what a handful
        // of GPUs needs. Set (overriding the environment) before NCCL reads it, at init.
        setenv("NCCL_NVLS_ENABLE", "0", 1);
        std::vector<int> devices(n_ranks);
        std::iota(devices.begin(), devices.end(), 0);
        TWINFER_NCCL_CHECK(ncclCommInitAll(comms_.data(), n_ranks, devices.data()));
    }

    ~NcclCollective() override {
        if (aborted_) return;   // abort() has released the communicators
        for (ncclComm_t comm : comms_)
            if (comm) ncclCommDestroy(comm);
    }

    int n_ranks() const override { return static_cast<int>(comms_.size()); }

    void bind_thread(int rank) override { TWINFER_NCCL_CHECK(cudaSetDevice(rank)); }

    void all_reduce_sum(int rank, Context& ctx, float* data, size_t n) override {
        if (aborted_) throw CollectiveAborted("all-reduce: another rank failed");
        TWINFER_NCCL_CHECK(ncclAllReduce(data, data, n, ncclFloat, ncclSum, comms_.at(rank), static_cast<cudaStream_t>(ctx.stream)));
    }

    // Aborting a communicator also ends the operations queued on it, so a rank whose peer died
    // before its all-reduce wakes instead of waiting on the GPU forever.
    void abort() noexcept override {
        if (aborted_.exchange(true)) return;
        for (ncclComm_t comm : comms_)
            if (comm) ncclCommAbort(comm);
    }

private:
    std::vector<ncclComm_t> comms_;
    std::atomic<bool> aborted_ = false;
};

}  // namespace

std::unique_ptr<Collective> make_nccl_collective(int n_ranks) {
    if (n_ranks < 1) throw std::invalid_argument("a collective needs at least one rank");
    return std::make_unique<NcclCollective>(n_ranks);
}

}  // namespace twinfer::compute::cuda
