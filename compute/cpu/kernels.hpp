#pragma once
// The CPU kernels of one instruction set, as a table of function pointers the ops pick from once
// per call: portable C++ (kernels_generic.cpp), AVX2+FMA+F16C (kernels_avx2.cpp) and AVX-512 with
// VNNI (kernels_avx512.cpp). The last two compile the same sources (simd_float.inl,
// simd_int8.inl) under different `#pragma GCC target`s, so the build needs no -march flag and
// the binary runs on any x86-64, choosing at run time (compute::best_cpu_isa()).
#include <cstddef>
#include <cstdint>

#include "compute/cache_rows.hpp"
#include "compute/context.hpp"
#include "format/ggml_type.hpp"

namespace twinfer::compute::cpu {

// 32 activations quantized for integer dot products: x[i] ≈ d * qs[i], sum = d * Σ qs[i]
// (the term a weight block's offset or minimum multiplies).
struct Q8Block {
    float d;
    float sum;
    int8_t qs[32];
};
void quantize_q8(const float* x, size_t n, Q8Block* out);   // n a multiple of 32

// 32 activations as two int8 digits: x[i] ≈ d (256 hi[i] + lo[i]) with d = max|x| / (127 * 256), so
// a value keeps ~15 bits where Q8Block keeps 8 (error at most d, half a step but where lo would be
// -128, which the signed kernels cannot negate: it becomes -127); sum = Σ x[i] as quantized. A dot
// product with integer weights stays exact in int32 (256 (w.hi) + (w.lo)), for a second integer
// dot per block.
struct Q8x2Block {
    float d;
    float sum;
    int8_t hi[32];
    int8_t lo[32];
};

// Four activation rows' Q8x2Blocks of one column block, arranged for 512-bit products: rows 2p and
// 2p + 1 side by side in each vector (hi digits, lo digits, and each row's d repeated over its 8
// lanes), the four sums together. The AVX-512 kernels dot a weight block with two rows an
// instruction: every lane computes what that row's 256-bit product computes, so the bits are the same.
struct Q8x2Quad {
    int8_t hi[2][64];
    int8_t lo[2][64];
    float d[2][16];
    float sum[4];
};
// The quads of rows x[0..3] (x + r * n_blocks), one a block.
void pack_q8x2_quads(const Q8x2Block* x, size_t n_blocks, Q8x2Quad* out);

// Weight types with an int8-activation kernel (the others use float activations).
bool has_q8_kernel(GGMLType type);

// The most activation rows one matvec call takes (its float path keeps a sum per row on the
// stack); compute::matmul_rows hands larger batches over in slices of this many.
constexpr size_t matvec_max_rows = 32;

// The int8 tiled product (Kernels::gemm_q8) reads tokens in groups of q8_gemm_group, each
// 32-value column block of a group packed as the kernel's vectors want it, [step][16 tokens][4
// bytes], then the 16 tokens' d and their sums (Q8Block::sum): one digit (Q8Block's quantization)
// as 8 steps of 4 unsigned bytes, q + 128; two (Q8x2Block's) as 16 steps of 2 int16 codes,
// 256 hi + lo. A padded token is code 0 with d = sum = 0.
constexpr size_t q8_gemm_group = 16;
constexpr size_t q8_gemm_block_bytes(int digits) { return static_cast<size_t>(digits) * 8 * 64 + 2 * 16 * sizeof(float); }

// The most rows a Kernels::attend_block call takes (AVX-512's two vectors of 16).
constexpr size_t max_attention_block_rows = 32;

// One block of query rows for Kernels::attend_block: row r < n_rows (n_rows <= the table's
// attention_block_rows) has its query at q[r] and its output at out[r] (head_dim floats each), and
// attends to the key rows [first[r], end[r]) (first < end) of k, row i at k + i * kv_stride
// elements of `type` (likewise v):
//   out[r] = sum_{first[r] <= i < end[r]} softmax_i(scale q[r] . k_i) v_i
// (with sinks, exp(sinks[r]) joins the softmax's denominator: AttentionShape::sinks). Key row i
// is at position `position` + i: the kernel's tiles of keys break at fixed positions, so that a
// row's values do not depend on the block, nor on the call, it comes in.
struct AttentionBlock {
    size_t n_rows;
    const float* const* q;
    float* const* out;
    const size_t* first;
    const size_t* end;
    const void* k;
    const void* v;
    KvType type;
    size_t kv_stride;
    size_t head_dim;
    float scale;
    size_t position;
    const float* sinks = nullptr;   // [n_rows]: each row's sink logit (its head's), or null
};

struct Kernels {
    CpuIsa isa;
    // y[b * y_stride + r] = W[r, :] . x[b, :] for the n_rows rows at w, row_bytes apart, n_cols
    // values each, and n_x <= matvec_max_rows activation rows x: [n_x, n_cols]. Each weight row is
    // read once for all n_x; a row b's result is the same bits as with x[b] alone (n_x = 1).
    void (*matvec)(GGMLType type, const std::byte* w, size_t row_bytes, size_t n_rows, size_t n_cols,
                   const float* x, size_t n_x, float* y, size_t y_stride);
    // The same with x quantized by quantize_q8 (or quantize_q8x2), row b at x + b * n_cols / 32;
    // null in the generic table; type has_q8_kernel().
    void (*matvec_q8)(GGMLType type, const std::byte* w, size_t row_bytes, size_t n_rows, size_t n_cols,
                      const Q8Block* x, size_t n_x, float* y, size_t y_stride);
    void (*matvec_q8x2)(GGMLType type, const std::byte* w, size_t row_bytes, size_t n_rows, size_t n_cols,
                        const Q8x2Block* x, size_t n_x, float* y, size_t y_stride);
    // matvec_q8x2 with each whole group of four rows x[4j..4j+3] also given as quads (at quads +
    // j * n_cols / 32, from pack_q8x2_quads); null where the kernels have no use for them (AVX2,
    // generic).
    void (*matvec_q8x2_quads)(GGMLType type, const std::byte* w, size_t row_bytes, size_t n_rows, size_t n_cols,
                              const Q8x2Block* x, const Q8x2Quad* quads, size_t n_x, float* y, size_t y_stride);
    // n values (a multiple of 32) as Q8x2Blocks; null in the generic table. Vectorized: it runs on
    // one thread before every int8x2 product.
    void (*quantize_q8x2)(const float* x, size_t n, Q8x2Block* out);
    // n values (whole blocks) of `type` to float: format/quant.hpp's dequantize(), vectorized.
    void (*dequantize)(GGMLType type, const std::byte* src, size_t n, float* dst);
    // Float product of a tile: y[t * y_stride + r] = sum_k w[r * w_stride + k] x[t, k] for r <
    // n_rows, t < n_tokens, with x packed by pack_tokens(gemm_token_block).
    size_t gemm_token_block;
    void (*gemm)(const float* w, size_t w_stride, size_t n_rows, size_t n_cols, const float* x_packed,
                 size_t n_tokens, float* y, size_t y_stride);
    // Int8 products over many tokens (AVX-512 VNNI; null elsewhere), for has_q8_kernel types and
    // n_cols % 32 == 0. pack_q8_tokens: n_tokens <= q8_gemm_group rows of x ([n_tokens, n_cols])
    // quantized (digits 1: quantize_q8; 2: quantize_q8x2, each token's codes what the matrix-vector
    // products get) into one group of n_cols / 32 * q8_gemm_block_bytes(digits) bytes. gemm_q8:
    // y[t * y_stride + r] (= or +=) W[r, :] . x[t, :] for the n_rows rows at w and the n_tokens
    // tokens of the groups at x_packed, the rows decoded once into scratch, of
    // gemm_q8_scratch_bytes(n_rows, n_cols, digits).
    void (*pack_q8_tokens)(const float* x, size_t n_tokens, size_t n_cols, int digits, std::byte* out);
    size_t (*gemm_q8_scratch_bytes)(size_t n_rows, size_t n_cols, int digits);
    void (*gemm_q8)(GGMLType type, const std::byte* w, size_t row_bytes, size_t n_rows, size_t n_cols,
                    const std::byte* x_packed, size_t n_tokens, int digits, std::byte* scratch, float* y, size_t y_stride,
                    bool accumulate);
    // n_heads query heads of one KV head (q and out: head j at + j * head_dim) over n_kv cached
    // positions: out_j = sum_p softmax_p(scale q_j . k_p) v_p, with k_p = k + p * kv_stride
    // elements of `type` (likewise v; Q8_0: whole blocks, read in place as their dequantized
    // values); scores is scratch for n_heads * n_kv floats. The heads share the reads of the keys
    // and values; a head's values are the same bits whichever heads share its call.
    // sinks: a logit per head that joins the softmax's denominator only (attention sinks); null for none.
    void (*attend)(const float* q, size_t n_heads, const void* k, const void* v, KvType type, size_t kv_stride,
                   size_t n_kv, size_t head_dim, float scale, const float* sinks, float* scores, float* out);
    // Prompt attention, flash-attention style: one block of query rows that read the same KV head
    // (several tokens, and the heads of a group) against tiles of the keys, the softmax taken
    // online, so each cached row is read (a float16 or Q8_0 one widened) once a block instead of once a
    // row. Rows are the vectors' lanes (at most attention_block_rows, two vectors); a row's values
    // are the same bits in any block (see AttentionBlock), but not attend's.
    size_t attention_block_rows;
    size_t (*attend_block_scratch_bytes)(size_t head_dim);
    void (*attend_block)(const AttentionBlock& block, std::byte* scratch);
    void (*swiglu)(const float* gate, const float* up, size_t n, float* out);
    void (*gelu)(float* x, size_t n);
    // out[i] = x[i] as double (compute::widen_to_double).
    void (*widen)(const float* x, size_t n, double* out);
};

// A matrix-vector product streams its rows from memory. The hardware prefetchers alone leave the
// core waiting at every page start (measured: 28% more tokens per CPU-second on Q8_0 decoding
// with this); so, before a row is read, the row's bytes `prefetch_distance` further on (within
// the rows this call reads) are requested. Measured on SmolLM2 decoding, two threads: 0.5 KB
// -25%, 1 KB -10%, 2 to 8 KB a plateau (3 KB at its top), 16 KB -8%.
constexpr size_t prefetch_distance = 3072;
inline void prefetch_ahead(const std::byte* row, size_t row_bytes, const std::byte* end) {
    for (const std::byte* p = row + prefetch_distance; p < row + row_bytes + prefetch_distance && p < end; p += 64)
        __builtin_prefetch(p, 0, 3);
}

const Kernels& kernels(CpuIsa isa);
const Kernels& generic_kernels();
const Kernels& avx2_kernels();
const Kernels& avx512_kernels();

// x: [n_tokens, n_cols] -> blocks of `token_block` tokens, each [n_cols][token_block], the last
// one zero-padded: out holds ceil(n_tokens / token_block) * token_block * n_cols floats.
void pack_tokens(const float* x, size_t n_tokens, size_t n_cols, size_t token_block, float* out);

}  // namespace twinfer::compute::cpu
