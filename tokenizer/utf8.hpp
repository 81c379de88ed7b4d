#pragma once
// UTF-8 and the GPT-2 byte <-> code point mapping, as the tokenizers need them.
#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace twinfer::tokenizer_detail {

// llama.cpp's unicode_cpts_from_utf8: lenient (overlong forms and surrogates decode as they
// are), each byte that starts no complete sequence becomes U+FFFD. The BPE pre-tokenizer works
// on these code points, so invalid input tokenizes as llama.cpp tokenizes it.
std::vector<uint32_t> lenient_code_points(std::string_view text);

void append_utf8(std::string& out, uint32_t code_point);

// llama.cpp's unicode_len_utf8: the length a lead byte announces (1 for stray continuation bytes).
inline size_t utf8_sequence_length(uint8_t lead) {
    static constexpr uint8_t lengths[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
    return lengths[lead >> 4];
}

// Appends `in` to `out` as valid UTF-8, each maximal invalid subpart replaced by U+FFFD (the
// Unicode "best practice", as Python's errors="replace"). Unless `final`, a trailing sequence
// that is incomplete but could still complete is left unconsumed. Returns the bytes consumed.
size_t append_valid_utf8(std::string_view in, std::string& out, bool final);

// GPT-2's bytes_to_unicode: printable bytes map to themselves, the rest to U+0100 onwards.
const std::array<std::string, 256>& byte_to_unicode();
std::optional<uint8_t> unicode_to_byte(uint32_t code_point);

}  // namespace twinfer::tokenizer_detail
