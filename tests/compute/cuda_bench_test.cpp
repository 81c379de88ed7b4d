// Decode and prompt speed of a Llama-shaped stack of compute ops on the GPU, with random weights
// in GGUF block formats: the work of SmolLM2-135M, TinyLlama-1.1B and Llama-2-7B forward passes,
// without model files (the GPU machine has none). Disabled by default; tools/gpu/bench.sh runs it:
//   test_compute --gtest_also_run_disabled_tests --gtest_filter='CudaBench.*'
// (TWINFER_BENCH_ONLY=Llama-2-7B: one model only, e.g. under a profiler).
// tg: one token at a time, the sampled token (argmax on the device) copied back after each, as
// a generation loop does; "launch" enqueues each op, "graph" captures the step as a CUDA graph
// (updated in place for the next position) and replays it. pp: 512 tokens in one pass.
#ifdef TWINFER_WITH_CUDA
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "compute/attention.hpp"
#include "compute/cuda/ops.hpp"
#include "compute/cuda/runtime.hpp"
#include "compute/elementwise.hpp"
#include "compute/matmul.hpp"
#include "compute/norm.hpp"
#include "compute/rope.hpp"
#include "format/quant.hpp"

namespace twinfer::compute {
namespace {

struct Shape {
    const char* name;
    size_t n_embd, n_head, n_head_kv, n_ff, n_layer, n_vocab;
    size_t head_dim() const { return n_embd / n_head; }
    size_t kv_dim() const { return n_head_kv * head_dim(); }
};

constexpr size_t n_ctx = 1024;

// One matrix per role, each layer its own device copy (so that nothing fits in L2 that would not
// in the real model).
struct Stack {
    Context& gpu;
    Shape s;
    GGMLType type;
    Activations activations = Activations::Int8;   // the models' default
    std::vector<Buffer> memory;
    struct Layer {
        WeightMatrix wq, wk, wv, wo, gate, up, down;
        float *attn_norm, *ffn_norm, *keys, *values;
    };
    std::vector<Layer> layers;
    WeightMatrix embedding, output;
    float *out_norm, *x, *h, *q, *att, *ffn_gate, *ffn_up, *logits;
    int32_t* token;
    RopeParams rope_params;

    float* floats(size_t n) {
        memory.emplace_back(Device::CUDA, n * sizeof(float));
        return memory.back().as<float>();
    }
    WeightMatrix matrix(size_t rows, size_t cols, std::mt19937& rng) {
        std::normal_distribution<float> normal(0.0f, 0.02f);
        std::vector<float> values(rows * cols);
        for (auto& v : values) v = normal(rng);
        std::vector<std::byte> bytes(row_size_bytes(type, cols) * rows);
        quantize(type, values, bytes);
        return place_weights(gpu, {type, rows, cols, bytes.data()}, memory);
    }
    WeightMatrix copy_of(const WeightMatrix& w) {   // the same bytes (and layout) elsewhere
        memory.emplace_back(Device::CUDA, w.rows * w.row_bytes());
        std::vector<std::byte> host(w.rows * w.row_bytes());
        cuda::download(gpu, host.data(), w.data, host.size());
        cuda::upload(gpu, memory.back().data(), host.data(), host.size());
        WeightMatrix copy = w;
        copy.data = memory.back().as<std::byte>();
        return copy;
    }
    float* ones(size_t n) {
        float* p = floats(n);
        std::vector<float> host(n, 1.0f);
        cuda::upload(gpu, p, host.data(), n * sizeof(float));
        return p;
    }

    Stack(Context& g, Shape shape, GGMLType t) : gpu(g), s(shape), type(t) {
        std::mt19937 rng(42);
        Layer first{matrix(s.n_embd, s.n_embd, rng), matrix(s.kv_dim(), s.n_embd, rng), matrix(s.kv_dim(), s.n_embd, rng),
                    matrix(s.n_embd, s.n_embd, rng), matrix(s.n_ff, s.n_embd, rng), matrix(s.n_ff, s.n_embd, rng),
                    matrix(s.n_embd, s.n_ff, rng), ones(s.n_embd), ones(s.n_embd), nullptr, nullptr};
        for (size_t l = 0; l < s.n_layer; ++l) {
            Layer layer = l == 0 ? first
                                 : Layer{copy_of(first.wq), copy_of(first.wk), copy_of(first.wv), copy_of(first.wo),
                                         copy_of(first.gate), copy_of(first.up), copy_of(first.down), ones(s.n_embd),
                                         ones(s.n_embd), nullptr, nullptr};
            layer.keys = floats(n_ctx * s.kv_dim());
            layer.values = floats(n_ctx * s.kv_dim());
            layers.push_back(layer);
        }
        embedding = matrix(s.n_vocab, s.n_embd, rng);
        output = matrix(s.n_vocab, s.n_embd, rng);
        out_norm = ones(s.n_embd);
        const size_t T = 512;
        x = floats(T * s.n_embd), h = floats(T * s.n_embd), q = floats(T * s.n_embd), att = floats(T * s.n_embd);
        ffn_gate = floats(T * s.n_ff), ffn_up = floats(T * s.n_ff), logits = floats(T * s.n_vocab);
        memory.emplace_back(Device::CUDA, T * sizeof(int32_t));
        token = memory.back().as<int32_t>();
        std::vector<int32_t> ids(T);
        for (size_t i = 0; i < T; ++i) ids[i] = int32_t(i * 7 % s.n_vocab);
        cuda::upload(gpu, token, ids.data(), T * sizeof(int32_t));
        rope_params.n_rot = s.head_dim();
    }

