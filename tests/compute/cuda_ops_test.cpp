// Each CUDA op against the CPU op on fresh random inputs. Float32 paths must agree to a relative
// error ||cuda - cpu|| / ||cpu|| of 1e-3; every test skips when the machine has no CUDA GPU.
#ifdef TWINFER_WITH_CUDA
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <deque>
#include <random>
#include <utility>
#include <vector>

#include "common/vector_error.hpp"
#include "compute/attention.hpp"
#include "compute/cuda/ops.hpp"
#include "compute/cuda/runtime.hpp"
#include "compute/elementwise.hpp"
#include "compute/experts.hpp"
#include "compute/matmul.hpp"
#include "compute/norm.hpp"
#include "compute/rope.hpp"
#include "format/quant.hpp"

namespace twinfer::compute {
namespace {

constexpr double float_tolerance = 1e-3;

using test::l2_relative_error;

ContextOptions options_for(Device device) {
    ContextOptions options;
    options.device = device;
    options.n_threads = 2;
    return options;
}

class CudaOps : public ::testing::Test {
protected:
    void SetUp() override {
        if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA GPU: " << cuda::describe_device();
        gpu = std::make_unique<Context>(options_for(Device::CUDA));
    }

    std::vector<float> random(size_t n, float scale = 1.0f) {
        std::normal_distribution<float> normal(0.0f, scale);
        std::vector<float> v(n);
        for (auto& x : v) x = normal(rng);
        return v;
    }

    // A device copy of host data, kept alive by the fixture.
    template <class T> T* to_device(const std::vector<T>& host) {
        buffers.emplace_back(Device::CUDA, std::max<size_t>(1, host.size() * sizeof(T)));
        cuda::upload(*gpu, buffers.back().data(), host.data(), host.size() * sizeof(T));
        return buffers.back().as<T>();
    }
    // Weights where the GPU's kernels read them (compute::place_weights: planar for the int8 types).
    WeightMatrix placed(GGMLType type, size_t rows, size_t cols, const std::vector<std::byte>& bytes) {
        return place_weights(*gpu, {type, rows, cols, bytes.data()}, buffers);
    }
    // Device memory filled with NaN, so that an element the kernel misses fails the comparison.
    float* poisoned(size_t n) { return to_device(std::vector<float>(n, NAN)); }
    template <class T> std::vector<T> to_host(const T* device, size_t n) {
        std::vector<T> host(n);
        cuda::download(*gpu, host.data(), device, n * sizeof(T));
        return host;
    }
    // A copy of `values` as a KV cache table of `type`, in host or device memory (float16:
    // fp32_to_fp16's rounding, as the cache stores it), kept alive by the fixture. A copy on the host
    // too: a store into one table must not show in the next made from the same values.
    CacheRows cache_table(const std::vector<float>& values, KvType type, bool on_device) {
        if (type == KvType::F32)
            return on_device ? CacheRows(to_device(values)) : CacheRows(host_floats.emplace_back(values).data());
        std::vector<uint16_t>& halves = host_halves.emplace_back(values.size());
        for (size_t i = 0; i < values.size(); ++i) halves[i] = fp32_to_fp16(values[i]);
        return on_device ? CacheRows(to_device(halves), KvType::F16) : CacheRows(halves.data(), KvType::F16);
    }
    // n elements of a table (host or device memory) as floats.
    std::vector<float> cache_values(CacheRows table, size_t n, bool on_device) {
        std::vector<float> out(n);
        if (table.type == KvType::F32) {
            if (on_device) return to_host(table.f32(), n);
            std::copy(table.f32(), table.f32() + n, out.begin());
            return out;
        }
        const auto* halves = static_cast<const uint16_t*>(table.data);
        const std::vector<uint16_t> bits = on_device ? to_host(halves, n) : std::vector<uint16_t>(halves, halves + n);
        for (size_t i = 0; i < n; ++i) out[i] = fp16_to_fp32(bits[i]);
        return out;
    }

