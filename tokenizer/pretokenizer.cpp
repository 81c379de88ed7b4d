#include "tokenizer/pretokenizer.hpp"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <array>

#include "tokenizer/tokenizer.hpp"
#include "tokenizer/utf8.hpp"

namespace twinfer::tokenizer_detail {

namespace {

// llama.cpp's regexes (src/llama-vocab.cpp, llm_tokenizer_bpe), in PCRE2 syntax. Where llama.cpp
// rewrote a Hugging Face regex, its rewrite is used: `(?i:'s|...)` became `'[sS]|...`, which is
// also exactly what its hand-written matcher (unicode_regex_split_custom_llama3) does.
constexpr const char* kGpt2 = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S))";
constexpr const char* kLlama3 =
    R"((?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr const char* kQwen2 =
    R"((?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
// llama.cpp runs regexes with explicit non-ASCII ranges through std::wregex after turning every
// non-ASCII white space into \v, so such a character never matches a range that spans it (the
// CJK range below spans U+1680, U+2000-U+200A, U+2028/9, U+202F, U+205F, U+3000): (?!\s) says so.
constexpr const char* kCjk = R"((?:(?!\s)[一-龥ࠀ-一가-퟿])+)";
// Characters with a canonical decomposition (U+1F7D, U+1FBE, U+1FD3, U+1FDB, U+2126, U+212A) are
// escaped: an editor or tool that normalizes text would silently turn them into others.
constexpr const char* kDeepseekLatin =
    R"(\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-\x{1F7D}ᾀ-ᾴᾶ-ᾼ\x{1FBE}ῂ-ῄῆ-ῌῐ-\x{1FD3}ῖ-\x{1FDB}ῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤ\x{2126}ℨ\x{212A}-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+)";
// U+3000 (ideographic space) starts llama.cpp's range "　-。" but, being white space, never matches.
constexpr const char* kDeepseekPunct = R"(\s?[!-/:-~！-／：-～‘-‟、-。]+)";

struct Family {
    std::vector<std::string_view> names;
    std::vector<std::string> regexes;
    bool ignore_merges = false;
    bool default_add_bos = false;
};

const std::vector<Family>& families() {
    static const std::vector<Family> table = {
        {{"default"}, {R"([\p{P}\$\+<=>\^~\|]+)", kGpt2, R"(\p{N}+)", "[0-9][0-9][0-9]"}},
        {{"llama3", "llama-v3", "llama-bpe", "falcon3", "pixtral"}, {kLlama3}, true, true},
        {{"dbrx", "smaug-bpe"}, {kLlama3}},
        {{"deepseek-llm"}, {"[\r\n]", kDeepseekLatin, kDeepseekPunct, R"(\s+$)", kCjk, R"(\p{N}+)"}},
        {{"deepseek-coder"}, {"[\r\n]", R"(\s?\p{L}+)", R"(\s?\p{P}+)", kCjk, R"(\p{N})"}},
        {{"falcon"}, {R"([\p{P}\$\+<=>\^~\|`]+)", kGpt2, "[0-9][0-9][0-9]"}},
        {{"starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b"},
         {R"(\p{N})", kGpt2}},
        // GPT-NeoX's tokenizer.json is a plain ByteLevel pre-tokenizer: the GPT-2 regex.
        {{"gpt-2", "phi-2", "mpt", "olmo", "gpt-neox", "jina-es", "jina-de", "jina-v1-en",
          "jina-v2-es", "jina-v2-de", "jina-v2-code", "roberta-bpe"},
         {kGpt2}},
        {{"qwen2", "deepseek-r1-qwen", "megrez", "stablelm2"}, {kQwen2}},
    };
    return table;
}

}  // namespace

PreTokenizerSpec pre_tokenizer_spec(std::string_view pre) {
    for (const auto& family : families())
        for (auto name : family.names)
            if (name == pre)
                return {std::string(pre), family.regexes, family.ignore_merges, family.default_add_bos};
    std::string known;
    for (const auto& family : families())
        for (auto name : family.names) known += (known.empty() ? "" : ", ") + std::string(name);
    throw TokenizerError("unknown pre-tokenizer '" + std::string(pre) + "' (tokenizer.ggml.pre); known: " + known);
}

