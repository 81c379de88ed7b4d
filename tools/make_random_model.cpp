// Writes a Llama-shaped GGUF with random weights, for speed benchmarks of shapes whose real
// weights are not available here (TinyLlama-1.1B, Llama-2-7B): the bytes a kernel reads matter,
// not what they mean. Blocks are random quantized values under one small fixed scale, so
// activations stay finite through every layer. The tokenizer metadata is copied from a vocabulary
// GGUF, so llama.cpp and twinfer both load the file.
//
//   twinfer_make_random_model SHAPE TYPE VOCAB.gguf OUT.gguf
//     SHAPE: smollm2-135m | tinyllama-1.1b | llama2-7b | llama2-13b
//     TYPE:  Q4_0 | Q4_1 | Q8_0 | MXFP4 | F16   (matrices; norms are F32)
//   twinfer_make_random_model like TENSORS.tsv METADATA.gguf OUT.gguf
//     any architecture: every metadata key of METADATA.gguf (a vocabulary-only file with the
//     model's hyper-parameters), and the tensors TENSORS.tsv lists (name, type, ggml dims:
//     bench/shapes/), 1-D F32 tensors as ones, F32 matrices (a router) as small random floats,
//     the others random blocks of their type.
#include <cstdio>
#include <cstring>
#include <exception>
#include <fstream>
#include <sstream>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "format/gguf.hpp"
#include "format/quant.hpp"

using namespace twinfer;

