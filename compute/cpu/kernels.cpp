#include "compute/cpu/kernels.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "compute/memory.hpp"

namespace twinfer::compute::cpu {

const Kernels& kernels(CpuIsa isa) {
    switch (isa) {
    case CpuIsa::Generic: return generic_kernels();
    case CpuIsa::AVX2: return avx2_kernels();
    case CpuIsa::AVX512: return avx512_kernels();
    }
    throw std::invalid_argument("unknown CPU ISA " + std::to_string(static_cast<int>(isa)));
}

bool has_q8_kernel(GGMLType type) {
    switch (type) {
    case GGMLType::Q4_0: case GGMLType::Q4_1: case GGMLType::Q5_0: case GGMLType::Q5_1:
    case GGMLType::Q8_0: case GGMLType::Q4_K: case GGMLType::Q5_K: case GGMLType::Q6_K: case GGMLType::MXFP4:
        return true;
    default:
        return false;
    }
}

// llama.cpp's quantize_row_q8_0 (d = max|x| / 127, q = round(x / d)) plus each block's sum.
void quantize_q8(const float* x, size_t n, Q8Block* out) {
    for (size_t b = 0; b < n / 32; ++b) {
        const float* v = x + 32 * b;
        float amax = 0.0f;
        for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(v[i]));
        const float d = amax / 127.0f;
        const float inverse = d != 0.0f ? 1.0f / d : 0.0f;
        int sum = 0;
        for (int i = 0; i < 32; ++i) {
            const int q = static_cast<int>(std::nearbyint(v[i] * inverse));
            out[b].qs[i] = static_cast<int8_t>(q);
            sum += q;
        }
        out[b].d = d;
        out[b].sum = d * static_cast<float>(sum);
    }
}

void pack_q8x2_quads(const Q8x2Block* x, size_t n_blocks, Q8x2Quad* out) {
    for (size_t i = 0; i < n_blocks; ++i) {
        for (int r = 0; r < 4; ++r) {
            const Q8x2Block& y = x[r * n_blocks + i];
            const int pair = r / 2, half = r % 2;
            std::memcpy(out[i].hi[pair] + 32 * half, y.hi, 32);
            std::memcpy(out[i].lo[pair] + 32 * half, y.lo, 32);
            std::fill_n(out[i].d[pair] + 8 * half, 8, y.d);
            out[i].sum[r] = y.sum;
        }
    }
}

// Tiled over columns so that a tile of the block (64 columns x token_block) stays in L1 while
// each token's row segment is spread into it.
void pack_tokens(const float* x, size_t n_tokens, size_t n_cols, size_t token_block, float* out) {
    constexpr size_t tile = 64;
    for (size_t t0 = 0; t0 < n_tokens; t0 += token_block) {
        float* block = out + t0 * n_cols;
        const size_t n = std::min(token_block, n_tokens - t0);
        if (n < token_block) std::memset(block, 0, token_block * n_cols * sizeof(float));
        for (size_t k0 = 0; k0 < n_cols; k0 += tile) {
            const size_t k1 = std::min(n_cols, k0 + tile);
            for (size_t j = 0; j < n; ++j) {
                const float* row = x + (t0 + j) * n_cols;
                for (size_t k = k0; k < k1; ++k) block[k * token_block + j] = row[k];
            }
        }
    }
}

}  // namespace twinfer::compute::cpu

namespace twinfer::compute {

void widen_to_double(const float* x, size_t n, double* out) {
    static const cpu::Kernels& best = cpu::kernels(best_cpu_isa());
    best.widen(x, n, out);
}

}  // namespace twinfer::compute
