// Tokenizers: every vocabulary in tests/data/third_party/tokenizers (byte-level BPE with each
// pre-tokenizer, SentencePiece BPE, ...) is loaded once; each input picks one. Input layout:
//   byte 0: bit 0 add_special, bit 1 parse_special; byte 1: the vocabulary (modulo their count);
//   the rest: the text to encode, and also read as little-endian u16/u32 token ids to decode.
// Encoding must give ids inside the vocabulary; decoding ids outside it must throw
// TokenizerError, never read out of bounds.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <string_view>
#include <vector>

#include "format/gguf.hpp"
#include "tests/fuzz/fuzz_data.hpp"
#include "tokenizer/tokenizer.hpp"

using namespace twinfer;

namespace {

std::vector<Tokenizer>& tokenizers() {
    static std::vector<Tokenizer> loaded;
    return loaded;
}

// The ids: u32s for the first half of the text, so large and negative ids occur; u16s (inside
// typical vocabularies) for the rest.
std::vector<Token> ids_from(std::string_view bytes) {
    std::vector<Token> ids;
    size_t i = 0;
    for (; i + 4 <= bytes.size() / 2; i += 4) {
        int32_t id;
        std::memcpy(&id, bytes.data() + i, 4);
        ids.push_back(id);
    }
    for (; i + 2 <= bytes.size(); i += 2) {
        uint16_t id;
        std::memcpy(&id, bytes.data() + i, 2);
        ids.push_back(id);
    }
    return ids;
}

bool all_in_vocabulary(const Tokenizer& tokenizer, const std::vector<Token>& ids) {
    return std::all_of(ids.begin(), ids.end(),
                       [&](Token id) { return id >= 0 && static_cast<size_t>(id) < tokenizer.n_vocab(); });
}

void decode_checked(const Tokenizer& tokenizer, const std::vector<Token>& ids) {
    const bool in_vocabulary = all_in_vocabulary(tokenizer, ids);
    try {
        (void)tokenizer.decode(ids);
        StreamDecoder stream(tokenizer);
        for (Token id : ids) (void)stream.push(id);
        (void)stream.flush();
    } catch (const TokenizerError&) {
        if (in_vocabulary) throw;  // ids inside the vocabulary always decode
    }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    const std::filesystem::path dir = "tests/data/third_party/tokenizers";
    for (const auto& path : fuzz::sorted_files(dir, ".gguf")) {
        try {
            tokenizers().push_back(Tokenizer::from_gguf(gguf::File::open(path)));
        } catch (const TokenizerError& e) {  // a vocabulary type twinfer does not implement
            std::cerr << "tokenizer_fuzz: skipping " << path.filename().string() << ": " << e.what() << "\n";
        }
    }
    if (tokenizers().empty()) {
        std::cerr << "tokenizer_fuzz: no vocabulary loaded from " << dir << " (set TWINFER_REPO)\n";
        std::abort();
    }
    std::cerr << "tokenizer_fuzz: " << tokenizers().size() << " vocabularies\n";
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size < 2) return 0;
    const bool add_special = data[0] & 1, parse_special = data[0] & 2;
    const Tokenizer& tokenizer = tokenizers()[data[1] % tokenizers().size()];
    const std::string_view text(reinterpret_cast<const char*>(data + 2), size - 2);

    const std::vector<Token> encoded = tokenizer.encode(text, add_special, parse_special);
    if (!all_in_vocabulary(tokenizer, encoded)) {
        std::cerr << "tokenizer_fuzz: " << tokenizer.kind() << " encoded an id outside its vocabulary\n";
        std::abort();
    }
    decode_checked(tokenizer, encoded);
    decode_checked(tokenizer, ids_from(text));
    return 0;
}
