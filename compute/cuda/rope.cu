// Rotary position embedding: one thread per (token, head, pair), so that every load is in flight at
// once (a thread looping over the heads waited out a memory round trip per head: 16 us for one
// token). The angle is computed in double, as on the CPU: at positions in the thousands a float
// angle would be off by about 1e-4 radians; double sine and cosine are slow, so only the
// reduction to one turn is.
#include <stdexcept>
#include <string>

#include "compute/cuda/device_context.cuh"
#include "compute/cuda/ops.hpp"
#include "compute/rope.hpp"

namespace twinfer::compute::cuda {
namespace {

// device_position (device memory), when not null, replaces first_position.
__global__ void rope_kernel(float* x, int n_tokens, size_t row_stride, int n_heads, int head_dim, size_t first_position,
                            const int32_t* device_position, int n_rot, double freq_base, double position_scale,
                            const float* freq_factors, bool adjacent) {
    const int n_pairs = n_rot / 2;
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n_tokens * n_heads * n_pairs) return;
    if (device_position) first_position = size_t(*device_position);
    const int t = i / (n_heads * n_pairs), h = i / n_pairs % n_heads, pair = i % n_pairs;
    double theta = double(first_position + t) * position_scale * pow(freq_base, -2.0 * pair / n_rot);
    if (freq_factors) theta /= freq_factors[pair];
    // Reduced to [0, 2 pi) in double, the float sine and cosine are exact to float rounding.
    constexpr double two_pi = 6.283185307179586476925;
    theta -= two_pi * floor(theta / two_pi);
    float sf, cf;
    sincosf(float(theta), &sf, &cf);
    const int a = adjacent ? 2 * pair : pair;
    const int b = adjacent ? 2 * pair + 1 : pair + n_pairs;
    float* head = x + t * row_stride + size_t(h) * head_dim;
    const float x0 = head[a], x1 = head[b];
    head[a] = x0 * cf - x1 * sf;
    head[b] = x0 * sf + x1 * cf;
}

void launch_rope(Context& ctx, float* x, size_t n_tokens, size_t row_stride, size_t n_heads, size_t head_dim,
                 size_t first_position, const int32_t* device_position, const RopeParams& params) {
    if (params.n_rot % 2 != 0 || params.n_rot > head_dim)
        throw std::invalid_argument("rope: n_rot " + std::to_string(params.n_rot) + " must be even and at most head_dim " +
                                    std::to_string(head_dim));
    const size_t n = n_tokens * n_heads * (params.n_rot / 2);
    if (n == 0) return;
    rope_kernel<<<blocks_for(n, 128), 128, 0, stream(ctx)>>>(
        x, int(n_tokens), row_stride, int(n_heads), int(head_dim), first_position, device_position, int(params.n_rot),
        params.freq_base, params.position_scale, params.freq_factors, params.pairing == RopeParams::Pairing::Adjacent);
    TWINFER_CUDA_CHECK_LAUNCH();
}

}  // namespace

void rope(Context& ctx, float* x, size_t n_tokens, size_t row_stride, size_t n_heads, size_t head_dim,
          size_t first_position, const RopeParams& params) {
    launch_rope(ctx, x, n_tokens, row_stride, n_heads, head_dim, first_position, nullptr, params);
}

void rope_at(Context& ctx, float* x, size_t n_heads, size_t head_dim, const int32_t* position, const RopeParams& params) {
    launch_rope(ctx, x, 1, n_heads * head_dim, n_heads, head_dim, 0, position, params);
}

}  // namespace twinfer::compute::cuda