    // n_tokens tokens at positions pos.., ids at `token`; leaves the argmax of the last logits in token[0].
    void forward(size_t n_tokens, size_t pos) {
        const size_t n = s.n_embd, hd = s.head_dim(), kvd = s.kv_dim();
        const AttentionShape shape{s.n_head, s.n_head_kv, hd, kvd, 1.0f / std::sqrt(float(hd))};
        get_rows(gpu, embedding, token, n_tokens, x);
        for (const Layer& L : layers) {
            rms_norm(gpu, x, L.attn_norm, n_tokens, n, 1e-5f, h);
            const MatmulOutput qkv[] = {{L.wq, q}, {L.wk, L.keys + pos * kvd}, {L.wv, L.values + pos * kvd}};
            matmul(gpu, qkv, h, n_tokens, activations);
            rope(gpu, q, n_tokens, n, s.n_head, hd, pos, rope_params);
            rope(gpu, L.keys + pos * kvd, n_tokens, kvd, s.n_head_kv, hd, pos, rope_params);
            attention(gpu, q, L.keys, L.values, n_tokens, pos, shape, att);
            matmul(gpu, L.wo, att, n_tokens, h, activations);
            add(gpu, x, h, n_tokens * n);
            rms_norm(gpu, x, L.ffn_norm, n_tokens, n, 1e-5f, h);
            const MatmulOutput gate_up[] = {{L.gate, ffn_gate}, {L.up, ffn_up}};
            matmul(gpu, gate_up, h, n_tokens, activations);
            swiglu(gpu, ffn_gate, ffn_up, n_tokens * s.n_ff, ffn_gate);
            matmul(gpu, L.down, ffn_gate, n_tokens, h, activations);
            add(gpu, x, h, n_tokens * n);
        }
        const float* last = x + (n_tokens - 1) * n;
        rms_norm(gpu, last, out_norm, 1, n, 1e-5f, h);
        matmul(gpu, output, h, 1, logits, activations);
        cuda::argmax(gpu, logits, 1, s.n_vocab, token);
    }