struct PreTokenizer::Compiled {
    pcre2_code* code = nullptr;
    ~Compiled() { pcre2_code_free(code); }
};

PreTokenizer::PreTokenizer(const PreTokenizerSpec& spec) {
    for (const auto& regex : spec.regexes) {
        int error = 0;
        PCRE2_SIZE error_offset = 0;
        auto compiled = std::make_unique<Compiled>();
        compiled->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(regex.data()), regex.size(),
                                       PCRE2_UTF | PCRE2_UCP, &error, &error_offset, nullptr);
        if (!compiled->code) {
            std::array<PCRE2_UCHAR, 256> message{};
            pcre2_get_error_message(error, message.data(), message.size());
            throw TokenizerError("pre-tokenizer '" + spec.name + "': regex does not compile at offset " +
                                 std::to_string(error_offset) + ": " + reinterpret_cast<const char*>(message.data()));
        }
        pcre2_jit_compile(compiled->code, PCRE2_JIT_COMPLETE);  // without JIT it still matches, slower
        compiled_.push_back(std::move(compiled));
    }
}

PreTokenizer::~PreTokenizer() = default;
PreTokenizer::PreTokenizer(PreTokenizer&&) noexcept = default;
PreTokenizer& PreTokenizer::operator=(PreTokenizer&&) noexcept = default;

std::vector<std::string> PreTokenizer::split(std::string_view text) const {
    // `faithful` re-encodes llama.cpp's code points (surrogates and overlong forms decoded as
    // they are); `subject` is the same with surrogates as U+FFFD, which PCRE2 accepts as UTF-8.
    // Each code point has the same length in both, so offsets agree.
    const auto code_points = lenient_code_points(text);
    std::string faithful, subject;
    faithful.reserve(text.size());
    subject.reserve(text.size());
    for (uint32_t cp : code_points) {
        append_utf8(faithful, cp);
        append_utf8(subject, cp >= 0xD800 && cp <= 0xDFFF ? 0xFFFD : cp);
    }

    struct Piece {
        size_t begin, end;
    };
    std::vector<Piece> pieces;
    if (!subject.empty()) pieces.push_back({0, subject.size()});
    std::vector<Piece> next;
    for (const auto& compiled : compiled_) {
        pcre2_match_data* match = pcre2_match_data_create_from_pattern(compiled->code, nullptr);
        next.clear();
        for (const Piece& piece : pieces) {
            const auto* base = reinterpret_cast<PCRE2_SPTR>(subject.data() + piece.begin);
            const size_t length = piece.end - piece.begin;
            size_t emitted = 0, start = 0;
            while (start < length) {
                const int rc = pcre2_match(compiled->code, base, length, start, PCRE2_NO_UTF_CHECK, match, nullptr);
                if (rc == PCRE2_ERROR_NOMATCH) break;
                if (rc < 0) {
                    pcre2_match_data_free(match);
                    throw TokenizerError("pre-tokenizer: PCRE2 match failed with code " + std::to_string(rc));
                }
                const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(match);
                const size_t m_begin = ovector[0], m_end = ovector[1];
                if (m_end == m_begin) {  // no regex here matches empty; step over a character if one did
                    start = m_begin + utf8_sequence_length(static_cast<uint8_t>(subject[piece.begin + m_begin]));
                    continue;
                }
                if (m_begin > emitted) next.push_back({piece.begin + emitted, piece.begin + m_begin});
                next.push_back({piece.begin + m_begin, piece.begin + m_end});
                emitted = start = m_end;
            }
            if (emitted < length) next.push_back({piece.begin + emitted, piece.end});
        }
        pcre2_match_data_free(match);
        pieces.swap(next);
    }

    std::vector<std::string> words;
    words.reserve(pieces.size());
    for (const Piece& piece : pieces) words.emplace_back(faithful.substr(piece.begin, piece.end - piece.begin));
    return words;
}

}  // namespace twinfer::tokenizer_detail
