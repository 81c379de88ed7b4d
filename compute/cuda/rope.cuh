#pragma once
// Inside the CUDA backend: the rotary embedding's angles, shared by the RoPE kernels (rope.cu) and
// the decode step's Q/K/V products that rotate their own outputs (matvec_int8.cu).
#include <cstddef>

#include "compute/rope.hpp"

namespace twinfer::compute::cuda {

struct Rotation {
    int n_rot;
    double freq_base, position_scale;
    const float* freq_factors;
    bool adjacent;
};

inline Rotation rotation_of(const RopeParams& params) {
    return {int(params.n_rot), params.freq_base, params.position_scale, params.freq_factors,
            params.pairing == RopeParams::Pairing::Adjacent};
}

// Pair `pair`'s angle per position: position_scale * freq_base^(-2 pair / n_rot) / freq_factors[pair].
// In double, as on the CPU: at positions in the thousands a float angle would be off by about 1e-4
// radians. The power is the slow part (a few hundred cycles): the Q/K/V products work it out
// while their weights load.
__device__ __forceinline__ double pair_frequency(int pair, const Rotation& r) {
    double frequency = r.position_scale * pow(r.freq_base, -2.0 * pair / r.n_rot);
    if (r.freq_factors) frequency /= r.freq_factors[pair];
    return frequency;
}

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
