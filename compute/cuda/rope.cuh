#pragma once
// Inside the CUDA backend: the rotary embedding's angles, shared by the RoPE kernels (rope.cu) and
// the decode step's Q/K/V products that rotate their own outputs (matvec_int8.cu).
#include <cstddef>

#include "compute/context.hpp"
#include "compute/rope.hpp"

namespace twinfer::compute::cuda {

struct Rotation {
    int n_rot;
    const double* frequencies;   // device memory, [n_rot / 2]: pair_frequency's
    bool adjacent;
    float magnitude;             // RopeParams::magnitude: cos and sin multiplied by it
};

// The rotation of `params` with its pairs' frequencies in device memory, worked out on the host as
// the CPU's (compute::pair_frequencies) and kept by the context for the next call with the same
// parameters. A kernel that rotates then
// loads a frequency where it computed a double-precision power (a few hundred cycles, in front of
// the loads of every block of a product's later waves). Throws while a graph is being captured if
// the parameters are new (the step captured runs once directly first).
Rotation rotation_of(Context& ctx, const RopeParams& params);

// Pair `pair`'s angle per position. In double, as on the CPU: at positions in the thousands a
// float angle would be off by about 1e-4 radians.
__device__ __forceinline__ double pair_frequency(int pair, const Rotation& r) { return __ldg(r.frequencies + pair); }

// (cos, sin) of position * frequency, reduced to [0, 2 pi) in double, so that the float sine and
// cosine are exact to float rounding.
__device__ __forceinline__ float2 rotation_at(size_t position, double frequency) {
    constexpr double two_pi = 6.283185307179586476925;
    double theta = double(position) * frequency;
    theta -= two_pi * floor(theta / two_pi);
    float sf, cf;
    sincosf(float(theta), &sf, &cf);
    return make_float2(cf, sf);
}

}  // namespace twinfer::compute::cuda
