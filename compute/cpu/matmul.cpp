#include "compute/matmul.hpp"

#include <algorithm>
#include <stdexcept>
#include <string>
#include <vector>

#include "compute/cpu/kernels.hpp"
#include "compute/elementwise.hpp"
#include "compute/norm.hpp"
#include "compute/cpu/thread_pool.hpp"
#include "format/quant.hpp"

namespace twinfer::compute {

std::string_view activations_name(Activations a) {
    switch (a) {
    case Activations::Float32: return "f32";
    case Activations::Int8: return "int8";
    case Activations::Int8x2: return "int8x2";
    }
    return "?";
}

Activations parse_activations(std::string_view name) {
    for (Activations a : {Activations::Float32, Activations::Int8, Activations::Int8x2})
        if (name == activations_name(a)) return a;
    throw std::invalid_argument("unknown activations '" + std::string(name) + "' (f32, int8, int8x2)");
}

bool matmul_supports(GGMLType type) {
    switch (type) {
    case GGMLType::F32: case GGMLType::F16: case GGMLType::BF16:
    case GGMLType::Q4_0: case GGMLType::Q4_1: case GGMLType::Q5_0: case GGMLType::Q5_1: case GGMLType::Q8_0:
    case GGMLType::Q2_K: case GGMLType::Q3_K: case GGMLType::Q4_K: case GGMLType::Q5_K: case GGMLType::Q6_K:
    case GGMLType::MXFP4:
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
constexpr size_t min_gemm_tokens = cpu_min_tiled_tokens;
// Rows handed out at a time in a matrix-vector product: each thread should stream long runs of
// consecutive rows (hardware prefetchers follow a stream, and lose it at every jump), yet there
// should be a few chunks per thread, so that a core slowed by another process takes fewer.
size_t matvec_chunk_rows(size_t rows, int n_threads) {
    return std::max<size_t>(16, rows / (4 * static_cast<size_t>(n_threads)));
}
constexpr size_t gemm_chunk_rows = 48;   // a multiple of every table's gemm_rows (12, 6, 4) and of gemm_q8's panels (4)

// Calls fn(output, begin, end, thread) for chunks of every output's rows, from one parallel region.
// chunk_rows(rows) gives each output's chunk size.
template <class ChunkRows, class F>
void for_row_chunks(Context& ctx, std::span<const MatmulOutput> outputs, ChunkRows&& chunk_rows, F&& fn) {
    auto n_chunks = [&](size_t i) { const size_t c = chunk_rows(outputs[i].w.rows); return (outputs[i].w.rows + c - 1) / c; };
    size_t total = 0;
    for (size_t i = 0; i < outputs.size(); ++i) total += n_chunks(i);
    ctx.pool().parallel_for(total, 1, [&](size_t first, size_t last, int thread) {
        for (size_t c = first; c < last; ++c) {
            size_t index = c, i = 0;
            for (; index >= n_chunks(i); ++i) index -= n_chunks(i);
            const size_t chunk = chunk_rows(outputs[i].w.rows), begin = index * chunk;
            fn(i, begin, std::min(outputs[i].w.rows, begin + chunk), thread);
        }
    });
}

// n_x matrix-vector products, x: [n_x, cols] -> each output's y: [n_x, rows], every row
// computed as it would be alone: quantized alone (quantize_q8 / quantize_q8x2 on its own values),
// its dot products the kernel's for one row, whatever n_x is; the weight chunks are those of one
// row's product (the split hands rows to threads, it changes no row's arithmetic). Each chunk of
// weight rows is read once for up to matvec_max_rows activation rows.
void matvec(Context& ctx, const Kernels& k, std::span<const MatmulOutput> outputs, const float* x, size_t n_x,
            Activations activations) {
    const size_t cols = outputs[0].w.cols;
    const bool quantized = activations != Activations::Float32 && k.matvec_q8 && cols % 32 == 0;
    const size_t blocks_per_row = cols / 32;
    const Q8Block* xq = nullptr;
    const Q8x2Block* xq2 = nullptr;
    const Q8x2Quad* quads = nullptr;
    if (quantized && activations == Activations::Int8x2) {
        // Whole groups of four rows are also packed as quads where the kernels read them (groups
        // never straddle a slice: matvec_max_rows is a multiple of 4).
        static_assert(matvec_max_rows % 4 == 0);
        const size_t n_quad_groups = k.matvec_q8x2_quads ? n_x / 4 : 0;
        const size_t block_bytes = n_x * blocks_per_row * sizeof(Q8x2Block);
        std::byte* scratch = ctx.shared_scratch(block_bytes + n_quad_groups * blocks_per_row * sizeof(Q8x2Quad));
        auto* blocks = reinterpret_cast<Q8x2Block*>(scratch);
        auto* packed = n_quad_groups ? reinterpret_cast<Q8x2Quad*>(scratch + block_bytes) : nullptr;
        ctx.pool().parallel_for((n_x + 3) / 4, 1, [&](size_t first, size_t last, int) {
            for (size_t group = first; group < last; ++group) {
                for (size_t b = 4 * group; b < std::min(n_x, 4 * group + 4); ++b)
                    k.quantize_q8x2(x + b * cols, cols, blocks + b * blocks_per_row);
                if (group < n_quad_groups)
                    pack_q8x2_quads(blocks + 4 * group * blocks_per_row, blocks_per_row, packed + group * blocks_per_row);
            }
        });
        xq2 = blocks;
        quads = packed;
    } else if (quantized) {
        auto* blocks = reinterpret_cast<Q8Block*>(ctx.shared_scratch(n_x * blocks_per_row * sizeof(Q8Block)));
        ctx.pool().parallel_for(n_x, 1, [&](size_t first, size_t last, int) {
            for (size_t b = first; b < last; ++b) quantize_q8(x + b * cols, cols, blocks + b * blocks_per_row);
        });
        xq = blocks;
    }
    const int n_threads = ctx.pool().size();
    auto chunk_rows = [n_threads](size_t rows) { return matvec_chunk_rows(rows, n_threads); };
    // Accumulating outputs: each chunk's products ([slice rows, chunk rows]) land in its thread's
    // scratch first, then are added (allocated here: a worker thread must not throw).
    const size_t slice = std::min(n_x, matvec_max_rows);
    std::vector<float*> sums(ctx.n_threads());
    size_t sum_floats = 0;
    for (const MatmulOutput& o : outputs)
        if (o.accumulate) sum_floats = std::max(sum_floats, chunk_rows(o.w.rows) * slice);
    if (sum_floats)
        for (int t = 0; t < ctx.n_threads(); ++t) sums[t] = reinterpret_cast<float*>(ctx.thread_scratch(t, sum_floats * sizeof(float)));
    for_row_chunks(ctx, outputs, chunk_rows, [&](size_t i, size_t begin, size_t end, int thread) {
        const WeightMatrix& w = outputs[i].w;
        const size_t row_bytes = w.row_bytes(), n_rows = end - begin;
        const std::byte* rows = w.data + begin * row_bytes;
        for (size_t b0 = 0; b0 < n_x; b0 += slice) {
            const size_t n = std::min(slice, n_x - b0);
            float* y = outputs[i].y + b0 * w.rows + begin;
            float* products = outputs[i].accumulate ? sums[thread] : y;
            const size_t stride = outputs[i].accumulate ? n_rows : w.rows;
            if (xq && has_q8_kernel(w.type)) k.matvec_q8(w.type, rows, row_bytes, n_rows, cols, xq + b0 * blocks_per_row, n, products, stride);
            else if (xq2 && has_q8_kernel(w.type) && quads)
                k.matvec_q8x2_quads(w.type, rows, row_bytes, n_rows, cols, xq2 + b0 * blocks_per_row,
                                    quads + b0 / 4 * blocks_per_row, n, products, stride);
            else if (xq2 && has_q8_kernel(w.type))
                k.matvec_q8x2(w.type, rows, row_bytes, n_rows, cols, xq2 + b0 * blocks_per_row, n, products, stride);
            else k.matvec(w.type, rows, row_bytes, n_rows, cols, x + b0 * cols, n, products, stride);
            if (outputs[i].accumulate)
                for (size_t b = 0; b < n; ++b)
                    for (size_t r = 0; r < n_rows; ++r) y[b * w.rows + r] += products[b * n_rows + r];
        }
    });
}

// The tiled products over n_tokens >= min_gemm_tokens. With int8 or int8x2 activations, the
// matrices of the int8 kernels' types go through gemm_q8 (tokens quantized once, as the one-token
// products quantize them; weights decoded to int8 once per chunk of rows), the others (and every
// matrix with f32 activations, or on a table without gemm_q8) through the float product of
// dequantized tiles.
void gemm(Context& ctx, const Kernels& k, std::span<const MatmulOutput> outputs, const float* x, size_t n_tokens,
          Activations activations) {
    const size_t cols = outputs[0].w.cols;
    const int digits = activations == Activations::Int8x2 ? 2 : 1;
    auto int8 = [&](const WeightMatrix& w) {
        return activations != Activations::Float32 && k.gemm_q8 && cols % 32 == 0 && has_q8_kernel(w.type);
    };
    bool any_int8 = false, any_float = false;
    for (const MatmulOutput& o : outputs) (int8(o.w) ? any_int8 : any_float) = true;

    const size_t block = k.gemm_token_block;
    const size_t n_blocks = (n_tokens + block - 1) / block;
    const size_t float_bytes = any_float ? n_blocks * block * cols * sizeof(float) : 0;
    const size_t n_groups = (n_tokens + q8_gemm_group - 1) / q8_gemm_group;
    const size_t group_bytes = cols / 32 * q8_gemm_block_bytes(digits);
    std::byte* shared = ctx.shared_scratch(float_bytes + (any_int8 ? n_groups * group_bytes : 0));
    auto* packed = reinterpret_cast<float*>(shared);
    std::byte* quantized = shared + float_bytes;
    const size_t float_tasks = any_float ? n_blocks : 0;
    ctx.pool().parallel_for(float_tasks + (any_int8 ? n_groups : 0), 1, [&](size_t first, size_t last, int) {
        for (size_t task = first; task < last; ++task) {
            if (task < float_tasks) {
                const size_t t0 = task * block, t1 = std::min(n_tokens, t0 + block);
                pack_tokens(x + t0 * cols, t1 - t0, cols, block, packed + t0 * cols);
            } else {
                const size_t g = task - float_tasks, t0 = g * q8_gemm_group;
                k.pack_q8_tokens(x + t0 * cols, std::min(q8_gemm_group, n_tokens - t0), cols, digits, quantized + g * group_bytes);
            }
        }
    });
    // Each thread's tile of dequantized (or decoded) rows, then (accumulating outputs of the float
    // product) its products before they are added; allocated here: a worker thread must not throw.
    const size_t tile_floats = any_float ? gemm_chunk_rows * cols : 0;
    const size_t product_floats = any_float ? gemm_chunk_rows * n_tokens : 0;
    const size_t tile_bytes = std::max((tile_floats + product_floats) * sizeof(float),
                                       any_int8 ? k.gemm_q8_scratch_bytes(gemm_chunk_rows, cols, digits) : 0);
    std::vector<std::byte*> tiles(ctx.n_threads());
    for (int t = 0; t < ctx.n_threads(); ++t) tiles[t] = ctx.thread_scratch(t, tile_bytes);
    for_row_chunks(ctx, outputs, [](size_t) { return gemm_chunk_rows; }, [&](size_t i, size_t begin, size_t end, int thread) {
        const WeightMatrix& w = outputs[i].w;
        const size_t n_rows = end - begin;
        const std::byte* rows = w.data + begin * w.row_bytes();
        float* y = outputs[i].y + begin;
        if (int8(w))
            return k.gemm_q8(w.type, rows, w.row_bytes(), n_rows, cols, quantized, n_tokens, digits, tiles[thread], y, w.rows,
                             outputs[i].accumulate);
        auto* scratch = reinterpret_cast<float*>(tiles[thread]);
        const float* tile = reinterpret_cast<const float*>(rows);
        if (w.type != GGMLType::F32) {
            k.dequantize(w.type, rows, n_rows * cols, scratch);
            tile = scratch;
        }
        if (!outputs[i].accumulate) return k.gemm(tile, cols, n_rows, cols, packed, n_tokens, y, w.rows);
        float* products = scratch + tile_floats;   // [n_tokens, n_rows]
        k.gemm(tile, cols, n_rows, cols, packed, n_tokens, products, n_rows);
        for (size_t t = 0; t < n_tokens; ++t)
            for (size_t r = 0; r < n_rows; ++r) y[t * w.rows + r] += products[t * n_rows + r];
    });
}

// The checks and the norm of matmul and matmul_rows; returns the input the products read.
const float* prepare_products(Context& ctx, std::span<const MatmulOutput> outputs, const float* x, size_t n_tokens,
                              const RmsNorm* norm) {
    for (const MatmulOutput& o : outputs)
        if (o.w.cols != outputs[0].w.cols)
            throw std::invalid_argument("matmul: matrices sharing an input must have as many columns (" +
                                        std::to_string(o.w.cols) + " vs " + std::to_string(outputs[0].w.cols) + ")");
    if (outputs.empty() || n_tokens == 0 || !norm) return x;
    cpu::rms_norm(ctx, x, norm->weight, n_tokens, outputs[0].w.cols, norm->eps, norm->out);
    return norm->out;
}

}  // namespace

void matmul(Context& ctx, std::span<const MatmulOutput> outputs, const float* x, size_t n_tokens, Activations activations,
            const RmsNorm* norm) {
    x = prepare_products(ctx, outputs, x, n_tokens, norm);
    if (outputs.empty() || n_tokens == 0) return;
    const Kernels& k = kernels(ctx.cpu_isa());
    if (n_tokens >= min_gemm_tokens) return gemm(ctx, k, outputs, x, n_tokens, activations);
    matvec(ctx, k, outputs, x, n_tokens, activations);
}

void matmul_rows(Context& ctx, std::span<const MatmulOutput> outputs, const float* x, size_t n_rows, Activations activations,
                 const RmsNorm* norm) {
    x = prepare_products(ctx, outputs, x, n_rows, norm);
    if (outputs.empty() || n_rows == 0) return;
    matvec(ctx, kernels(ctx.cpu_isa()), outputs, x, n_rows, activations);
}

void matmul(Context& ctx, const WeightMatrix& w, const float* x, size_t n_tokens, float* y, Activations activations) {
    const MatmulOutput output{w, y};
    cpu::matmul(ctx, std::span(&output, 1), x, n_tokens, activations);
}

void matmul_glu(Context& ctx, const WeightMatrix& gate, const WeightMatrix& up, const float* x, size_t n_tokens,
                float* out, float* up_scratch, Activations activations, const RmsNorm* norm, Glu glu) {
    if (gate.rows != up.rows || gate.cols != up.cols)
        throw std::invalid_argument("matmul_glu: gate [" + std::to_string(gate.rows) + ", " + std::to_string(gate.cols) +
                                    "] and up [" + std::to_string(up.rows) + ", " + std::to_string(up.cols) + "] differ");
    const MatmulOutput outputs[] = {{gate, out}, {up, up_scratch}};
    cpu::matmul(ctx, outputs, x, n_tokens, activations, norm);
    if (glu == Glu::GeluTanh) cpu::geglu(ctx, out, up_scratch, n_tokens * gate.rows, out);
    else cpu::swiglu(ctx, out, up_scratch, n_tokens * gate.rows, out);
}

void get_rows(Context& ctx, const WeightMatrix& table, const int32_t* ids, size_t n_ids, float* out) {
    const Kernels& k = kernels(ctx.cpu_isa());
    const size_t row_bytes = table.row_bytes();
    for (size_t i = 0; i < n_ids; ++i) {
        if (ids[i] < 0 || static_cast<size_t>(ids[i]) >= table.rows)
            throw std::out_of_range("row " + std::to_string(ids[i]) + " of a table of " + std::to_string(table.rows) + " rows");
        k.dequantize(table.type, table.data + ids[i] * row_bytes, table.cols, out + i * table.cols);
    }
}

}  // namespace cpu
}  // namespace twinfer::compute