namespace {

struct Shape {
    uint32_t n_embd, n_layer, n_head, n_head_kv, n_ff, n_ctx;
    bool tied_output;
};

const std::map<std::string, Shape> kShapes = {
    {"smollm2-135m", {576, 30, 9, 3, 1536, 8192, true}},
    {"tinyllama-1.1b", {2048, 22, 32, 4, 5632, 2048, false}},
    {"llama2-7b", {4096, 32, 32, 32, 11008, 4096, false}},
    {"llama2-13b", {5120, 40, 40, 40, 13824, 4096, false}},
};

GGMLType parse_type(const std::string& s) {
    if (s == "Q4_0") return GGMLType::Q4_0;
    if (s == "Q4_1") return GGMLType::Q4_1;
    if (s == "Q8_0") return GGMLType::Q8_0;
    if (s == "MXFP4") return GGMLType::MXFP4;
    if (s == "F16") return GGMLType::F16;
    throw std::invalid_argument("unknown type " + s + " (Q4_0, Q4_1, Q8_0, MXFP4, F16)");
}

GGMLType parse_type_name(const std::string& s) {
    for (GGMLType t : {GGMLType::F32, GGMLType::F16, GGMLType::Q4_0, GGMLType::Q4_1, GGMLType::Q5_0, GGMLType::Q5_1,
                       GGMLType::Q8_0, GGMLType::Q4_K, GGMLType::Q5_K, GGMLType::Q6_K, GGMLType::MXFP4})
        if (type_name(t) == s) return t;
    throw std::invalid_argument("type " + s + " is not one random blocks are made of");
}

// Where a block's half-precision scales lie and the values that keep its weights within about
// +-0.1: (byte offset, value) pairs.
std::vector<std::pair<size_t, float>> block_scales(GGMLType type) {
    switch (type) {
        case GGMLType::Q4_0: case GGMLType::Q5_0: return {{0, 0.008f}};
        case GGMLType::Q8_0: return {{0, 0.0005f}};
        case GGMLType::Q4_1: case GGMLType::Q5_1: return {{0, 0.008f}, {2, -0.06f}};
        case GGMLType::Q4_K: case GGMLType::Q5_K: return {{0, 0.0001f}, {2, 0.0001f}};   // d, dmin
        case GGMLType::Q6_K: return {{208, 0.00002f}};                                    // d after ql, qh, scales
        case GGMLType::F16: case GGMLType::MXFP4: return {};   // no half scales (MXFP4: mxfp4_exponent)
        default: throw std::invalid_argument("random blocks of type " + std::string(type_name(type)) + " are not implemented");
    }
}

// MXFP4's exponent byte for every block: 2^(121 - 128), codes of at most 12 times that, 0.094.
constexpr uint8_t mxfp4_exponent = 121;

// Random blocks: every byte random, then each block's scales set to small halves (block_scales).
// Filled by several threads (7B is 3.8 GB).
std::vector<std::byte> random_blocks(GGMLType type, uint64_t n_elements, uint64_t seed) {
    const auto& traits = type_traits(type);
    std::vector<std::byte> bytes(row_size_bytes(type, n_elements));
    const size_t n_blocks = bytes.size() / traits.type_size;
    const unsigned n_threads = std::max(1u, std::thread::hardware_concurrency());
    std::vector<std::pair<size_t, ggml_half>> scales;
    for (const auto& [offset, value] : block_scales(type)) scales.emplace_back(offset, fp32_to_fp16(value));
    std::vector<std::thread> workers;
    for (unsigned t = 0; t < n_threads; ++t)
        workers.emplace_back([&, t] {
            std::mt19937_64 rng(seed * 1000003 + t);
            const size_t begin = n_blocks * t / n_threads, end = n_blocks * (t + 1) / n_threads;
            for (size_t b = begin; b < end; ++b) {
                std::byte* block = bytes.data() + b * traits.type_size;
                for (size_t i = 0; i < traits.type_size; i += 8) {
                    const uint64_t r = rng();
                    std::memcpy(block + i, &r, std::min<size_t>(8, traits.type_size - i));
                }
                if (type == GGMLType::F16) {
                    for (size_t i = 0; i < traits.type_size; i += 2) {  // F16 "blocks" are single halves
                        const ggml_half h = fp32_to_fp16((float(uint8_t(block[i])) - 128.0f) / 2048.0f);
                        std::memcpy(block + i, &h, 2);
                    }
                    continue;
                }
                if (type == GGMLType::MXFP4) block[offsetof(BlockMXFP4, e)] = std::byte{mxfp4_exponent};
                for (const auto& [offset, half] : scales) std::memcpy(block + offset, &half, 2);
            }
        });
    for (auto& w : workers) w.join();
    return bytes;
}

std::vector<std::byte> as_bytes(const std::vector<float>& v) {
    std::vector<std::byte> bytes(v.size() * sizeof(float));
    std::memcpy(bytes.data(), v.data(), bytes.size());
    return bytes;
}

std::vector<std::byte> ones(uint64_t n) { return as_bytes(std::vector<float>(n, 1.0f)); }

// Within +-0.1, as the blocks' weights (block_scales).
std::vector<std::byte> small_floats(uint64_t n, uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::uniform_real_distribution<float> value(-0.1f, 0.1f);
    std::vector<float> v(n);
    for (float& x : v) x = value(rng);
    return as_bytes(v);
}

// `like` mode (see the top of the file).
void write_like(const std::string& tensors_path, const std::string& metadata_path, const std::string& out_path) {
    const gguf::File metadata = gguf::File::open(metadata_path);
    gguf::Writer out;
    for (const auto& [key, value] : metadata.metadata())
        if (key != "general.alignment") out.set(key, value);
    std::ifstream in(tensors_path);
    if (!in) throw std::runtime_error("cannot open " + tensors_path);
    std::string line;
    uint64_t seed = 1;
    while (std::getline(in, line)) {
        if (line.empty() || line[0] == '#') continue;
        std::istringstream fields(line);
        std::string name, type_text, dims_text;
        if (!std::getline(fields, name, '\t') || !std::getline(fields, type_text, '\t') || !std::getline(fields, dims_text))
            throw std::runtime_error(tensors_path + ": not 'name<TAB>type<TAB>dims': " + line);
        std::vector<uint64_t> dims;
        uint64_t n = 1;
        std::istringstream dims_in(dims_text);
        for (std::string d; std::getline(dims_in, d, ',');) n *= dims.emplace_back(std::stoull(d));
        const GGMLType type = parse_type_name(type_text);
        if (type == GGMLType::F32) {
            out.add_tensor(name, dims, type, dims.size() == 1 ? ones(n) : small_floats(n, seed++));
        } else {
            out.add_tensor(name, dims, type, random_blocks(type, n, seed++));
        }
    }
    out.write(out_path);
}

}  // namespace