    int32_t sampled() {
        int32_t t = 0;
        cuda::download(gpu, &t, token, sizeof t);
        return t;
    }
};

double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

double generation_rate(Stack& stack, bool use_graph, size_t n_gen) {
    cuda::Graph graph;
    double best = 0;
    for (int rep = 0; rep < 3; ++rep) {
        const auto t0 = std::chrono::steady_clock::now();
        for (size_t pos = 0; pos < n_gen; ++pos) {
            if (use_graph) {
                graph.begin_capture(stack.gpu);
                stack.forward(1, pos);
                graph.end_capture(stack.gpu);
                graph.replay(stack.gpu);
            } else {
                stack.forward(1, pos);
            }
            stack.sampled();
        }
        best = std::max(best, n_gen / seconds_since(t0));
    }
    return best;
}

double prompt_rate(Stack& stack, size_t n_prompt) {
    stack.forward(n_prompt, 0);  // warm-up: grows the scratch, loads cuBLAS kernels
    stack.sampled();
    double best = 0;
    for (int rep = 0; rep < 3; ++rep) {
        const auto t0 = std::chrono::steady_clock::now();
        stack.forward(n_prompt, 0);
        stack.sampled();
        best = std::max(best, n_prompt / seconds_since(t0));
    }
    return best;
}

TEST(CudaBench, DISABLED_LlamaShapes) {
    if (cuda::device_count() == 0) GTEST_SKIP() << cuda::describe_device();
    ContextOptions options;
    options.device = Device::CUDA;
    options.n_threads = 1;
    Context gpu(options);
    std::printf("device: %s\n", cuda::describe_device().c_str());
    const Shape smollm2{"SmolLM2-135M", 576, 9, 3, 1536, 30, 49152};
    const Shape tinyllama{"TinyLlama-1.1B", 2048, 32, 4, 5632, 22, 32000};
    const Shape llama7b{"Llama-2-7B", 4096, 32, 32, 11008, 32, 32000};
    struct Run { Shape shape; GGMLType type; };
    std::printf("| model | type | tg128 launch, int8 x (tok/s) | tg128 graph, int8 x | tg128 launch, float x | pp512 (tok/s) |\n"
                "|---|---|---|---|---|---|\n");
    for (const Run& run : {Run{smollm2, GGMLType::Q4_1}, Run{tinyllama, GGMLType::Q4_0}, Run{tinyllama, GGMLType::Q8_0},
                           Run{llama7b, GGMLType::Q4_0}}) {
        const char* only = std::getenv("TWINFER_BENCH_ONLY");  // a model name: time just that one
        if (only && std::string(only) != run.shape.name) continue;
        Stack stack(gpu, run.shape, run.type);
        stack.forward(1, 0);  // warm-up
        stack.sampled();
        const double launch = generation_rate(stack, false, 128);
        const double graph = generation_rate(stack, true, 128);
        stack.activations = Activations::Float32;
        const double launch_float = generation_rate(stack, false, 128);
        const double prompt = prompt_rate(stack, 512);
        std::printf("| %s | %s | %.0f | %.0f | %.0f | %.0f |\n", run.shape.name, std::string(type_name(run.type)).c_str(),
                    launch, graph, launch_float, prompt);
        std::fflush(stdout);
    }
}

// Single kernels, back to back on the stream: microseconds per call (launch included, as the
// models pay it) and, for the products, the weights' bytes over that time. Eight copies of each
// matrix, used in turn, so that the 50 MB L2 does not hold the one being read.
TEST(CudaBench, DISABLED_Kernels) {
    if (cuda::device_count() == 0) GTEST_SKIP() << cuda::describe_device();
    ContextOptions options;
    options.device = Device::CUDA;
    options.n_threads = 1;
    Context gpu(options);
    std::printf("device: %s\n", cuda::describe_device().c_str());
    constexpr int reps = 400, copies = 8;
    auto time_us = [&](auto&& op) {
        op(0);  // warm-up: scratch, first launch
        cuda::synchronize(gpu);
        const auto t0 = std::chrono::steady_clock::now();
        for (int i = 0; i < reps; ++i) op(i % copies);
        cuda::synchronize(gpu);
        return seconds_since(t0) / reps * 1e6;
    };
    std::printf("| kernel | us/call | GB/s |\n|---|---|---|\n");
    for (auto [type, rows, cols] : {std::tuple{GGMLType::Q4_0, 4096, 4096}, std::tuple{GGMLType::Q4_0, 11008, 4096},
                                    std::tuple{GGMLType::Q4_1, 4096, 4096}, std::tuple{GGMLType::Q5_0, 4096, 4096},
                                    std::tuple{GGMLType::Q8_0, 4096, 4096}, std::tuple{GGMLType::Q4_K, 4096, 4096},
                                    std::tuple{GGMLType::Q4_1, 1536, 576}}) {
        Stack host(gpu, Shape{"memory only", 256, 1, 1, 256, 0, 256}, type);   // no layers: its allocation helpers
        std::mt19937 rng(7);
        std::vector<WeightMatrix> w;
        for (int c = 0; c < copies; ++c) w.push_back(host.matrix(size_t(rows), size_t(cols), rng));
        float* x = host.ones(size_t(cols));
        float* y = host.floats(size_t(rows));
        const double bytes = double(w[0].rows * w[0].row_bytes());
        for (Activations a : {Activations::Float32, Activations::Int8}) {
            const double us = time_us([&](int c) { matmul(gpu, w[c], x, 1, y, a); });
            std::printf("| matvec %dx%d %s, %s x | %.2f | %.0f |\n", rows, cols, std::string(type_name(type)).c_str(),
                        a == Activations::Int8 ? "int8" : "float", us, bytes / us / 1e3);
        }
    }
    Stack host(gpu, Shape{"memory only", 256, 1, 1, 256, 0, 256}, GGMLType::F32);
    float* x = host.ones(4096 * 8);
    float* w = host.ones(4096);
    float* out = host.floats(4096 * 8);
    std::printf("| rms_norm 1x4096 | %.2f | |\n", time_us([&](int c) { rms_norm(gpu, x + c * 4096, w, 1, 4096, 1e-5f, out + c * 4096); }));
    std::printf("| rms_norm 1x576 | %.2f | |\n", time_us([&](int c) { rms_norm(gpu, x + c * 4096, w, 1, 576, 1e-5f, out + c * 4096); }));
    RopeParams rope_params;
    rope_params.n_rot = 128;
    std::printf("| rope 1 token, 32x128 | %.2f | |\n", time_us([&](int c) { rope(gpu, x + c * 4096, 1, 4096, 32, 128, 100, rope_params); }));
    std::printf("| add 4096 | %.2f | |\n", time_us([&](int c) { add(gpu, x + c * 4096, out, 4096); }));
}

}  // namespace
}  // namespace twinfer::compute
#endif  // TWINFER_WITH_CUDA
