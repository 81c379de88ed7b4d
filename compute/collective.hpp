#pragma once
// Collectives among the ranks of a tensor-parallel model (models/tp_model.hpp): one process
// drives N ranks, one thread per rank, each with its own Context. The all-reduce is the one
// collective Megatron-style inference needs (after attention and after the MLP).
//
// Two implementations, chosen by device like every op: the CPU one sums in memory (the CPU
// simulation of N ranks, which tests the split against the single-device model); the CUDA one is
// NCCL, built when CMake finds it (TWINFER_WITH_NCCL).
#include <cstddef>
#include <memory>
#include <stdexcept>

#include "compute/context.hpp"

namespace twinfer::compute {

// A rank gave up mid-pass (its error is reported by whoever ran it); the others stop waiting.
struct CollectiveAborted : std::runtime_error {
    using std::runtime_error::runtime_error;
};

class Collective {
public:
    virtual ~Collective() = default;

    virtual int n_ranks() const = 0;

    // Called on each rank's own thread before it allocates or runs anything: on CUDA it makes
    // rank r's GPU current for that thread, so its Context, Buffers and kernels land there.
    virtual void bind_thread(int rank) = 0;

    // data: n floats on rank's device, replaced by their sum over all ranks. Every rank calls it
    // from its own thread, with the same n, in the same order. CPU: returns when the sum is in
    // place, the ranks added in rank order (so every rank holds bit-identical values). CUDA:
    // queued on ctx's stream. Throws CollectiveAborted once abort() has been called.
    virtual void all_reduce_sum(int rank, Context& ctx, float* data, size_t n) = 0;

    // A rank that failed calls this so that the others do not wait for it forever. The
    // collective is unusable afterwards.
    virtual void abort() noexcept = 0;
};

namespace cpu {
std::unique_ptr<Collective> make_collective(int n_ranks);
}
#ifdef TWINFER_WITH_NCCL
namespace cuda {
// GPUs 0 .. n_ranks-1, one NCCL communicator each. Throws cuda::Error if fewer GPUs are visible
// or NCCL fails to start.
std::unique_ptr<Collective> make_nccl_collective(int n_ranks);
}
#endif

// n_ranks >= 1. One rank has nothing to reduce: the in-memory collective serves it on any device
// (no NCCL for a one-GPU run). Throws BackendUnavailable for a device whose collective this build
// lacks.
inline std::unique_ptr<Collective> make_collective(Device device, int n_ranks) {
    if (n_ranks < 1) throw std::invalid_argument("a collective needs at least one rank");
    if (device == Device::CPU || n_ranks == 1) return cpu::make_collective(n_ranks);
#ifdef TWINFER_WITH_NCCL
    if (device == Device::CUDA) return cuda::make_nccl_collective(n_ranks);
#endif
    throw_backend_unavailable("all-reduce (NCCL)", device);
}

}  // namespace twinfer::compute