    std::mt19937 rng{std::random_device{}()};
    Context cpu{options_for(Device::CPU)};
    std::unique_ptr<Context> gpu;
    std::vector<Buffer> buffers;
    std::deque<std::vector<uint16_t>> host_halves;   // a deque: earlier tables keep their addresses
    std::deque<std::vector<float>> host_floats;
};

// Random bytes of `rows` rows in `type`, with every block's float16 scales set to sane values
// (random bits there would make infinities and NaNs). Quantizable types quantize random floats.
std::vector<std::byte> random_weights(GGMLType type, size_t rows, size_t cols, std::mt19937& rng) {
    const size_t row_bytes = row_size_bytes(type, cols);
    std::vector<std::byte> bytes(rows * row_bytes);
    if (can_quantize(type)) {
        std::normal_distribution<float> normal(0.0f, 0.05f);
        std::vector<float> values(rows * cols);
        for (auto& v : values) v = normal(rng);
        quantize(type, values, bytes);
        return bytes;
    }
    std::uniform_int_distribution<int> byte(0, 255);
    for (auto& b : bytes) b = std::byte(byte(rng));
    std::uniform_real_distribution<float> scale(0.001f, 0.02f);
    const auto& traits = type_traits(type);
    if (type == GGMLType::MXFP4) {
        // Exponents of 2^-11 to 2^-7: weights up to 12 times that, about the quantized types' 0.05.
        std::uniform_int_distribution<int> exponent(128 - 11, 128 - 7);
        for (size_t block = 0; block < bytes.size() / traits.type_size; ++block)
            bytes[block * traits.type_size] = std::byte(exponent(rng));
        return bytes;
    }
    std::vector<size_t> half_offsets;
    switch (type) {
    case GGMLType::Q2_K: half_offsets = {80, 82}; break;
    case GGMLType::Q3_K: half_offsets = {108}; break;
    case GGMLType::Q4_K: case GGMLType::Q5_K: half_offsets = {0, 2}; break;
    case GGMLType::Q6_K: half_offsets = {208}; break;
    default: ADD_FAILURE() << "no random weights for " << type_name(type);
    }
    for (size_t block = 0; block < bytes.size() / traits.type_size; ++block)
        for (size_t offset : half_offsets) {
            const ggml_half h = fp32_to_fp16(scale(rng));
            std::memcpy(bytes.data() + block * traits.type_size + offset, &h, sizeof h);
        }
    return bytes;
}

struct MatmulCase {
    GGMLType type;
    size_t rows, cols, n_tokens;
};

class CudaMatmul : public CudaOps, public ::testing::WithParamInterface<MatmulCase> {};

TEST_P(CudaMatmul, MatchesCpu) {
    const auto [type, rows, cols, n_tokens] = GetParam();
    const auto weights = random_weights(type, rows, cols, rng);
    const WeightMatrix w_cpu{type, rows, cols, weights.data()};
    const WeightMatrix w_gpu = placed(type, rows, cols, weights);
    const auto x = random(n_tokens * cols);
    std::vector<float> want(n_tokens * rows);
    matmul(cpu, w_cpu, x.data(), n_tokens, want.data(), Activations::Float32);
    float* y = poisoned(n_tokens * rows);
    matmul(*gpu, w_gpu, to_device(x), n_tokens, y, Activations::Float32);
    // Eight tokens and more go through float16 tiles (matmul.cu): about 4e-4, still under 1e-3.
    EXPECT_LT(l2_relative_error(to_host(y, want.size()), want), float_tolerance);

    // Int8 activations on the integer kernels (matvec_int8.cu): the CPU's quantization scheme on
    // the same x, so the same codes and only the summation order differs.
    const bool int8_kernel =
        n_tokens < 8 && (type == GGMLType::Q4_0 || type == GGMLType::Q4_1 || type == GGMLType::Q5_0 || type == GGMLType::Q5_1 ||
                         type == GGMLType::Q8_0 || type == GGMLType::Q4_K || type == GGMLType::Q5_K || type == GGMLType::Q6_K ||
                         type == GGMLType::MXFP4);
    if (int8_kernel) {
        std::vector<float> want_int8(n_tokens * rows);
        matmul(cpu, w_cpu, x.data(), n_tokens, want_int8.data(), Activations::Int8);
        float* y_int8 = poisoned(n_tokens * rows);
        matmul(*gpu, w_gpu, to_device(x), n_tokens, y_int8, Activations::Int8);
        EXPECT_LT(l2_relative_error(to_host(y_int8, want_int8.size()), want_int8), 1e-5);
    }

    std::vector<float> dequantized(rows * cols);
    dequantize(type, weights, dequantized);
    float* out = poisoned(rows * cols);
    cuda::dequantize(*gpu, w_gpu, out);
    EXPECT_LT(l2_relative_error(to_host(out, dequantized.size()), dequantized), 1e-6);
}

std::vector<MatmulCase> matmul_cases() {
    std::vector<MatmulCase> cases;
    for (GGMLType type : {GGMLType::F32, GGMLType::F16, GGMLType::BF16, GGMLType::Q4_0, GGMLType::Q4_1, GGMLType::Q5_0,
                          GGMLType::Q5_1, GGMLType::Q8_0, GGMLType::Q2_K, GGMLType::Q3_K, GGMLType::Q4_K, GGMLType::Q5_K,
                          GGMLType::Q6_K, GGMLType::MXFP4}) {
        cases.push_back({type, 37, 512, 1});   // rows not a multiple of a block's 16
        cases.push_back({type, 64, 768, 3});   // one product per token
        cases.push_back({type, 70, 1024, 20}); // the float16 cuBLAS product
    }
    cases.push_back({GGMLType::Q4_0, 24, 11008, 1});  // x past 48 KiB of shared memory
    cases.push_back({GGMLType::Q4_K, 24, 11008, 1});  // 43 super-blocks: a lane's last batch partial
    // K types staged in more than one pass per row (a stage holds 7,168 columns of Q6_K, 13,312 of
    // Q3_K), each pass starting on its own block boundary: Llama 3 8B's feed-forward width.
    cases.push_back({GGMLType::Q6_K, 24, 14336, 1});
    cases.push_back({GGMLType::Q3_K, 24, 14336, 1});
    // gpt-oss-20b's expert shape (2,880 = 90 blocks: a lane's last batch partial), MXFP4 as it ships.
    cases.push_back({GGMLType::MXFP4, 24, 2880, 1});
    return cases;
}

INSTANTIATE_TEST_SUITE_P(Types, CudaMatmul, ::testing::ValuesIn(matmul_cases()), [](const auto& info) {
    const MatmulCase& c = info.param;
    return std::string(type_name(c.type)) + "_" + std::to_string(c.rows) + "x" + std::to_string(c.cols) + "_t" +
           std::to_string(c.n_tokens);
});

TEST_F(CudaOps, GetRows) {
    for (GGMLType type : {GGMLType::F32, GGMLType::Q4_1, GGMLType::Q6_K, GGMLType::MXFP4}) {
        const size_t rows = 50, cols = 512;
        const auto weights = random_weights(type, rows, cols, rng);
        const std::vector<int32_t> ids{3, 0, 49, 3, 17};
        std::vector<float> want(ids.size() * cols);
        get_rows(cpu, {type, rows, cols, weights.data()}, ids.data(), ids.size(), want.data());
        float* out = poisoned(want.size());
        get_rows(*gpu, placed(type, rows, cols, weights), to_device(ids), ids.size(), out);
        EXPECT_LT(l2_relative_error(to_host(out, want.size()), want), 1e-6) << type_name(type);
    }
}

TEST_F(CudaOps, Norms) {
    const size_t n_rows = 5, n = 576;
    const auto x = random(n_rows * n, 3.0f), weight = random(n), bias = random(n);
    std::vector<float> want(x.size());
    rms_norm(cpu, x.data(), weight.data(), n_rows, n, 1e-5f, want.data());
    float* out = poisoned(x.size());
    rms_norm(*gpu, to_device(x), to_device(weight), n_rows, n, 1e-5f, out);
    EXPECT_LT(l2_relative_error(to_host(out, x.size()), want), float_tolerance);

    // A sandwich norm's residual add: x += rms_norm(y), one launch.
    const auto residual = random(x.size());
    auto sum_want = residual;
    add_rms_norm(cpu, sum_want.data(), x.data(), weight.data(), n_rows, n, 1e-5f);
    float* sum = to_device(residual);
    add_rms_norm(*gpu, sum, to_device(x), to_device(weight), n_rows, n, 1e-5f);
    EXPECT_LT(l2_relative_error(to_host(sum, x.size()), sum_want), float_tolerance);
    EXPECT_GT(l2_relative_error(sum_want, residual), 0.1) << "the norm must be added";

    layer_norm(cpu, x.data(), weight.data(), bias.data(), n_rows, n, 1e-5f, want.data());
    float* x_gpu = to_device(x);
    layer_norm(*gpu, x_gpu, to_device(weight), to_device(bias), n_rows, n, 1e-5f, x_gpu);  // in place
    EXPECT_LT(l2_relative_error(to_host(x_gpu, x.size()), want), float_tolerance);
}

TEST_F(CudaOps, Rope) {
    const size_t n_tokens = 7, n_heads = 4, head_dim = 64, row_stride = n_heads * head_dim + 32;
    for (auto pairing : {RopeParams::Pairing::Adjacent, RopeParams::Pairing::Halves}) {
        RopeParams params;
        params.pairing = pairing;
        params.n_rot = 48;  // a partial rotation: the last 16 dimensions stay
        params.freq_base = 500000.0;
        const auto x = random(n_tokens * row_stride);
        auto want = x;
        rope(cpu, want.data(), n_tokens, row_stride, n_heads, head_dim, 3000, params);
        float* x_gpu = to_device(x);
        rope(*gpu, x_gpu, n_tokens, row_stride, n_heads, head_dim, 3000, params);
        EXPECT_LT(l2_relative_error(to_host(x_gpu, x.size()), want), float_tolerance);
    }
}

// The decode step's fused launches against the CPU's plain ops: products of one x sharing a
// launch (three heights), the residual add folded into a product, and gate/up with SwiGLU, for one
// token (int8 kernels) and twenty (cuBLAS, then the element-wise op). The large shape, one token:
// more rows than one wave of one-row warps holds (two rows a warp, blocks crossing from target to
// target; SwiGLU in several waves): rows of 4,160 values, and of 11,008 (Llama 2 7B's down
// product: 344 blocks a row, a lane's last batch partial).
TEST_F(CudaOps, FusedProductsMatchCpu) {
    struct Shape {
        size_t cols, heights[3];
    };
    // SwiGLU over the first height: one wave that quantizes its output (576, 4128 rows), a launch
    // of several waves made one by four rows of gate and up a warp for the 4-bit types (12,288),
    // and by two rows of each (5,632, TinyLlama's), on an H100.
    for (const Shape& shape : {Shape{576, {576, 192, 70}}, Shape{4160, {12288, 4100, 70}},
                               Shape{11008, {4128, 64, 8}}, Shape{2048, {5632, 256, 64}}})
        for (GGMLType type : {GGMLType::Q4_0, GGMLType::Q4_1, GGMLType::Q5_0, GGMLType::Q8_0, GGMLType::Q4_K, GGMLType::Q5_K,
                              GGMLType::Q6_K, GGMLType::MXFP4})
        for (size_t n_tokens : {size_t{1}, size_t{20}}) {
            const size_t block = type_traits(type).block_size;   // the down product's columns are heights[0]
            if ((shape.cols > 576 && n_tokens > 1) || shape.cols % block != 0 || shape.heights[0] % block != 0) continue;
            const size_t cols = shape.cols;
            const auto& heights = shape.heights;
            const double tolerance = n_tokens == 1 ? 1e-5 : float_tolerance;
            // Several tokens: the GPU's products are float16 tensor-core ones whatever the
            // activations (cuda/ops.hpp), the CPU's with int8 activations its int8 tiled product; its
            // float products are the reference there.
            const Activations reference = n_tokens == 1 ? Activations::Int8 : Activations::Float32;
            const auto x = random(n_tokens * cols);
            std::vector<std::vector<std::byte>> weights;
            std::vector<MatmulOutput> on_cpu, on_gpu;
            std::vector<std::vector<float>> y0;
            for (size_t rows : heights) {
                weights.push_back(random_weights(type, rows, cols, rng));
                y0.push_back(random(n_tokens * rows));
            }
            std::vector<std::vector<float>> want = y0;
            for (size_t i = 0; i < 3; ++i) {
                const WeightMatrix w{type, heights[i], cols, weights[i].data()};
                on_cpu.push_back({w, want[i].data(), /*accumulate=*/i == 1});
                const WeightMatrix w_gpu = placed(type, heights[i], cols, weights[i]);
                on_gpu.push_back({w_gpu, i == 1 ? to_device(y0[i]) : poisoned(n_tokens * heights[i]), i == 1});
            }
            matmul(cpu, on_cpu, x.data(), n_tokens, reference);
            matmul(*gpu, on_gpu, to_device(x), n_tokens, Activations::Int8);
            for (size_t i = 0; i < 3; ++i)
                EXPECT_LT(l2_relative_error(to_host(on_gpu[i].y, want[i].size()), want[i]), tolerance)
                    << type_name(type) << " tokens=" << n_tokens << " output " << i;

            // gate = outputs 0 and up = a second matrix of its shape
            const auto up_bytes = random_weights(type, heights[0], cols, rng);
            const WeightMatrix up{type, heights[0], cols, up_bytes.data()};
            const WeightMatrix up_gpu = placed(type, heights[0], cols, up_bytes);
            std::vector<float> swiglu_want(n_tokens * heights[0]), scratch(n_tokens * heights[0]);
            matmul_glu(cpu, on_cpu[0].w, up, x.data(), n_tokens, swiglu_want.data(), scratch.data(), reference);
            const size_t down_rows = 64;   // the down product after it (below), placed before it runs
            const auto down_bytes = random_weights(type, down_rows, heights[0], rng);
            const WeightMatrix down{type, down_rows, heights[0], down_bytes.data()};
            const WeightMatrix down_gpu = placed(type, down_rows, heights[0], down_bytes);
            const float* x_gpu = to_device(x);
            float* swiglu_scratch = poisoned(n_tokens * heights[0]);
            float* swiglu_out = poisoned(n_tokens * heights[0]);
            matmul_glu(*gpu, on_gpu[0].w, up_gpu, x_gpu, n_tokens, swiglu_out, swiglu_scratch,
                          Activations::Int8);
            EXPECT_LT(l2_relative_error(to_host(swiglu_out, swiglu_want.size()), swiglu_want), tolerance)
                << type_name(type) << " swiglu tokens=" << n_tokens;

            // The down product right after, on SwiGLU's output as the GPU left it: quantized by the
            // SwiGLU launch itself where that is one wave (PreparedInt8). The CPU quantizes its own
            // output, equal to about 1e-6, so a value on a rounding boundary can take the
            // neighbouring int8 code (as with the folded norm below).
            std::vector<float> down_want(n_tokens * down_rows);
            matmul(cpu, down, swiglu_want.data(), n_tokens, down_want.data(), reference);
            float* down_out = poisoned(n_tokens * down_rows);
            matmul(*gpu, down_gpu, swiglu_out, n_tokens, down_out, Activations::Int8);
            EXPECT_LT(l2_relative_error(to_host(down_out, down_want.size()), down_want), n_tokens == 1 ? 5e-3 : float_tolerance)
                << type_name(type) << " down after swiglu, tokens=" << n_tokens;
        }
}

// compute::matmul_rows on the GPU (the server's Single rows): one launch for all the rows, each
// row's output the same bits as matmul of that row alone (one token, int8 activations) whatever
// the number of rows, with and without the folded RMSNorm (its output rows too), three outputs
// of one type in a launch (the middle one accumulating), and near the CPU's. Shapes of one wave
// and of several (two rows a warp), 1 to 41 rows (from 4, a warp's weight rows serve several;
// 250 of them: a warp's four rows past the end; 18 blocks a row leave lanes without blocks, 88
// give lanes two or three), every type of the int8 kernels.
TEST_F(CudaOps, MatmulRowsAreEachRowAlone) {
    struct Shape {
        size_t cols, heights[3];
    };
    for (const Shape& shape : {Shape{576, {576, 192, 192}}, Shape{2816, {5632, 250, 64}}})
        for (GGMLType type : {GGMLType::Q4_0, GGMLType::Q4_1, GGMLType::Q5_0, GGMLType::Q8_0, GGMLType::Q4_K,
                               GGMLType::Q5_K, GGMLType::Q6_K, GGMLType::MXFP4})
            for (bool with_norm : {false, true}) {
                const size_t cols = shape.cols, n_rows = 41;
                if (cols % type_traits(type).block_size != 0) continue;
                SCOPED_TRACE(testing::Message() << type_name(type) << ", " << cols << " columns" << (with_norm ? ", norm" : ""));
                const auto x = random(n_rows * cols);
                const auto norm_weight = random(cols);
                const float* x_gpu = to_device(x);
                std::vector<WeightMatrix> w_cpu, w_gpu;
                std::vector<std::vector<std::byte>> weights;
                std::vector<std::vector<float>> y0;
                for (size_t rows : shape.heights) {
                    weights.push_back(random_weights(type, rows, cols, rng));
                    w_cpu.push_back({type, rows, cols, weights.back().data()});
                    w_gpu.push_back(placed(type, rows, cols, weights.back()));
                    y0.push_back(random(n_rows * rows));
                }
                // Every output of n rows from row `first` on, into fresh device memory.
                const auto run = [&](size_t first, size_t n, bool alone) {
                    std::vector<MatmulOutput> outputs;
                    for (size_t i = 0; i < 3; ++i) {
                        const size_t rows = shape.heights[i];
                        std::vector<float> init(y0[i].begin() + first * rows, y0[i].begin() + (first + n) * rows);
                        outputs.push_back({w_gpu[i], i == 1 ? to_device(init) : poisoned(n * rows), i == 1});
                    }
                    const RmsNorm norm{to_device(norm_weight), 1e-5f, poisoned(n * cols)};
                    if (alone) matmul(*gpu, outputs, x_gpu + first * cols, 1, Activations::Int8, with_norm ? &norm : nullptr);
                    else matmul_rows(*gpu, outputs, x_gpu + first * cols, n, Activations::Int8, with_norm ? &norm : nullptr);
                    std::vector<std::vector<float>> got;
                    for (size_t i = 0; i < 3; ++i) got.push_back(to_host(outputs[i].y, n * shape.heights[i]));
                    if (with_norm) got.push_back(to_host(norm.out, n * cols));
                    return got;
                };
                // Every row of a call of all 41 (the tensor-core kernel's groups of 16 rows of x:
                // two and a partial one), of a call of 8 (its groups of 8), of 5 (the CUDA-core
                // kernel's rows of x, one partial group) and of 3 (one row's kernel each).
                const auto all = run(0, n_rows, false), eight = run(30, 8, false), five = run(3, 5, false),
                           three = run(20, 3, false);
                for (size_t first = 0; first < n_rows; ++first) {
                    const auto alone = run(first, 1, true), one_row = run(first, 1, false);
                    for (size_t i = 0; i < all.size(); ++i) {
                        const size_t width = i < 3 ? shape.heights[i] : cols;
                        auto row_of = [&](const std::vector<float>& y, size_t r) {
                            return std::vector<float>(y.begin() + r * width, y.begin() + (r + 1) * width);
                        };
                        EXPECT_EQ(row_of(all[i], first), alone[i]) << "row " << first << ", output " << i << " (3: the norm's)";
                        EXPECT_EQ(one_row[i], alone[i]) << "row " << first << ", output " << i;
                        if (first >= 3 && first < 8) {
                            EXPECT_EQ(row_of(five[i], first - 3), alone[i]) << "row " << first << " of 5";
                        }
                        if (first >= 30 && first < 38) {
                            EXPECT_EQ(row_of(eight[i], first - 30), alone[i]) << "row " << first << " of 8";
                        }
                        if (first >= 20 && first < 23) {
                            EXPECT_EQ(row_of(three[i], first - 20), alone[i]) << "row " << first << " of 3";
                        }
                    }
                }
                // Near the CPU's rows (its int8 products of each row alone).
                for (size_t i = 0; i < 3; ++i) {
                    std::vector<float> want = y0[i];
                    std::vector<float> normalized(n_rows * cols);
                    const RmsNorm norm{norm_weight.data(), 1e-5f, normalized.data()};
                    const MatmulOutput out{w_cpu[i], want.data(), i == 1};
                    matmul_rows(cpu, std::span(&out, 1), x.data(), n_rows, Activations::Int8, with_norm ? &norm : nullptr);
                    EXPECT_LT(l2_relative_error(all[i], want), 5e-3) << "output " << i;
                }
            }
}

// compute::matmul_row_tiles on the GPU (a batched pass's Tiled rows, cuBLAS calls of
// row_tile_rows rows each): every tile of a call the same bits as that tile in a call of its own,
// with and without the folded RMSNorm (its output rows too), two outputs in a call (the second
// accumulating), and near the CPU's float products. Written after the batched CUDA pass gave wrong
// logits on an H100 (session 19): this op had no test of its own.
TEST_F(CudaOps, RowTilesAreEachTileAlone) {
    const size_t tile = row_tile_rows(Device::CUDA), n_rows = 3 * tile, cols = 576, heights[2] = {192, 576};
    for (GGMLType type : {GGMLType::F32, GGMLType::Q4_1, GGMLType::Q8_0, GGMLType::Q6_K})
        for (bool with_norm : {false, true}) {
            if (cols % type_traits(type).block_size != 0) continue;
            SCOPED_TRACE(testing::Message() << type_name(type) << (with_norm ? ", norm" : ""));
            const auto x = random(n_rows * cols), norm_weight = random(cols);
            const float* x_gpu = to_device(x);
            std::vector<std::vector<std::byte>> weights;
            std::vector<WeightMatrix> w_cpu, w_gpu;
            std::vector<std::vector<float>> y0;
            for (size_t rows : heights) {
                weights.push_back(random_weights(type, rows, cols, rng));
                w_cpu.push_back({type, rows, cols, weights.back().data()});
                w_gpu.push_back(placed(type, rows, cols, weights.back()));
                y0.push_back(random(n_rows * rows));
            }
            // Both outputs of n rows from row `first` on (n a multiple of the tile), into fresh memory.
            const auto run = [&](size_t first, size_t n) {
                std::vector<MatmulOutput> outputs;
                for (size_t i = 0; i < 2; ++i) {
                    std::vector<float> init(y0[i].begin() + first * heights[i], y0[i].begin() + (first + n) * heights[i]);
                    outputs.push_back({w_gpu[i], i == 1 ? to_device(init) : poisoned(n * heights[i]), i == 1});
                }
                const RmsNorm norm{to_device(norm_weight), 1e-5f, poisoned(n * cols)};
                matmul_row_tiles(*gpu, outputs, x_gpu + first * cols, n, Activations::Int8, with_norm ? &norm : nullptr);
                std::vector<std::vector<float>> got;
                for (size_t i = 0; i < 2; ++i) got.push_back(to_host(outputs[i].y, n * heights[i]));
                if (with_norm) got.push_back(to_host(norm.out, n * cols));
                return got;
            };
            const auto all = run(0, n_rows);
            for (size_t first = 0; first < n_rows; first += tile) {
                const auto alone = run(first, tile);
                for (size_t i = 0; i < all.size(); ++i) {
                    const size_t width = i < 2 ? heights[i] : cols;
                    const std::vector<float> in_all(all[i].begin() + first * width, all[i].begin() + (first + tile) * width);
                    EXPECT_EQ(in_all, alone[i]) << "tile from row " << first << ", output " << i << " (2: the norm's)";
                }
            }
            for (size_t i = 0; i < 2; ++i) {
                std::vector<float> want = y0[i], normalized(n_rows * cols);
                const RmsNorm norm{norm_weight.data(), 1e-5f, normalized.data()};
                const MatmulOutput out{w_cpu[i], want.data(), i == 1};
                matmul(cpu, std::span(&out, 1), x.data(), n_rows, Activations::Float32, with_norm ? &norm : nullptr);
                EXPECT_LT(l2_relative_error(all[i], want), float_tolerance) << "output " << i;
            }
        }
}

// The int8 kernels' types must come through place_weights (planar); a raw copy of the file's
// bytes is refused by name instead of being read wrongly.
TEST_F(CudaOps, FileLayoutOfPlanarTypesIsRefused) {
    const auto weights = random_weights(GGMLType::Q4_0, 8, 64, rng);
    const WeightMatrix raw{GGMLType::Q4_0, 8, 64, to_device(weights)};
    float* y = poisoned(8);
    try {
        matmul(*gpu, raw, to_device(random(64)), 1, y, Activations::Int8);
        FAIL() << "a Q4_0 matrix in the file's layout was accepted";
    } catch (const std::invalid_argument& e) {
        EXPECT_NE(std::string(e.what()).find("place_weights"), std::string::npos) << e.what();
    }
}

// An RMSNorm on the products' input: normalized and quantized in one launch for a token (the
// normalized rows written too), a separate norm for twenty; plain products and SwiGLU.
TEST_F(CudaOps, NormFoldedIntoProductsMatchesCpu) {
    const size_t cols = 576, rows = 192;
    const auto weights = random_weights(GGMLType::Q4_0, rows, cols, rng), up_bytes = random_weights(GGMLType::Q4_0, rows, cols, rng);
    const WeightMatrix w{GGMLType::Q4_0, rows, cols, weights.data()}, up{GGMLType::Q4_0, rows, cols, up_bytes.data()};
    const WeightMatrix w_gpu = placed(GGMLType::Q4_0, rows, cols, weights), up_gpu = placed(GGMLType::Q4_0, rows, cols, up_bytes);
    const auto norm_weight = random(cols);
    for (size_t n_tokens : {size_t{1}, size_t{20}}) {
        // One token: the CPU normalizes in double, the GPU in float, so a value on a rounding
        // boundary can take the neighbouring int8 code: one step of its block, ~1e-3 of a product.
        const double tolerance = n_tokens == 1 ? 5e-3 : float_tolerance;
        // Several tokens: float16 products on the GPU, so the CPU's float ones are the reference.
        const Activations reference = n_tokens == 1 ? Activations::Int8 : Activations::Float32;
        const auto x = random(n_tokens * cols, 3.0f);
        std::vector<float> y_want(n_tokens * rows), xn_want(n_tokens * cols), swiglu_want(n_tokens * rows), scratch(n_tokens * rows);
        const RmsNorm on_cpu{norm_weight.data(), 1e-5f, xn_want.data()};
        const MatmulOutput out_cpu{w, y_want.data()};
        matmul(cpu, std::span(&out_cpu, 1), x.data(), n_tokens, reference, &on_cpu);
        matmul_glu(cpu, w, up, x.data(), n_tokens, swiglu_want.data(), scratch.data(), reference, &on_cpu);

        float* xn = poisoned(n_tokens * cols);
        const RmsNorm on_gpu{to_device(norm_weight), 1e-5f, xn};
        const MatmulOutput out_gpu{w_gpu, poisoned(n_tokens * rows)};
        float* x_gpu = to_device(x);
        matmul(*gpu, std::span(&out_gpu, 1), x_gpu, n_tokens, Activations::Int8, &on_gpu);
        EXPECT_LT(l2_relative_error(to_host(out_gpu.y, y_want.size()), y_want), tolerance) << "tokens=" << n_tokens;
        EXPECT_LT(l2_relative_error(to_host(xn, xn_want.size()), xn_want), 1e-6) << "tokens=" << n_tokens;
        float* swiglu_out = poisoned(n_tokens * rows);
        matmul_glu(*gpu, w_gpu, up_gpu, x_gpu, n_tokens, swiglu_out, poisoned(n_tokens * rows), Activations::Int8, &on_gpu);
        EXPECT_LT(l2_relative_error(to_host(swiglu_out, swiglu_want.size()), swiglu_want), tolerance) << "tokens=" << n_tokens;
    }
}

// A residual product handed the next RMSNorm (matmul's next_norm) prepares it in its launch; the
// products after it, given that norm on its output, match the CPU's separate norm (int8 rounding,
// as above) and leave the norm's out unwritten, the sign that they took the prepared input.
// The residual product's input (att) comes from no kernel that quantized it, so its blocks quantize
// it themselves; 28,672 values (Llama 2 70B's feed-forward width) take them two passes.
TEST_F(CudaOps, ResidualProductPreparesNextNorm) {
    for (auto [width, inner] : {std::pair<size_t, size_t>{576, 1536}, {4096, 1536}, {576, 28672}}) {
        const size_t rows = 192;
        const auto wo = random_weights(GGMLType::Q4_0, width, inner, rng), w2 = random_weights(GGMLType::Q4_0, rows, width, rng);
        const auto att = random(inner), residual = random(width, 3.0f), norm_weight = random(width);
        std::vector<float> x_want = residual, y_want(rows), xn_want(width);
        const MatmulOutput wo_cpu{{GGMLType::Q4_0, width, inner, wo.data()}, x_want.data(), true};
        matmul(cpu, std::span(&wo_cpu, 1), att.data(), 1, Activations::Int8);
        const RmsNorm norm_cpu{norm_weight.data(), 1e-5f, xn_want.data()};
        const MatmulOutput w2_cpu{{GGMLType::Q4_0, rows, width, w2.data()}, y_want.data()};
        matmul(cpu, std::span(&w2_cpu, 1), x_want.data(), 1, Activations::Int8, &norm_cpu);

        float* x = to_device(residual);
        const RmsNorm norm_gpu{to_device(norm_weight), 1e-5f, poisoned(width)};
        const MatmulOutput wo_gpu{placed(GGMLType::Q4_0, width, inner, wo), x, true};
        const MatmulOutput w2_gpu{placed(GGMLType::Q4_0, rows, width, w2), poisoned(rows)};
        const float* att_gpu = to_device(att);
        matmul(*gpu, std::span(&wo_gpu, 1), att_gpu, 1, Activations::Int8, nullptr, &norm_gpu);
        matmul(*gpu, std::span(&w2_gpu, 1), x, 1, Activations::Int8, &norm_gpu);
        EXPECT_LT(l2_relative_error(to_host(x, width), x_want), 1e-5) << width << " x " << inner;
        EXPECT_LT(l2_relative_error(to_host(w2_gpu.y, rows), y_want), 5e-3) << width << " x " << inner;
        EXPECT_TRUE(std::isnan(to_host(norm_gpu.out, 1)[0])) << width << ": the products normalized x themselves";
    }
}

// A post-norm's residual add handed the next RMSNorm (add_rms_norm's next_norm) prepares it in its
// launch, as the residual product above does: x as the CPU's add, the products after it as the
// CPU's separate norm and int8 products (int8 rounding), the norm's out unwritten. Widths: Gemma 3
// 270M's 640 (one float4 a thread), 2,880 (gpt-oss: a warp's last float4s past the row) and 4,096.
TEST_F(CudaOps, PostNormAddPreparesNextNorm) {
    for (size_t width : {640, 2880, 4096}) {
        const size_t rows = 96;
        const auto w = random_weights(GGMLType::Q8_0, rows, width, rng);
        const auto o = random(width, 2.0f), residual = random(width, 3.0f), post_weight = random(width), next_weight = random(width);
        std::vector<float> x_want = residual, y_want(rows), xn_want(width);
        add_rms_norm(cpu, x_want.data(), o.data(), post_weight.data(), 1, width, 1e-6f);
        const RmsNorm norm_cpu{next_weight.data(), 1e-6f, xn_want.data()};
        const MatmulOutput w_cpu{{GGMLType::Q8_0, rows, width, w.data()}, y_want.data()};
        matmul(cpu, std::span(&w_cpu, 1), x_want.data(), 1, Activations::Int8, &norm_cpu);

        float* x = to_device(residual);
        const RmsNorm norm_gpu{to_device(next_weight), 1e-6f, poisoned(width)};
        const MatmulOutput w_gpu{placed(GGMLType::Q8_0, rows, width, w), poisoned(rows)};
        add_rms_norm(*gpu, x, to_device(o), to_device(post_weight), 1, width, 1e-6f, &norm_gpu);
        matmul(*gpu, std::span(&w_gpu, 1), x, 1, Activations::Int8, &norm_gpu);
        EXPECT_LT(l2_relative_error(to_host(x, width), x_want), float_tolerance) << width;
        EXPECT_LT(l2_relative_error(to_host(w_gpu.y, rows), y_want), 5e-3) << width;
        EXPECT_TRUE(std::isnan(to_host(norm_gpu.out, 1)[0])) << width << ": the products normalized x themselves";
    }
}

// rope_store_at: q and k rotated at the device's position, k and v written to that cache row; a
// partial rotation (the last dimensions of k copied as they are), both pairings, both cache types.
TEST_F(CudaOps, RopeStoreAtMatchesCpu) {
    const size_t n_head = 6, n_head_kv = 2, head_dim = 64, n_ctx = 40, width = n_head_kv * head_dim;
    const int32_t position = 33;
    for (KvType type : {KvType::F32, KvType::F16})
    for (auto pairing : {RopeParams::Pairing::Adjacent, RopeParams::Pairing::Halves}) {
        SCOPED_TRACE(kv_type_name(type));
        RopeParams params;
        params.pairing = pairing;
        params.n_rot = 48;
        const auto q = random(n_head * head_dim), k = random(width), v = random(width);
        const auto keys = random(n_ctx * width), values = random(n_ctx * width);
        auto q_want = q, k_want = k;
        const CacheRows keys_want = cache_table(keys, type, false), values_want = cache_table(values, type, false);
        rope_store_at(cpu, q_want.data(), n_head, k_want.data(), v.data(), n_head_kv, head_dim, &position, params, keys_want,
                      values_want);
        float *q_gpu = to_device(q), *k_gpu = to_device(k);
        const CacheRows keys_gpu = cache_table(keys, type, true), values_gpu = cache_table(values, type, true);
        rope_store_at(*gpu, q_gpu, n_head, k_gpu, to_device(v), n_head_kv, head_dim, to_device(std::vector<int32_t>{position}),
                      params, keys_gpu, values_gpu);
        EXPECT_LT(l2_relative_error(to_host(q_gpu, q.size()), q_want), float_tolerance);
        EXPECT_LT(l2_relative_error(to_host(k_gpu, k.size()), k_want), float_tolerance);
        EXPECT_LT(l2_relative_error(cache_values(keys_gpu, keys.size(), true), cache_values(keys_want, keys.size(), false)),
                  float_tolerance);
        EXPECT_EQ(cache_values(values_gpu, values.size(), true), cache_values(values_want, values.size(), false));
    }
}

// project_rope_store_at: a decode step's Q, K and V products with RoPE and the cache write. With
// int8 activations and Adjacent pairs the GPU does all of it in the products' launch; it must
// agree with its own products followed by rope_store_at (the other route, tight) and with the CPU
// (int8 rounding, as above). Halves pairs and float activations take the two-launch route. Two
// shapes: SmolLM2's heads (one wave of blocks, a pair a warp) and Llama 2 7B's (on an H100 one
// wave of two pairs a warp in Q4_0, several waves of a pair a warp in Q8_0).
TEST_F(CudaOps, ProjectRopeStoreAtMatchesSeparateSteps) {
    struct Heads {
        size_t n_head, n_head_kv, head_dim, cols;
    };
    const size_t n_ctx = 40;
    const int32_t position = 29;
    for (const Heads& heads : {Heads{6, 2, 64, 576}, Heads{32, 32, 128, 4096}})
    for (GGMLType type : {GGMLType::Q4_0, GGMLType::Q8_0, GGMLType::Q4_K, GGMLType::Q6_K})
    for (auto pairing : {RopeParams::Pairing::Adjacent, RopeParams::Pairing::Halves})
    for (size_t n_rot : {heads.head_dim, heads.head_dim * 3 / 4})
    for (Activations activations : {Activations::Int8, Activations::Float32})
    for (KvType cache_type : {KvType::F32, KvType::F16}) {
        const auto [n_head, n_head_kv, head_dim, cols] = heads;
        if (cols % type_traits(type).block_size != 0) continue;
        if (cache_type == KvType::F16 && activations != Activations::Int8) continue;   // the fused launch's store
        const size_t q_rows = n_head * head_dim, kv_rows = n_head_kv * head_dim;
        SCOPED_TRACE(std::string(type_name(type)) + " heads of " + std::to_string(head_dim) +
                     (pairing == RopeParams::Pairing::Adjacent ? " adjacent" : " halves") + " n_rot " + std::to_string(n_rot) +
                     (activations == Activations::Int8 ? " int8" : " float") + " " + std::string(kv_type_name(cache_type)));
        RopeParams params;
        params.pairing = pairing;
        params.n_rot = n_rot;
        params.freq_base = 10000.0;
        const auto wq = random_weights(type, q_rows, cols, rng), wk = random_weights(type, kv_rows, cols, rng),
                   wv = random_weights(type, kv_rows, cols, rng);
        const auto x = random(cols, 3.0f), norm_weight = random(cols);
        const auto keys = random(n_ctx * kv_rows), values = random(n_ctx * kv_rows);

        std::vector<float> q_want(q_rows), k_want(kv_rows), v_want(kv_rows), xn_want(cols);
        const CacheRows keys_want = cache_table(keys, cache_type, false), values_want = cache_table(values, cache_type, false);
        const MatmulOutput qkv_cpu[] = {{{type, q_rows, cols, wq.data()}, q_want.data()},
                                        {{type, kv_rows, cols, wk.data()}, k_want.data()},
                                        {{type, kv_rows, cols, wv.data()}, v_want.data()}};
        const RmsNorm norm_cpu{norm_weight.data(), 1e-5f, xn_want.data()};
        project_rope_store_at(cpu, qkv_cpu, x.data(), activations, &norm_cpu, n_head, n_head_kv, head_dim, &position,
                              params, keys_want, values_want);

        const MatmulOutput qkv_gpu[] = {{placed(type, q_rows, cols, wq), poisoned(q_rows)},
                                        {placed(type, kv_rows, cols, wk), poisoned(kv_rows)},
                                        {placed(type, kv_rows, cols, wv), poisoned(kv_rows)}};
        const RmsNorm norm_gpu{to_device(norm_weight), 1e-5f, poisoned(cols)};
        const int32_t* position_gpu = to_device(std::vector<int32_t>{position});
        float* x_gpu = to_device(x);
        const CacheRows keys_gpu = cache_table(keys, cache_type, true), values_gpu = cache_table(values, cache_type, true);
        project_rope_store_at(*gpu, qkv_gpu, x_gpu, activations, &norm_gpu, n_head, n_head_kv, head_dim, position_gpu,
                              params, keys_gpu, values_gpu);
        const auto q_got = to_host(qkv_gpu[0].y, q_rows), k_got = to_host(qkv_gpu[1].y, kv_rows);
        const auto keys_got = cache_values(keys_gpu, keys.size(), true), values_got = cache_values(values_gpu, values.size(), true);

        // The GPU's two-launch route on the same inputs.
        const CacheRows keys_two = cache_table(keys, cache_type, true), values_two = cache_table(values, cache_type, true);
        matmul(*gpu, std::span<const MatmulOutput>(qkv_gpu), x_gpu, 1, activations, &norm_gpu);
        rope_store_at(*gpu, qkv_gpu[0].y, n_head, qkv_gpu[1].y, qkv_gpu[2].y, n_head_kv, head_dim, position_gpu, params,
                      keys_two, values_two);
        EXPECT_LT(l2_relative_error(q_got, to_host(qkv_gpu[0].y, q_rows)), 1e-6);
        EXPECT_LT(l2_relative_error(k_got, to_host(qkv_gpu[1].y, kv_rows)), 1e-6);
        EXPECT_LT(l2_relative_error(keys_got, cache_values(keys_two, keys.size(), true)), 1e-6);
        EXPECT_LT(l2_relative_error(values_got, cache_values(values_two, values.size(), true)), 1e-6);

        const double tolerance = activations == Activations::Int8 ? 5e-3 : float_tolerance;
        EXPECT_LT(l2_relative_error(q_got, q_want), tolerance);
        EXPECT_LT(l2_relative_error(k_got, k_want), tolerance);
        EXPECT_LT(l2_relative_error(keys_got, cache_values(keys_want, keys.size(), false)), tolerance);
        EXPECT_LT(l2_relative_error(values_got, cache_values(values_want, values.size(), false)), tolerance);
        // Only the position's cache row changes.
        const auto keys_before = cache_values(cache_table(keys, cache_type, false), keys.size(), false);
        for (size_t i = 0; i < keys.size(); ++i) {
            if (i / kv_rows != size_t(position)) {
                ASSERT_EQ(keys_got[i], keys_before[i]) << i;
            }
        }
    }
}

struct AttentionCase {
    size_t n_head, n_head_kv, head_dim, n_tokens, first_position;
};

class CudaAttention : public CudaOps, public ::testing::WithParamInterface<AttentionCase> {};

// A prompt over a float16 cache on the tensor cores (flash_attention.cu), and a decoding step over a
// long one, round Q and the softmax's weights to float16 as well: their budget against the CPU over
// the same cached values.
constexpr double flash_attention_tolerance = 1e-3;

// Both cache types: the CPU over the same float16 values is the reference for the float16 tables.
TEST_P(CudaAttention, MatchesCpu) {
    const auto [n_head, n_head_kv, head_dim, n_tokens, first_position] = GetParam();
    AttentionShape shape{n_head, n_head_kv, head_dim, n_head_kv * head_dim + 8, 1.0f / std::sqrt(float(head_dim))};
    const size_t n_kv = first_position + n_tokens;
    const auto q = random(n_tokens * n_head * head_dim, 2.0f);
    const auto keys = random(n_kv * shape.kv_stride, 2.0f), values = random(n_kv * shape.kv_stride);
    for (KvType type : {KvType::F32, KvType::F16}) {
        SCOPED_TRACE(kv_type_name(type));
        const CacheRows keys_gpu = cache_table(keys, type, true), values_gpu = cache_table(values, type, true);
        std::vector<float> want(q.size());
        attention(cpu, q.data(), cache_table(keys, type, false), cache_table(values, type, false), n_tokens, first_position,
                  shape, want.data());
        float* out = poisoned(q.size());
        attention(*gpu, to_device(q), keys_gpu, values_gpu, n_tokens, first_position, shape, out);
        const bool tensor_cores = type == KvType::F16 && n_tokens >= 16 && (head_dim == 64 || head_dim == 128);
        const double error = l2_relative_error(to_host(out, q.size()), want);
        EXPECT_LT(error, tensor_cores ? flash_attention_tolerance : float_tolerance);
        if (tensor_cores) RecordProperty("flash_attention_error", std::to_string(error));
        if (n_tokens != 1) continue;
        // The decode step's form: the position read on the device, the launch sized for a longer
        // cache (blocks of splits the position does not need return). Twice: the split-KV merge's
        // counters must be back at zero after each launch.
        const int32_t position = int32_t(first_position);
        for (int run = 0; run < 2; ++run) {
            float* out_at = poisoned(q.size());
            attention_at(*gpu, to_device(q), keys_gpu, values_gpu, to_device(std::vector<int32_t>{position}), n_kv + 1000, shape,
                         out_at);
            // From 1,024 positions, over a float16 cache: the tensor cores' decoding kernel.
            const bool decode_tensor_cores = type == KvType::F16 && n_kv >= 1024 && n_head / n_head_kv <= 16 &&
                                             (head_dim == 64 || head_dim == 128);
            const double error_at = l2_relative_error(to_host(out_at, q.size()), want);
            EXPECT_LT(error_at, decode_tensor_cores ? flash_attention_tolerance : float_tolerance) << "attention_at, run " << run;
            if (decode_tensor_cores) RecordProperty("flash_decode_error", std::to_string(error_at));
        }
    }
}

INSTANTIATE_TEST_SUITE_P(Shapes, CudaAttention,
                         ::testing::Values(AttentionCase{9, 3, 64, 1, 0},       // SmolLM2, first token
                                           AttentionCase{9, 3, 64, 1, 40},      // two of a block's warps without a tile
                                           AttentionCase{9, 3, 64, 1, 100},     // four warps, the last tile partial
                                           AttentionCase{9, 3, 64, 1, 300},     // SmolLM2 decoding: split positions
                                           AttentionCase{32, 4, 64, 1, 2000},   // TinyLlama decoding
                                           AttentionCase{32, 32, 128, 1, 700},  // Llama 2 7B decoding
                                           AttentionCase{32, 32, 128, 1, 0},    // heads of 128 (two lanes a key), first token
                                           AttentionCase{32, 32, 128, 1, 10},   // this row in the first warp's tile of 16
                                           AttentionCase{32, 32, 128, 1, 40},   // the same in the third warp's tile
                                           AttentionCase{32, 32, 128, 1, 127},  // the eighth warp's last position
                                           AttentionCase{32, 32, 128, 1, 200},  // two splits, the second partial
                                           AttentionCase{9, 3, 64, 37, 5},      // a prompt after a few tokens
                                           AttentionCase{32, 32, 128, 100, 0},  // a Llama 2 prompt
                                           AttentionCase{32, 4, 64, 64, 30},    // a TinyLlama prompt after a few tokens
                                           AttentionCase{12, 12, 64, 19, 40},   // GPT-2
                                           // Prompts of 16 tokens or more: over a float16 cache, the
                                           // tensor cores' kernel (64 rows a block, 64 positions a tile)
                                           AttentionCase{32, 8, 128, 300, 1000},  // Llama 3 8B, tiles across the diagonal
                                           AttentionCase{12, 4, 128, 70, 200},    // groups of 3: blocks end mid-token
                                           AttentionCase{16, 2, 64, 33, 0},       // groups of 8, a prompt from the start
                                           AttentionCase{8, 8, 64, 16, 63},       // the shortest prompt, one tile boundary
                                           AttentionCase{16, 1, 256, 3, 90},    // one KV head, wide heads
                                           // Heads of 256 decoding (Gemma 3): 8 warps of 8 positions a
                                           // block, split by 64 positions, at any cache length
                                           AttentionCase{4, 1, 256, 1, 0},
                                           AttentionCase{4, 1, 256, 1, 60},     // this row in the last warp's tile
                                           AttentionCase{4, 1, 256, 1, 100},    // two splits, the second partial
                                           AttentionCase{8, 2, 256, 1, 3000},   // a long cache: the same kernel, split
                                           AttentionCase{6, 2, 32, 1, 50},      // decoding, heads of 32: the general kernel
                                           AttentionCase{10, 5, 128, 1, 31},    // grouped heads of 128
                                           // Long caches: the grouped decode kernel (from 1,024 positions;
                                           // below it, the per-head kernel of the same launch)
                                           AttentionCase{9, 3, 64, 1, 1022},    // the per-head kernel's last
                                           AttentionCase{9, 3, 64, 1, 1023},    // the grouped kernel's first
                                           AttentionCase{32, 8, 128, 1, 5000},  // Llama 3 8B
                                           AttentionCase{32, 32, 128, 1, 3000}, // no groups (Llama 2 7B)
                                           AttentionCase{16, 2, 64, 1, 2500},   // groups of 8
                                           AttentionCase{12, 4, 128, 1, 1500},  // groups of 3, rounded up to 4
                                           AttentionCase{32, 2, 64, 1, 1500})); // groups of 16: the per-head kernel

// Sliding windows over a prompt, against the CPU: a prompt within the window's first positions
// (causal attention: the prompt kernels), one the window cuts (windowed_attention_kernel), on a
// plain table and on a ring (position p at rows p % ring and p % ring + ring).
TEST_F(CudaOps, WindowedPromptMatchesCpu) {
    struct Case {
        size_t n_head, n_head_kv, head_dim, n_tokens, first_position, window, ring;
    };
    for (const Case& c : {Case{4, 1, 256, 40, 0, 64, 0},       // Gemma 3's heads, within the window
                          Case{4, 1, 256, 40, 30, 64, 0},      // the window cuts rows
                          Case{4, 1, 256, 48, 16, 64, 127},    // a ring, within the window
                          Case{4, 1, 256, 48, 40, 64, 127},    // a ring, cut
                          Case{8, 2, 64, 20, 4, 32, 0},        // heads of 64 (float16: the tensor cores)
                          Case{8, 2, 64, 20, 20, 32, 63}}) {   // the same, cut, on a ring
        SCOPED_TRACE(testing::Message() << "tokens " << c.n_tokens << " from " << c.first_position << ", window "
                                        << c.window << ", ring " << c.ring << ", head_dim " << c.head_dim);
        AttentionShape shape{c.n_head, c.n_head_kv, c.head_dim, c.n_head_kv * c.head_dim, 1.0f / std::sqrt(float(c.head_dim)),
                             c.window, c.ring};
        const size_t n_rows = c.ring ? 2 * c.ring : c.first_position + c.n_tokens;
        const auto q = random(c.n_tokens * c.n_head * c.head_dim, 2.0f);
        const auto keys = random(n_rows * shape.kv_stride, 2.0f), values = random(n_rows * shape.kv_stride);
        for (KvType type : {KvType::F32, KvType::F16}) {
            SCOPED_TRACE(kv_type_name(type));
            std::vector<float> want(q.size());
            attention(cpu, q.data(), cache_table(keys, type, false), cache_table(values, type, false), c.n_tokens,
                      c.first_position, shape, want.data());
            float* out = poisoned(q.size());
            attention(*gpu, to_device(q), cache_table(keys, type, true), cache_table(values, type, true), c.n_tokens,
                      c.first_position, shape, out);
            EXPECT_LT(l2_relative_error(to_host(out, q.size()), want),
                      type == KvType::F16 ? flash_attention_tolerance : float_tolerance);
        }
    }
}

// norm_rope_store_at, a decode step's QK-norm, RoPE and cache stores in one launch, against the
// CPU's separate ops: Gemma 3's heads of 256 over one KV head in a ring (norms, rotation, both ring
// rows), Qwen3's (norms, NeoX pairing, a full layer), a NoPE layer with norms, a partial rotation
// without norms; both cache types.
TEST_F(CudaOps, NormRopeStoreAtMatchesCpu) {
    struct Case {
        size_t n_head, n_head_kv, head_dim, n_rot, ring;
        bool norms, rope;
        RopeParams::Pairing pairing;
    };
    using Pairing = RopeParams::Pairing;
    const int32_t position = 700;
    for (const Case& c : {Case{4, 1, 256, 256, 639, true, true, Pairing::Halves}, Case{16, 8, 128, 128, 0, true, true, Pairing::Halves},
                          Case{8, 2, 64, 64, 0, true, false, Pairing::Adjacent}, Case{6, 2, 64, 48, 0, false, true, Pairing::Adjacent}}) {
        SCOPED_TRACE(testing::Message() << c.n_head << " heads over " << c.n_head_kv << " of " << c.head_dim << ", n_rot "
                                        << c.n_rot << ", ring " << c.ring << (c.norms ? ", norms" : "") << (c.rope ? "" : ", NoPE"));
        const size_t width = c.n_head_kv * c.head_dim, n_rows = c.ring ? 2 * c.ring : 1024;
        RopeParams rope;
        rope.pairing = c.pairing, rope.n_rot = c.n_rot, rope.freq_base = 1e6;
        const auto q = random(c.n_head * c.head_dim, 3.0f), k = random(width, 3.0f), v = random(width);
        const auto q_norm = random(c.head_dim), k_norm = random(c.head_dim);
        const auto keys = random(n_rows * width), values = random(n_rows * width);
        for (KvType type : {KvType::F32, KvType::F16}) {
            SCOPED_TRACE(kv_type_name(type));
            auto q_want = q, k_want = k;
            const CacheRows keys_want = cache_table(keys, type, false), values_want = cache_table(values, type, false);
            norm_rope_store_at(cpu, q_want.data(), c.n_head, k_want.data(), v.data(), c.n_head_kv, c.head_dim, &position,
                               c.rope ? &rope : nullptr, c.norms ? HeadNorms{q_norm.data(), k_norm.data(), 1e-6f} : HeadNorms{},
                               keys_want, values_want, c.ring);
            float *q_gpu = to_device(q), *k_gpu = to_device(k);
            const CacheRows keys_gpu = cache_table(keys, type, true), values_gpu = cache_table(values, type, true);
            norm_rope_store_at(*gpu, q_gpu, c.n_head, k_gpu, to_device(v), c.n_head_kv, c.head_dim,
                               to_device(std::vector<int32_t>{position}), c.rope ? &rope : nullptr,
                               c.norms ? HeadNorms{to_device(q_norm), to_device(k_norm), 1e-6f} : HeadNorms{}, keys_gpu,
                               values_gpu, c.ring);
            EXPECT_LT(l2_relative_error(to_host(q_gpu, q.size()), q_want), float_tolerance);
            EXPECT_LT(l2_relative_error(to_host(k_gpu, k.size()), k_want), float_tolerance);
            EXPECT_GT(l2_relative_error(q_want, q), 0.1) << "q must change";
            EXPECT_LT(l2_relative_error(cache_values(keys_gpu, keys.size(), true), cache_values(keys_want, keys.size(), false)),
                      float_tolerance);
            EXPECT_EQ(cache_values(values_gpu, values.size(), true), cache_values(values_want, values.size(), false));
        }
    }
}

// AttentionRows::Prompt, the server's prompt rows: each row the same bits in any call, however a
// prompt is cut into calls (1, 5, 17, 1, 5, 17, ... tokens, as after a reused prefix) and whatever
// the call's length; and near the CPU. Every kernel the rows reach: the general one with split
// positions (chunks from position 0; prompts past one chunk, so some rows merge splits and others
// do not), the tensor cores' over a float16 cache at any length (heads of 64), the general one for
// heads the tensor cores lack (40), sliding windows at every position (plain and ring), sinks.
TEST_F(CudaOps, PromptRowsAreTheSameInAnyCall) {
    struct Case {
        size_t n_head, n_head_kv, head_dim, n_tokens, first_position, window, ring;
        bool sinks;
    };
    for (const Case& c : {Case{9, 3, 64, 600, 0, 0, 0, false},      // SmolLM2's heads, three chunks
                          Case{6, 2, 40, 300, 200, 0, 0, false},    // heads of 40, after a cached prefix
                          Case{8, 2, 64, 300, 0, 0, 0, true},       // sinks, split and not
                          Case{4, 1, 256, 90, 0, 64, 0, false},     // Gemma 3's heads, a window from the start
                          Case{8, 2, 64, 100, 30, 32, 63, true}}) { // a ring, sinks
        SCOPED_TRACE(testing::Message() << c.n_head << " heads over " << c.n_head_kv << " of " << c.head_dim << ", tokens "
                                        << c.n_tokens << " from " << c.first_position << ", window " << c.window
                                        << ", ring " << c.ring << (c.sinks ? ", sinks" : ""));
        AttentionShape shape{c.n_head, c.n_head_kv, c.head_dim, c.n_head_kv * c.head_dim, 1.0f / std::sqrt(float(c.head_dim)),
                             c.window, c.ring};
        std::vector<float> sinks(c.n_head);
        for (size_t h = 0; h < c.n_head; ++h) sinks[h] = float(h % 3) - 1.0f;
        if (c.sinks) shape.sinks = to_device(sinks);
        const size_t n_rows = c.ring ? 2 * c.ring : c.first_position + c.n_tokens;
        const size_t row_width = c.n_head * c.head_dim;
        const auto q = random(c.n_tokens * row_width, 2.0f);
        const auto keys = random(n_rows * shape.kv_stride, 2.0f), values = random(n_rows * shape.kv_stride);
        const float* q_gpu = to_device(q);
        for (KvType type : {KvType::F32, KvType::F16}) {
            SCOPED_TRACE(kv_type_name(type));
            const CacheRows keys_gpu = cache_table(keys, type, true), values_gpu = cache_table(values, type, true);
            float* whole = poisoned(q.size());
            attention(*gpu, q_gpu, keys_gpu, values_gpu, c.n_tokens, c.first_position, shape, whole, AttentionRows::Prompt);
            float* cut = poisoned(q.size());
            for (size_t t = 0, part = 0; t < c.n_tokens; ++part) {
                const size_t n = std::min(c.n_tokens - t, std::array<size_t, 3>{1, 5, 17}[part % 3]);
                attention(*gpu, q_gpu + t * row_width, keys_gpu, values_gpu, n, c.first_position + t, shape,
                          cut + t * row_width, AttentionRows::Prompt);
                t += n;
            }
            const auto got = to_host(whole, q.size());
            EXPECT_EQ(to_host(cut, q.size()), got);
            AttentionShape on_cpu = shape;
            on_cpu.sinks = c.sinks ? sinks.data() : nullptr;
            std::vector<float> want(q.size());
            attention(cpu, q.data(), cache_table(keys, type, false), cache_table(values, type, false), c.n_tokens,
                      c.first_position, on_cpu, want.data(), AttentionRows::Prompt);
            EXPECT_LT(l2_relative_error(got, want), type == KvType::F16 ? flash_attention_tolerance : float_tolerance);
        }
    }
}

// gpt-oss's attention sinks (a logit per head in each softmax's denominator) on every CUDA path a
// gpt-oss layer reaches, against the CPU's (compute/attention.hpp; its own test holds it to
// float64): its shape (64 heads over 8 KV heads of 64; sliding layers of 128 as rings of 128 + 511
// rows), both cache types. Sinks of either sign, one far above every score (the rows' max is the
// sink's) and one far below; each case checks that the sinks change the CPU's result.
TEST_F(CudaOps, AttentionSinksMatchCpu) {
    struct Case {
        size_t n_head, n_head_kv, head_dim, n_tokens, first_position, window, ring;
        size_t max_positions;   // one token: attention_at too, sized for this cache
        const char* path;
    };
    for (const Case& c : {
             Case{64, 8, 64, 1, 50, 0, 0, 1024, "decode: the per-head kernel, one split; one token: the general kernel"},
             Case{64, 8, 64, 1, 700, 0, 0, 1024, "decode: the per-head kernel, split and merged"},
             Case{64, 8, 64, 1, 3000, 0, 0, 4096, "long cache: grouped (f32) or tensor-core (f16) decode, split and merged"},
             Case{64, 8, 64, 1, 1500, 0, 0, 4096, "long cache, fewer splits"},
             Case{8, 2, 32, 1, 200, 0, 0, 1024, "decode with heads of 32: the general kernel, split"},
             Case{64, 8, 64, 5, 300, 0, 0, 0, "a short prompt: the general kernel, split"},
             Case{64, 8, 64, 100, 40, 0, 0, 0, "prompt: tensor cores (f16), cuBLAS scores and softmax (f32)"},
             Case{8, 2, 32, 40, 10, 0, 0, 0, "prompt, heads of 32: cuBLAS over the widened f16 cache"},
             Case{64, 8, 64, 40, 0, 128, 0, 0, "sliding layer's prompt within the window: the causal kernels"},
             Case{64, 8, 64, 100, 200, 128, 0, 0, "sliding prompt the window cuts: the windowed kernel"},
             Case{64, 8, 64, 100, 600, 128, 639, 0, "ring prompt: the windowed kernel"},
             Case{64, 8, 64, 1, 700, 128, 639, 1024, "ring decode: the windowed kernel; at: the per-head decode kernel over the window"},
             Case{64, 8, 64, 1, 50, 128, 639, 1024, "ring decode within the window"},
             Case{4, 1, 256, 1, 1500, 512, 0, 2048, "Gemma 3's sliding decode, no ring: at: the per-head kernel of 256, split"},
             Case{4, 1, 256, 1, 1500, 512, 1023, 2048, "Gemma 3's ring decode: at: the per-head kernel of 256 over the window"},
             Case{4, 1, 256, 1, 300, 512, 1023, 2048, "Gemma 3's ring decode within the window"}}) {
        SCOPED_TRACE(testing::Message() << c.path << ": tokens " << c.n_tokens << " from " << c.first_position << ", heads "
                                        << c.n_head << "/" << c.n_head_kv << " of " << c.head_dim << ", window " << c.window
                                        << ", ring " << c.ring);
        AttentionShape shape{c.n_head, c.n_head_kv, c.head_dim, c.n_head_kv * c.head_dim, 1.0f / std::sqrt(float(c.head_dim)),
                             c.window, c.ring};
        const size_t n_rows = c.ring ? 2 * c.ring : c.first_position + c.n_tokens;
        const auto q = random(c.n_tokens * c.n_head * c.head_dim, 2.0f);
        const auto keys = random(n_rows * shape.kv_stride, 2.0f), values = random(n_rows * shape.kv_stride);
        auto sinks = random(c.n_head, 3.0f);
        sinks[0] = 40.0f, sinks[1] = -40.0f;
        for (KvType type : {KvType::F32, KvType::F16}) {
            SCOPED_TRACE(kv_type_name(type));
            const CacheRows keys_cpu = cache_table(keys, type, false), values_cpu = cache_table(values, type, false);
            std::vector<float> without(q.size()), want(q.size());
            attention(cpu, q.data(), keys_cpu, values_cpu, c.n_tokens, c.first_position, shape, without.data());
            AttentionShape with_sinks = shape;
            with_sinks.sinks = sinks.data();
            attention(cpu, q.data(), keys_cpu, values_cpu, c.n_tokens, c.first_position, with_sinks, want.data());
            EXPECT_GT(l2_relative_error(without, want), 1e-2) << "the sinks must weigh";

            with_sinks.sinks = to_device(sinks);
            const CacheRows keys_gpu = cache_table(keys, type, true), values_gpu = cache_table(values, type, true);
            float* out = poisoned(q.size());
            attention(*gpu, to_device(q), keys_gpu, values_gpu, c.n_tokens, c.first_position, with_sinks, out);
            EXPECT_LT(l2_relative_error(to_host(out, q.size()), want), flash_attention_tolerance) << "attention";
            if (!c.max_positions) continue;
            // The decode step's form, twice: the split merge's counters back at zero after each launch.
            for (int run = 0; run < 2; ++run) {
                float* out_at = poisoned(q.size());
                attention_at(*gpu, to_device(q), keys_gpu, values_gpu, to_device(std::vector<int32_t>{int32_t(c.first_position)}),
                             c.max_positions, with_sinks, out_at);
                EXPECT_LT(l2_relative_error(to_host(out_at, q.size()), want), flash_attention_tolerance) << "attention_at, run " << run;
            }
        }
    }
}

// The server's decode rows (compute::DecodeRows), each one token of its own slot: RoPE and the
// cache stores in one launch, attention in one launch for all of them. Each row's attention is the
// same bits whatever rows share its launch (here: all of them, then each alone), and near the
// CPU's; the stores land in each row's slot at its position (both rows of a ring), q and k rotated
// as the CPU rotates them. Cases: SmolLM2's heads (positions past one split and within it),
// Gemma 3's heads of 256 with a window of 512 over a full layer, a ring with sinks, a NoPE layer
// (no rotation), two rows of one slot at consecutive positions.
TEST_F(CudaOps, DecodeRowsAreEachRowAlone) {
    struct Case {
        size_t n_head, n_head_kv, head_dim, window, ring;
        bool sinks, rope;
        std::vector<int32_t> slot_positions;   // (slot, position) a row
    };
    const size_t n_slots = 4, n_ctx = 2048;
    for (const Case& c : {Case{9, 3, 64, 0, 0, false, true, {2, 700, 0, 5, 3, 1500, 1, 63, 1, 64}},
                          Case{4, 1, 256, 512, 0, false, true, {0, 1500, 3, 100, 1, 511, 2, 512}},
                          Case{8, 2, 64, 32, 63, true, true, {1, 200, 0, 10, 3, 62, 2, 63}},
                          Case{6, 2, 40, 0, 0, false, false, {3, 0, 0, 33, 2, 1000}}}) {
        SCOPED_TRACE(testing::Message() << c.n_head << " heads over " << c.n_head_kv << " of " << c.head_dim << ", window "
                                        << c.window << ", ring " << c.ring << (c.sinks ? ", sinks" : "")
                                        << (c.rope ? "" : ", no RoPE"));
        const size_t kv_width = c.n_head_kv * c.head_dim, q_width = c.n_head * c.head_dim;
        const size_t slot_stride = (c.ring ? 2 * c.ring : n_ctx) * kv_width, n_rows = c.slot_positions.size() / 2;
        AttentionShape shape{c.n_head, c.n_head_kv, c.head_dim, kv_width, 1.0f / std::sqrt(float(c.head_dim)), c.window, c.ring};
        std::vector<float> sinks(c.n_head);
        for (size_t h = 0; h < c.n_head; ++h) sinks[h] = float(h % 3) - 1.0f;
        if (c.sinks) shape.sinks = to_device(sinks);
        AttentionShape on_cpu = shape;
        on_cpu.sinks = c.sinks ? sinks.data() : nullptr;
        RopeParams rope;
        rope.n_rot = c.head_dim - 8;   // partial: k's last 8 dimensions stored as they are
        size_t max_length = 0;
        for (size_t r = 0; r < n_rows; ++r) max_length = std::max(max_length, size_t(c.slot_positions[2 * r + 1]) + 1);
        const int32_t* slot_positions = to_device(c.slot_positions);
        const DecodeRows rows{slot_positions, n_rows, max_length}, host_rows{c.slot_positions.data(), n_rows, max_length};
        const auto q = random(n_rows * q_width, 2.0f), k = random(n_rows * kv_width, 2.0f), v = random(n_rows * kv_width);
        const auto keys = random(n_slots * slot_stride, 2.0f), values = random(n_slots * slot_stride);
        for (KvType type : {KvType::F32, KvType::F16}) {
            SCOPED_TRACE(kv_type_name(type));
            const auto keys_before = cache_values(cache_table(keys, type, false), keys.size(), false);
            const CacheRows keys_gpu = cache_table(keys, type, true), values_gpu = cache_table(values, type, true);
            const CacheRows keys_cpu = cache_table(keys, type, false), values_cpu = cache_table(values, type, false);
            float *q_gpu = to_device(q), *k_gpu = to_device(k);
            auto q_cpu = q, k_cpu = k;
            decode_rows_rope_store(*gpu, q_gpu, c.n_head, k_gpu, to_device(v), c.n_head_kv, c.head_dim, rows,
                                   c.rope ? &rope : nullptr, keys_gpu, values_gpu, slot_stride, c.ring);
            decode_rows_rope_store(cpu, q_cpu.data(), c.n_head, k_cpu.data(), v.data(), c.n_head_kv, c.head_dim, host_rows,
                                   c.rope ? &rope : nullptr, keys_cpu, values_cpu, slot_stride, c.ring);
            EXPECT_LT(l2_relative_error(to_host(q_gpu, q.size()), q_cpu), float_tolerance);
            EXPECT_LT(l2_relative_error(to_host(k_gpu, k.size()), k_cpu), float_tolerance);
            if (!c.rope) {
                EXPECT_EQ(q_cpu, q) << "no rotation";
            }
            const auto stored_keys = cache_values(keys_gpu, keys.size(), true);
            EXPECT_LT(l2_relative_error(stored_keys, cache_values(keys_cpu, keys.size(), false)), float_tolerance);
            EXPECT_EQ(cache_values(values_gpu, values.size(), true), cache_values(values_cpu, values.size(), false));
            EXPECT_NE(stored_keys, keys_before) << "nothing stored";

            float* together = poisoned(q.size());
            decode_rows_attention(*gpu, q_gpu, keys_gpu, values_gpu, rows, slot_stride, shape, together);
            const auto got = to_host(together, q.size());
            for (size_t r = 0; r < n_rows; ++r) {
                float* alone = poisoned(q_width);
                const DecodeRows one{slot_positions + 2 * r, 1, size_t(c.slot_positions[2 * r + 1]) + 1};
                decode_rows_attention(*gpu, q_gpu + r * q_width, keys_gpu, values_gpu, one, slot_stride, shape, alone);
                EXPECT_TRUE(std::equal(got.begin() + r * q_width, got.begin() + (r + 1) * q_width, to_host(alone, q_width).begin()))
                    << "row " << r << " alone";
            }
            std::vector<float> want(q.size());
            decode_rows_attention(cpu, q_cpu.data(), keys_cpu, values_cpu, host_rows, slot_stride, on_cpu, want.data());
            EXPECT_LT(l2_relative_error(got, want), float_tolerance);
        }
    }
}

// gpt-oss's clamped SwiGLU against the CPU's, gate and up values on both sides of the clamps.
TEST_F(CudaOps, SwigluOaiMatchesCpu) {
    const size_t n = 5000;
    const auto gate = random(n, 6.0f), up = random(n, 6.0f);
    std::vector<float> want(n);
    swiglu_oai(cpu, gate.data(), up.data(), n, want.data());
    float* gate_gpu = to_device(gate);
    swiglu_oai(*gpu, gate_gpu, to_device(up), n, gate_gpu);   // in place, as the models run it
    EXPECT_LT(l2_relative_error(to_host(gate_gpu, n), want), 1e-6);
}

TEST_F(CudaOps, Elementwise) {
    const size_t n_rows = 3, n = 1000;
    const auto a = random(n_rows * n), b = random(n_rows * n), bias = random(n);
    auto want = a;
    add(cpu, want.data(), b.data(), want.size());
    add_bias(cpu, want.data(), bias.data(), n_rows, n);
    gelu(cpu, want.data(), want.size());
    swiglu(cpu, want.data(), b.data(), want.size(), want.data());
    float* x = to_device(a);
    const float* y = to_device(b);
    add(*gpu, x, y, a.size());
    add_bias(*gpu, x, to_device(bias), n_rows, n);
    gelu(*gpu, x, a.size());
    swiglu(*gpu, x, y, a.size(), x);
    EXPECT_LT(l2_relative_error(to_host(x, a.size()), want), float_tolerance);
}

// Three rows of a vocabulary: a tie (the first wins) in the first, the others' largest where the
// CPU finds it.
TEST_F(CudaOps, Argmax) {
    const size_t n = 49152;
    auto logits = random(3 * n);
    logits[31337] = 100.0f;
    logits[40000] = 100.0f;
    std::vector<int32_t> want(3);
    cpu::argmax(cpu, logits.data(), 3, n, want.data());
    EXPECT_EQ(want[0], 31337);
    int32_t* out = to_device(std::vector<int32_t>{-1, -1, -1});
    cuda::argmax(*gpu, to_device(logits), 3, n, out);
    EXPECT_EQ(to_host(out, 3), want);
}

// top_k against the CPU's (a partial sort): one warp (n <= 512, k <= 32: a router's choice), one
// block (n <= 2,048), two passes, three (Llama 3's vocabulary with k = 256); ties put the lower
// index first, -0 equals +0 (both in the top), -inf kept in order.
TEST_F(CudaOps, TopKMatchesCpu) {
    for (auto [n, k] : {std::pair<size_t, size_t>{128, 8}, {512, 32}, {96, 32}, {40, 40}, {1000, 1}, {2048, 40},
                        {49152, 40}, {49152, 256}, {128256, 256}, {5000, 250}}) {
        auto x = random(n);
        for (float& v : x) v -= 3.0f;   // so that the zeros below rank high
        for (size_t i = 0; i < n; i += 97) x[i] = -0.25f;   // many ties
        x[n / 2] = -0.0f, x[n / 3] = 0.0f, x[n - 1] = -INFINITY, x[1] = 5.0f, x[n - 2] = 5.0f;
        std::vector<int32_t> ids(k);
        std::vector<float> values(k);
        compute::top_k(cpu, x.data(), n, k, ids.data(), values.data());
        int32_t* ids_gpu = to_device(std::vector<int32_t>(k, -1));
        float* values_gpu = poisoned(k);
        for (int run = 0; run < 2; ++run) {   // the scratch from the first run reused
            compute::top_k(*gpu, to_device(x), n, k, ids_gpu, values_gpu);
            EXPECT_EQ(to_host(ids_gpu, k), ids) << n << " " << k;
            EXPECT_EQ(to_host(values_gpu, k), values) << n << " " << k;
        }
        EXPECT_EQ(ids[0], 1);
    }
}

// A mixture-of-experts layer's products for one token against the CPU's, the chosen experts read
// from device memory: one input for all (gate, up) and one per expert (down); planar types and K
// types with float and int8 activations (int8: the CPU's quantization, so the same codes, and two
// rows a warp where the chosen rows pass a wave of one a warp), float rows of a ragged width; then
// the weighted sum, with and without renormalization over the chosen.
TEST_F(CudaOps, ExpertProductsMatchCpu) {
    const size_t n_experts = 16, k = 4;
    const std::vector<int32_t> ids = {11, 0, 15, 3};
    struct Case {
        GGMLType type;
        size_t rows, cols;
    };
    for (auto [type, rows, cols] : {Case{GGMLType::Q8_0, 96, 512}, Case{GGMLType::Q4_K, 96, 512}, Case{GGMLType::Q6_K, 96, 768},
                                    Case{GGMLType::Q4_K, 1536, 2048}, Case{GGMLType::MXFP4, 96, 2880}, Case{GGMLType::F16, 96, 512},
                                    Case{GGMLType::F32, 96, 24}}) {   // F32 24: ragged rows
        const auto weights = random_weights(type, n_experts * rows, cols, rng);
        const ExpertMatrices w_cpu{{type, n_experts * rows, cols, weights.data()}, n_experts};
        const ExpertMatrices w_gpu{placed(type, n_experts * rows, cols, weights), n_experts};
        const bool quantized = type != GGMLType::F16 && type != GGMLType::F32;
        for (Activations activations : {Activations::Float32, Activations::Int8})
        for (size_t x_stride : {size_t{0}, cols}) {
            if (activations == Activations::Int8 && !quantized) continue;
            const auto x = random(k * cols);
            std::vector<float> want(k * rows);
            matmul_experts(cpu, w_cpu, ids.data(), k, x.data(), x_stride, want.data(), activations);
            float* y = poisoned(k * rows);
            matmul_experts(*gpu, w_gpu, to_device(ids), k, to_device(x), x_stride, y, activations);
            EXPECT_LT(l2_relative_error(to_host(y, want.size()), want), activations == Activations::Int8 ? 1e-5 : float_tolerance)
                << type_name(type) << " rows " << rows << " stride " << x_stride
                << (activations == Activations::Int8 ? " int8" : " float");
            if (x_stride != 0) continue;
            // Gate and up (w as gate, a second set as up) and SwiGLU: one launch on the int8 kernels.
            const auto up_weights = random_weights(type, n_experts * rows, cols, rng);
            const ExpertMatrices up_cpu{{type, n_experts * rows, cols, up_weights.data()}, n_experts};
            const ExpertMatrices up_gpu{placed(type, n_experts * rows, cols, up_weights), n_experts};
            std::vector<float> swiglu_want(k * rows), scratch(k * rows);
            matmul_experts_swiglu(cpu, w_cpu, up_cpu, ids.data(), k, x.data(), swiglu_want.data(), scratch.data(), activations);
            float* swiglu_out = poisoned(k * rows);
            matmul_experts_swiglu(*gpu, w_gpu, up_gpu, to_device(ids), k, to_device(x), swiglu_out, poisoned(k * rows),
                                  activations);
            EXPECT_LT(l2_relative_error(to_host(swiglu_out, swiglu_want.size()), swiglu_want),
                      activations == Activations::Int8 ? 1e-5 : float_tolerance)
                << type_name(type) << " rows " << rows << " swiglu" << (activations == Activations::Int8 ? " int8" : " float");
        }
    }
    const size_t n = 1000;
    const auto router = random(n_experts), outputs = random(k * n), y0 = random(n);
    std::vector<int32_t> chosen(k);
    std::vector<float> chosen_logits(k);
    top_k(cpu, router.data(), n_experts, k, chosen.data(), chosen_logits.data());
    for (bool renormalize : {false, true}) {
        auto want = y0;
        add_routed(cpu, want.data(), outputs.data(), n, router.data(), n_experts, chosen_logits.data(), k, renormalize);
        float* y = to_device(y0);
        add_routed(*gpu, y, to_device(outputs), n, to_device(router), n_experts, to_device(chosen_logits), k, renormalize);
        EXPECT_LT(l2_relative_error(to_host(y, n), want), 1e-6) << renormalize;
    }
}

TEST_F(CudaOps, GraphReplaysCapturedOps) {
    const auto a = random(4096), b = random(4096);
    float* x = to_device(a);
    const float* y = to_device(b);
    cuda::Graph graph;
    graph.begin_capture(*gpu);
    add(*gpu, x, y, a.size());
    gelu(*gpu, x, a.size());
    graph.end_capture(*gpu);
    EXPECT_EQ(to_host(x, a.size()), a);  // captured, not run
    graph.replay(*gpu);
    graph.replay(*gpu);
    auto want = a;
    for (int i = 0; i < 2; ++i) {
        add(cpu, want.data(), b.data(), want.size());
        gelu(cpu, want.data(), want.size());
    }
    EXPECT_LT(l2_relative_error(to_host(x, a.size()), want), float_tolerance);
}

TEST_F(CudaOps, OutOfMemorySaysHowMuch) {
    try {
        Buffer huge(Device::CUDA, size_t(1) << 50);
        FAIL() << "a petabyte was allocated";
    } catch (const OutOfMemory& e) {   // the server's scheduler retries a pass that throws this in smaller parts
        EXPECT_NE(std::string(e.what()).find("out of GPU memory: asked for"), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find("free of"), std::string::npos) << e.what();
    }
}

}  // namespace
}  // namespace twinfer::compute
#endif  // TWINFER_WITH_CUDA
