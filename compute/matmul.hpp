#pragma once
// Matrix products against a weight matrix kept in its file's block format (no copy, no
// conversion at load): one token is a matrix-vector product that dequantizes inside the dot
// product; many tokens run a register-blocked product over tiles of rows decoded once: to int8
// against quantized tokens on a CPU with AVX-512 VNNI (the int8 kernels' types, int8 or int8x2
// activations), to float otherwise. Weight types (matmul_supports): F32, F16, BF16, Q4_0, Q4_1,
// Q5_0, Q5_1, Q8_0, Q2_K-Q6_K and MXFP4 (gpt-oss's experts); the int8 kernels' types are Q4_0,
// Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K and MXFP4.
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "compute/buffer.hpp"
#include "compute/context.hpp"
#ifdef TWINFER_WITH_CUDA
#include "compute/cuda/ops.hpp"
#endif
#include "format/ggml_type.hpp"
#include "format/gguf.hpp"

namespace twinfer::compute {

// A row-major [rows, cols] matrix in `type` blocks: row r holds the weights of output r over the
// `cols` inputs, `row_bytes()` long; `data` points into the GGUF mapping (or device memory).
struct WeightMatrix {
    GGMLType type = GGMLType::F32;
    size_t rows = 0;
    size_t cols = 0;
    const std::byte* data = nullptr;
    // On a GPU, the blocks of the int8 kernels' types split into planes (compute/cuda/
    // quant_decode.cuh), as place_weights lays them out; the CPU reads the file's layout only.
    bool planar = false;