int main(int argc, char** argv) {
    if (argc == 5 && std::string(argv[1]) == "like") {
        try {
            write_like(argv[2], argv[3], argv[4]);
            std::printf("wrote %s\n", argv[4]);
            return 0;
        } catch (const std::exception& e) {
            std::fprintf(stderr, "error: %s\n", e.what());
            return 1;
        }
    }
    if (argc != 5 || !kShapes.count(argv[1])) {
        std::fprintf(stderr, "usage: %s smollm2-135m|tinyllama-1.1b|llama2-7b|llama2-13b Q4_0|Q4_1|Q8_0|MXFP4|F16 VOCAB.gguf OUT.gguf\n"
                             "       %s like TENSORS.tsv METADATA.gguf OUT.gguf\n", argv[0], argv[0]);
        return 2;
    }
    try {
        const Shape s = kShapes.at(argv[1]);
        const GGMLType type = parse_type(argv[2]);
        const gguf::File vocab = gguf::File::open(argv[3]);
        const uint64_t n_vocab = vocab.get_array("tokenizer.ggml.tokens").size();
        const uint64_t head_dim = s.n_embd / s.n_head, kv = uint64_t(s.n_head_kv) * head_dim;

        gguf::Writer out;
        out.set_string("general.architecture", "llama");
        out.set_string("general.name", std::string(argv[1]) + " random " + argv[2]);
        out.set_u32("llama.context_length", s.n_ctx);
        out.set_u32("llama.embedding_length", s.n_embd);
        out.set_u32("llama.block_count", s.n_layer);
        out.set_u32("llama.feed_forward_length", s.n_ff);
        out.set_u32("llama.attention.head_count", s.n_head);
        out.set_u32("llama.attention.head_count_kv", s.n_head_kv);
        out.set_u32("llama.rope.dimension_count", static_cast<uint32_t>(head_dim));
        out.set_f32("llama.attention.layer_norm_rms_epsilon", 1e-5f);
        out.set_f32("llama.rope.freq_base", 10000.0f);
        for (const auto& [key, value] : vocab.metadata())
            if (key.starts_with("tokenizer.")) out.set(key, value);

        uint64_t seed = 1;
        auto matrix = [&](const std::string& name, uint64_t cols, uint64_t rows, GGMLType t) {
            out.add_tensor(name, {cols, rows}, t, random_blocks(t, cols * rows, seed++));
        };
        matrix("token_embd.weight", s.n_embd, n_vocab, type == GGMLType::Q4_1 ? GGMLType::Q8_0 : type);
        out.add_tensor("output_norm.weight", {s.n_embd}, GGMLType::F32, ones(s.n_embd));
        if (!s.tied_output) matrix("output.weight", s.n_embd, n_vocab, type == GGMLType::Q4_1 ? GGMLType::Q8_0 : type);
        for (uint32_t l = 0; l < s.n_layer; ++l) {
            const std::string p = "blk." + std::to_string(l) + ".";
            out.add_tensor(p + "attn_norm.weight", {s.n_embd}, GGMLType::F32, ones(s.n_embd));
            matrix(p + "attn_q.weight", s.n_embd, s.n_embd, type);
            matrix(p + "attn_k.weight", s.n_embd, kv, type);
            matrix(p + "attn_v.weight", s.n_embd, kv, type);
            matrix(p + "attn_output.weight", s.n_embd, s.n_embd, type);
            out.add_tensor(p + "ffn_norm.weight", {s.n_embd}, GGMLType::F32, ones(s.n_embd));
            matrix(p + "ffn_gate.weight", s.n_embd, s.n_ff, type);
            matrix(p + "ffn_up.weight", s.n_embd, s.n_ff, type);
            matrix(p + "ffn_down.weight", s.n_ff, s.n_embd, type);
        }
        out.write(argv[4]);
        std::printf("wrote %s\n", argv[4]);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
}
