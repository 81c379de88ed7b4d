#pragma once
// The CUDA versions of compute/'s ops: same arguments as the cpu:: ones, every pointer in device
// memory, work queued on the context's stream (nothing waits for it).
#include <cstddef>
#include <cstdint>
#include <span>

#include "compute/cache_rows.hpp"

// Declared, not included: compute/*.hpp include this file to dispatch to it.
namespace twinfer {
enum class GGMLType : uint32_t;
}
namespace twinfer::compute {
class Context;
struct WeightMatrix;
struct ExpertMatrices;
struct ExpertGroups;
struct MatmulOutput;
struct RmsNorm;
enum class Glu;
struct RopeParams;
struct AttentionShape;
struct DecodeRows;
struct HeadNorms;
enum class AttentionRows;
enum class Activations;
enum class ExpertActivation;
}  // namespace twinfer::compute

namespace twinfer::compute::cuda {

// Matrix products. One token (up to 7, one at a time): Activations::Int8 with Q4_0, Q4_1, Q5_0,
// Q5_1, Q8_0, Q4_K, Q5_K, Q6_K or MXFP4 weights quantizes x to int8 and runs integer dot products (matvec_int8.cu);
// otherwise a fused dequantize-dot kernel in float32. Several tokens: the weights dequantized to
// float16 and a cuBLAS float16 product with float32 accumulation (float32 for F32 weights); see
// matmul.cu for its error. x must be 16-byte aligned (cudaMalloc memory at a multiple of 4 floats).
bool matmul_supports(GGMLType type);
// The fewest tokens matmul takes as one tiled (cuBLAS) product; fewer are matrix-vector products.
size_t min_tiled_tokens();
// w (host memory) copied to `device` (w.rows * w.row_bytes() bytes), planar for the int8 kernels'
// types; returns the matrix there.
WeightMatrix place_weights(Context& ctx, const WeightMatrix& w, void* device);
void matmul(Context& ctx, const WeightMatrix& w, const float* x, size_t n_tokens, float* y, Activations activations);
// Several products of one x (Q, K, V; gate, up): x quantized once for all of them.
// With norm, x is normalized first (into norm->out); a token's int8 path folds it into the quantization.
void matmul(Context& ctx, std::span<const MatmulOutput> outputs, const float* x, size_t n_tokens, Activations activations,
            const RmsNorm* norm = nullptr, const RmsNorm* next_norm = nullptr);
// compute::matmul_row_tiles: the tiled products in cuBLAS calls of row_tile_rows() rows each.
size_t row_tile_rows();
void matmul_row_tiles(Context& ctx, std::span<const MatmulOutput> outputs, const float* x, size_t n_rows,
                      Activations activations, const RmsNorm* norm);
// compute::matmul_rows: with int8 activations one launch for all rows (and one to quantize them),
// each row's sums those of matmul of that row alone; otherwise each row's matmul in turn.
void matmul_rows(Context& ctx, std::span<const MatmulOutput> outputs, const float* x, size_t n_rows, Activations activations,
                 const RmsNorm* norm);
// compute::matmul_glu; one token with int8 activations is one fused launch.
void matmul_glu(Context& ctx, const WeightMatrix& gate, const WeightMatrix& up, const float* x, size_t n_tokens,
                float* out, float* up_scratch, Activations activations, const RmsNorm* norm, Glu glu);
// compute::matmul_experts (compute/experts.hpp): int8 activations as matmul takes them (an
// x_stride of 0 or w.all.cols), float otherwise; the experts' biases, where w has them, by a
// launch of their own.
void matmul_experts(Context& ctx, const ExpertMatrices& w, const int32_t* ids, size_t k, const float* x, size_t x_stride,
                    float* y, Activations activations);
// compute::matmul_experts_swiglu: gate and up in one launch where both take the int8 kernels and
// the experts have neither biases nor gpt-oss's activation; otherwise matmul_experts twice and
// one launch of the biases and activation.
void matmul_experts_swiglu(Context& ctx, const ExpertMatrices& gate, const ExpertMatrices& up, const int32_t* ids,
                           size_t k, const float* x, float* out, float* up_scratch, Activations activations,
                           ExpertActivation activation);
// compute::matmul_expert_groups: every expert's tiles in one launch of float16 tensor-core
// products, the experts decoded from their blocks in the kernel; F32 and ragged float experts
// through matmul one expert at a time; then the experts' biases, where w has them.
void matmul_expert_groups(Context& ctx, const ExpertMatrices& w, const ExpertGroups& groups, const float* x, float* y,
                          Activations activations);
// compute::group_by_expert: one block.
void group_by_expert(Context& ctx, const int32_t* ids, size_t n_tokens, size_t k, size_t n_experts, size_t group_rows,
                     int32_t* offsets, int32_t* row_token, int32_t* pair_row);
// ids in device memory, each < table.rows (the caller checks: a kernel cannot throw).
void get_rows(Context& ctx, const WeightMatrix& table, const int32_t* ids, size_t n_ids, float* out);
// Dequantize a whole matrix to float ([rows, cols]); for tests and the float16 product's tiles.
void dequantize(Context& ctx, const WeightMatrix& w, float* out);

void rms_norm(Context& ctx, const float* x, const float* weight, size_t n_rows, size_t n, float eps, float* out);
void add_rms_norm(Context& ctx, float* x, const float* y, const float* weight, size_t n_rows, size_t n, float eps,
                  const RmsNorm* next_norm = nullptr);
void layer_norm(Context& ctx, const float* x, const float* weight, const float* bias, size_t n_rows, size_t n,
                float eps, float* out);

void rope(Context& ctx, float* x, size_t n_tokens, size_t row_stride, size_t n_heads, size_t head_dim,
          size_t first_position, const RopeParams& params);
// One token at the position in device memory (a decode step captured once, replayed anywhere).
void rope_at(Context& ctx, float* x, size_t n_heads, size_t head_dim, const int32_t* position, const RopeParams& params);

void attention(Context& ctx, const float* q, CacheRows keys, CacheRows values, size_t n_tokens, size_t first_position,
               const AttentionShape& shape, float* out, AttentionRows rows);
// One token at the position in device memory: the launch is sized for max_positions, and each
// block works out its share of 0 ..= *position as attention() would have split it (same result,
// bit for bit); the blocks beyond that split return at once.
void attention_at(Context& ctx, const float* q, CacheRows keys, CacheRows values, const int32_t* position,
                  size_t max_positions, const AttentionShape& shape, float* out);
// A decode step's rotary embedding and KV-cache write in one launch: rope_at(q), rope_at(k), then
// k and v stored as row *position of keys and values ([positions, n_head_kv * head_dim]).
void rope_store_at(Context& ctx, float* q, size_t n_head, float* k, const float* v, size_t n_head_kv, size_t head_dim,
                   const int32_t* position, const RopeParams& params, CacheRows keys, CacheRows values);
// A decode step's Q, K and V products (one token of x, norm as in matmul) and then rope_store_at,
// in the products' one launch (int8 activations, shapes as int8_matvec_rope_store takes them);
// false, with nothing done, where that launch cannot: the caller runs the two steps.
bool project_rope_store_at(Context& ctx, std::span<const MatmulOutput, 3> qkv, const float* x, Activations activations,
                           const RmsNorm* norm, size_t head_dim, const int32_t* position, const RopeParams& rope,
                           CacheRows keys, CacheRows values);
void store_rows(Context& ctx, const float* x, size_t n_rows, size_t width, CacheRows table, size_t first_row);
// table[*row, :] = x, row in device memory.
void store_row(Context& ctx, const float* x, size_t width, CacheRows table, const int32_t* row);
void store_ring(Context& ctx, const float* x, size_t n_rows, size_t width, CacheRows table, size_t first_position,
                const int32_t* device_position, size_t ring);
// compute::norm_rope_store_at: a block a head.
void norm_rope_store_at(Context& ctx, float* q, size_t n_head, float* k, const float* v, size_t n_head_kv, size_t head_dim,
                        const int32_t* position, const RopeParams* rope, const HeadNorms& norms, CacheRows keys,
                        CacheRows values, size_t ring);
// compute::decode_rows_rope_store and compute::decode_rows_attention: one launch each for all the rows.
void decode_rows_rope_store(Context& ctx, float* q, size_t n_head, float* k, const float* v, size_t n_head_kv, size_t head_dim,
                     const DecodeRows& rows, const RopeParams* rope, CacheRows keys, CacheRows values, size_t slot_stride,
                     size_t ring);
void decode_rows_attention(Context& ctx, const float* q, CacheRows keys, CacheRows values, const DecodeRows& rows,
                    size_t slot_stride, const AttentionShape& shape, float* out);

void add(Context& ctx, float* x, const float* y, size_t n);
void add_bias(Context& ctx, float* x, const float* bias, size_t n_rows, size_t n);
void swiglu(Context& ctx, const float* gate, const float* up, size_t n, float* out);
void swiglu_oai(Context& ctx, const float* gate, const float* up, size_t n, float* out);
void gelu(Context& ctx, float* x, size_t n);
void gelu_erf(Context& ctx, float* x, size_t n);
void geglu(Context& ctx, const float* gate, const float* up, size_t n, float* out);
void scale(Context& ctx, float* x, size_t n, float factor);
void add_scaled(Context& ctx, float* x, const float* y, float factor, size_t n);
void softcap(Context& ctx, float* x, size_t n, float cap);

// out[0] = the index of the largest of x[0..n) (the first, on ties): greedy decoding without
// copying the logits back.
void argmax(Context& ctx, const float* x, size_t n_rows, size_t n, int32_t* out);
// compute::top_k (compute/elementwise.hpp).
void top_k(Context& ctx, const float* x, size_t n, size_t k, int32_t* ids, float* values);
// compute::add_routed (compute/experts.hpp).
void add_routed(Context& ctx, float* y, const float* expert_out, size_t n, const float* router_logits, size_t n_experts,
                const float* chosen_logits, size_t k, bool renormalize);
// compute::route: top_k of each row, a warp a row where top_k takes one warp.
void route(Context& ctx, const float* router_logits, size_t n_tokens, size_t n_experts, size_t k, int32_t* ids,
           float* chosen_logits);
// compute::add_routed_rows: add_routed's kernel, a row of blocks a token.
void add_routed_rows(Context& ctx, float* y, const float* rows, size_t n, const int32_t* pair_row, size_t n_tokens,
                     const float* router_logits, size_t n_experts, const float* chosen_logits, size_t k, bool renormalize);

}  // namespace twinfer::compute::cuda