    size_t row_bytes() const { return row_size_bytes(type, cols); }   // bytes per row, either layout
    // A GGUF tensor of dims [cols, rows] (ggml order). Throws naming the tensor if it is not 2-D
    // or its type has no matmul kernel.
    static WeightMatrix from_tensor(const gguf::TensorInfo& tensor);
};

bool matmul_supports(GGMLType type);

// The fewest tokens compute::matmul takes as one tiled product on the CPU; fewer are one
// matrix-vector product each, which rounds differently.
constexpr size_t cpu_min_tiled_tokens = 4;

// The same on `device`. A batched pass pads its Tiled rows up to this many (models/f32_common.hpp),
// so that a lone Tiled row is computed as it is among many.
inline size_t min_tiled_tokens(Device device) {
#ifdef TWINFER_WITH_CUDA
    if (device == Device::CUDA) return cuda::min_tiled_tokens();
#endif
    (void)device;
    return cpu_min_tiled_tokens;
}


// `w` where the context's device reads it, laid out as that device's kernels read it best: the CPU
// uses w as it is (in the file mapping); a GPU gets a copy, in a buffer appended to `storage`, with
// the int8 kernels' types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K, MXFP4) split into planes.
inline WeightMatrix place_weights(Context& ctx, const WeightMatrix& w, [[maybe_unused]] std::vector<Buffer>& storage) {
    if (ctx.device() == Device::CPU) return w;
#ifdef TWINFER_WITH_CUDA
    if (ctx.device() == Device::CUDA)
        return cuda::place_weights(ctx, w, storage.emplace_back(Device::CUDA, w.rows * w.row_bytes()).data());
#endif
    throw_backend_unavailable("place_weights", ctx.device());
}

// How a matrix-vector product reads the activations. Int8: quantized per 32 values to 8 bits
// (llama.cpp's Q8_0 scheme, about 0.4% error per value, mostly averaging out in the sum) for
// integer dot products against quantized weights. Int8x2 (CPU only): two 8-bit digits a value
// (x = d (256 hi + lo)), ~15 bits (error at most 1/32,512 of its block's largest), two integer dots
// per block. Float32: as they are. Float weights (F32, F16, BF16) always use Float32; so do
// products over many tokens on a CPU without AVX-512 VNNI (the CUDA backend: see its ops).
enum class Activations { Float32, Int8, Int8x2 };
std::string_view activations_name(Activations a);      // "f32", "int8", "int8x2"
Activations parse_activations(std::string_view name);  // throws std::invalid_argument

// y[t, r] = sum_c W[r, c] x[t, c] for t < n_tokens.   x: [n_tokens, cols], y: [n_tokens, rows]
namespace cpu {
void matmul(Context& ctx, const WeightMatrix& w, const float* x, size_t n_tokens, float* y, Activations activations);
}
inline void matmul(Context& ctx, const WeightMatrix& w, const float* x, size_t n_tokens, float* y,
                   Activations activations) {
    if (ctx.device() == Device::CPU) return cpu::matmul(ctx, w, x, n_tokens, y, activations);
#ifdef TWINFER_WITH_CUDA
    if (ctx.device() == Device::CUDA) return cuda::matmul(ctx, w, x, n_tokens, y, activations);
#endif
    throw_backend_unavailable("matmul", ctx.device());
}

// Several products of one input, y_i = W_i x (Q, K and V; gate and up): x is packed or quantized
// once and every matrix's rows are shared out in one parallel region.
// An RMSNorm applied to the input of products on the way in: out = x / sqrt(mean(x^2) + eps) *
// weight ([n_tokens, cols], written), and the products read out. A GPU's one-token int8 path
// normalizes and quantizes in one launch.
struct RmsNorm {
    const float* weight;   // [cols]
    float eps;
    float* out;            // [n_tokens, cols]; not written where the input's producer prepared the norm (next_norm)
};

struct MatmulOutput {
    WeightMatrix w;
    float* y;                 // [n_tokens, w.rows]
    bool accumulate = false;  // y += W x: a residual add folded into the product (one pass, one launch)
};
// norm: normalize x first (see RmsNorm). next_norm: the RMSNorm the caller's next products apply
// to y (one output, accumulate): a backend may prepare it in this product's launch, so that those
// products, given the same norm on this y, launch no norm of their own (the GPU's one-token int8
// path; their norm's out is then not written).
namespace cpu {
void matmul(Context& ctx, std::span<const MatmulOutput> outputs, const float* x, size_t n_tokens, Activations activations,
            const RmsNorm* norm = nullptr);
}
inline void matmul(Context& ctx, std::span<const MatmulOutput> outputs, const float* x, size_t n_tokens,
                   Activations activations, const RmsNorm* norm = nullptr, [[maybe_unused]] const RmsNorm* next_norm = nullptr) {
    if (ctx.device() == Device::CPU) return cpu::matmul(ctx, outputs, x, n_tokens, activations, norm);
#ifdef TWINFER_WITH_CUDA
    if (ctx.device() == Device::CUDA) return cuda::matmul(ctx, outputs, x, n_tokens, activations, norm, next_norm);
#endif
    throw_backend_unavailable("matmul", ctx.device());
}

// A batched pass's Tiled rows (models/f32_common.hpp): y = W x over n_rows rows, n_rows a multiple
// of row_tile_rows(device) and at least min_tiled_tokens, each row's output the same bits in any
// such call. The CPU's tiled product computes a row alike whatever the row count (matmul). cuBLAS
// picks its kernel, and with it a row's order of sums, by the problem's size (an H100 gave a row
// of 8 other bits than the same row among 300): CUDA computes blocks of row_tile_rows rows, one
// cuBLAS product of that one size after another (the weights dequantized once).
inline size_t row_tile_rows(Device device) {
#ifdef TWINFER_WITH_CUDA
    if (device == Device::CUDA) return cuda::row_tile_rows();
#endif
    (void)device;
    return 1;
}
inline void matmul_row_tiles(Context& ctx, std::span<const MatmulOutput> outputs, const float* x, size_t n_rows,
                             Activations activations, const RmsNorm* norm = nullptr) {
#ifdef TWINFER_WITH_CUDA
    if (ctx.device() == Device::CUDA) return cuda::matmul_row_tiles(ctx, outputs, x, n_rows, activations, norm);
#endif
    matmul(ctx, outputs, x, n_rows, activations, norm);
}

// The batched decode step's products: y[t] = W x[t] for each of n_rows rows of x ([n_rows, cols]),
// every row's output the same bits as matmul(..., x + t * cols, n_tokens = 1, ...) of that row
// alone, whatever n_rows is and whatever the other rows hold (batch invariance: a server's greedy
// ids do not depend on what else runs). Unlike matmul over n_tokens >= 4 (a tiled product, which
// sums in another order, or with float activations), each row is the one-token path's bits. On
// the CPU each weight row is read once for all the rows (up to cpu::matvec_max_rows at a time),
// where n_rows one-token calls read it n_rows times. norm: as in
// matmul, each row normalized alone. On the GPU, with int8 activations, one launch for all the
// rows, a grid row each (the weights read from L2 by all but the first of the rows that take
// them at once); float activations run the rows' one-token products one after another.
namespace cpu {
void matmul_rows(Context& ctx, std::span<const MatmulOutput> outputs, const float* x, size_t n_rows, Activations activations,
                 const RmsNorm* norm = nullptr);
}
inline void matmul_rows(Context& ctx, std::span<const MatmulOutput> outputs, const float* x, size_t n_rows,
                        Activations activations, const RmsNorm* norm = nullptr) {
    if (ctx.device() == Device::CPU) return cpu::matmul_rows(ctx, outputs, x, n_rows, activations, norm);
#ifdef TWINFER_WITH_CUDA
    if (ctx.device() == Device::CUDA) return cuda::matmul_rows(ctx, outputs, x, n_rows, activations, norm);
#endif
    throw_backend_unavailable("matmul_rows", ctx.device());
}

// out = act(W_gate x) * (W_up x)   (a gated feed-forward before its down projection), gate and up
// of one shape; act is glu's: SiLU (SwiGLU: Llama, Qwen) or GELU's tanh form (GeGLU: Gemma).
// up_scratch: [n_tokens, rows] of working memory. On the GPU one token's products and the
// activation are one launch.
enum class Glu { SiLU, GeluTanh };
namespace cpu {
void matmul_glu(Context& ctx, const WeightMatrix& gate, const WeightMatrix& up, const float* x, size_t n_tokens,
                float* out, float* up_scratch, Activations activations, const RmsNorm* norm = nullptr, Glu glu = Glu::SiLU);
}
inline void matmul_glu(Context& ctx, const WeightMatrix& gate, const WeightMatrix& up, const float* x, size_t n_tokens,
                       float* out, float* up_scratch, Activations activations, const RmsNorm* norm = nullptr,
                       Glu glu = Glu::SiLU) {
    if (ctx.device() == Device::CPU) return cpu::matmul_glu(ctx, gate, up, x, n_tokens, out, up_scratch, activations, norm, glu);
#ifdef TWINFER_WITH_CUDA
    if (ctx.device() == Device::CUDA)
        return cuda::matmul_glu(ctx, gate, up, x, n_tokens, out, up_scratch, activations, norm, glu);
#endif
    throw_backend_unavailable("matmul_glu", ctx.device());
}

// Rows `ids` of an embedding table, as float: out[i, :] = table[ids[i], :]. ids must be < rows.
namespace cpu {
void get_rows(Context& ctx, const WeightMatrix& table, const int32_t* ids, size_t n_ids, float* out);
}
inline void get_rows(Context& ctx, const WeightMatrix& table, const int32_t* ids, size_t n_ids, float* out) {
    if (ctx.device() == Device::CPU) return cpu::get_rows(ctx, table, ids, n_ids, out);
#ifdef TWINFER_WITH_CUDA
    if (ctx.device() == Device::CUDA) return cuda::get_rows(ctx, table, ids, n_ids, out);
#endif
    throw_backend_unavailable("get_rows", ctx.device());
}

}  // namespace twinfer::compute
