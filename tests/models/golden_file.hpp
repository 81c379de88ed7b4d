#pragma once
// golden.bin, the float64 outputs of transformers that tools/make_golden.py and
// tools/make_arch_golden.py write (format in tools/make_golden.py).
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "models/inference.hpp"

namespace twinfer::test {

// One sequence of golden.bin (format in tools/make_golden.py).
struct GoldenSequence {
    std::vector<Token> tokens;
    size_t n_vocab = 0;
    std::vector<double> logits;   // [n_tokens, n_vocab]
    size_t n_hidden = 0, n_embd = 0;
    std::vector<double> hidden;   // [n_hidden, n_tokens, n_embd]
};

inline std::vector<GoldenSequence> read_golden(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw std::runtime_error("cannot open " + path.string());
    auto read = [&](void* dst, size_t n) {
        if (!in.read(static_cast<char*>(dst), static_cast<std::streamsize>(n))) throw std::runtime_error(path.string() + ": truncated");
    };
    auto u32 = [&] { uint32_t v; read(&v, 4); return v; };
    char magic[4];
    read(magic, 4);
    if (std::memcmp(magic, "TWGL", 4) != 0) throw std::runtime_error(path.string() + ": not a golden file");
    if (const uint32_t version = u32(); version != 1) throw std::runtime_error(path.string() + ": golden version " + std::to_string(version));
    std::vector<GoldenSequence> sequences(u32());
    for (auto& s : sequences) {
        s.tokens.resize(u32());
        read(s.tokens.data(), s.tokens.size() * sizeof(Token));
        s.n_vocab = u32();
        s.logits.resize(s.tokens.size() * s.n_vocab);
        read(s.logits.data(), s.logits.size() * sizeof(double));
        s.n_hidden = u32();
        s.n_embd = u32();
        s.hidden.resize(s.n_hidden * s.tokens.size() * s.n_embd);
        read(s.hidden.data(), s.hidden.size() * sizeof(double));
    }
    return sequences;
}

}  // namespace twinfer::test
