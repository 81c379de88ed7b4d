#include "compute/matmul.hpp"

#include <stdexcept>
#include <string>

#include "compute/cpu/kernels.hpp"
#include "compute/cpu/thread_pool.hpp"
#include "format/quant.hpp"

namespace twinfer::compute {

bool matmul_supports(GGMLType type) {
    switch (type) {
    case GGMLType::F32: case GGMLType::F16: case GGMLType::BF16:
    case GGMLType::Q4_0: case GGMLType::Q4_1: case GGMLType::Q5_0: case GGMLType::Q5_1: case GGMLType::Q8_0:
    case GGMLType::Q2_K: case GGMLType::Q3_K: case GGMLType::Q4_K: case GGMLType::Q5_K: case GGMLType::Q6_K:
        return true;
    default:
        return false;
    }
}

WeightMatrix WeightMatrix::from_tensor(const gguf::TensorInfo& tensor) {
    if (tensor.dims.size() != 2)
        throw std::runtime_error("tensor " + tensor.name + ": expected a matrix (2 dimensions), got " +
                                 std::to_string(tensor.dims.size()));
    if (!matmul_supports(tensor.type))
        throw std::runtime_error("tensor " + tensor.name + ": no matmul kernel for type " + std::string(type_name(tensor.type)));
    return {tensor.type, tensor.dims[1], tensor.dims[0], tensor.data.data()};
}

namespace cpu {
namespace {

// Below this many tokens one matrix-vector product per token beats the tiled product, which
// pads the tokens to a whole block and dequantizes its tiles.
constexpr size_t min_gemm_tokens = 4;
constexpr size_t matvec_chunk_rows = 16;
constexpr size_t gemm_chunk_rows = 48;   // a multiple of every table's gemm_rows (12, 6, 4)

void matvec(Context& ctx, const Kernels& k, const WeightMatrix& w, const float* x, float* y, Activations activations) {
    const size_t row_bytes = w.row_bytes();
    if (activations == Activations::Int8 && k.matvec_q8 && has_q8_kernel(w.type)) {
        auto* xq = reinterpret_cast<Q8Block*>(ctx.shared_scratch(w.cols / 32 * sizeof(Q8Block)));
        quantize_q8(x, w.cols, xq);
        ctx.pool().parallel_for(w.rows, matvec_chunk_rows, [&](size_t begin, size_t end, int) {
            k.matvec_q8(w.type, w.data + begin * row_bytes, row_bytes, end - begin, w.cols, xq, y + begin);
        });
    } else {
        ctx.pool().parallel_for(w.rows, matvec_chunk_rows, [&](size_t begin, size_t end, int) {
            k.matvec(w.type, w.data + begin * row_bytes, row_bytes, end - begin, w.cols, x, y + begin);
        });
    }
}

void gemm(Context& ctx, const Kernels& k, const WeightMatrix& w, const float* x, size_t n_tokens, float* y) {
    const size_t row_bytes = w.row_bytes();
    const size_t block = k.gemm_token_block;
    const size_t padded = (n_tokens + block - 1) / block * block;
    auto* packed = reinterpret_cast<float*>(ctx.shared_scratch(padded * w.cols * sizeof(float)));
    pack_tokens(x, n_tokens, w.cols, block, packed);
    ctx.pool().parallel_for(w.rows, gemm_chunk_rows, [&](size_t begin, size_t end, int thread) {
        const size_t n_rows = end - begin;
        const std::byte* rows = w.data + begin * row_bytes;
        const float* tile = reinterpret_cast<const float*>(rows);
        if (w.type != GGMLType::F32) {
            auto* buffer = reinterpret_cast<float*>(ctx.thread_scratch(thread, n_rows * w.cols * sizeof(float)));
            dequantize(w.type, {rows, n_rows * row_bytes}, {buffer, n_rows * w.cols});
            tile = buffer;
        }
        k.gemm(tile, w.cols, n_rows, w.cols, packed, n_tokens, y + begin, w.rows);
    });
}

}  // namespace

void matmul(Context& ctx, const WeightMatrix& w, const float* x, size_t n_tokens, float* y, Activations activations) {
    const Kernels& k = kernels(ctx.cpu_isa());
    if (n_tokens >= min_gemm_tokens) return gemm(ctx, k, w, x, n_tokens, y);
    for (size_t t = 0; t < n_tokens; ++t) matvec(ctx, k, w, x + t * w.cols, y + t * w.rows, activations);
}

void get_rows(Context&, const WeightMatrix& table, const int32_t* ids, size_t n_ids, float* out) {
    const size_t row_bytes = table.row_bytes();
    for (size_t i = 0; i < n_ids; ++i) {
        if (ids[i] < 0 || static_cast<size_t>(ids[i]) >= table.rows)
            throw std::out_of_range("row " + std::to_string(ids[i]) + " of a table of " + std::to_string(table.rows) + " rows");
        dequantize(table.type, {table.data + ids[i] * row_bytes, row_bytes}, {out + i * table.cols, table.cols});
    }
}

}  // namespace cpu
}  // namespace twinfer::compute
