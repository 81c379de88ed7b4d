#include "tokenizer/pretokenizer.hpp"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <array>

#include "tokenizer/tokenizer.hpp"
#include "tokenizer/utf8.hpp"

namespace twinfer::tokenizer_detail {

namespace {

// llama.cpp's regexes (src/llama-vocab.cpp, llm_tokenizer_bpe), written as llama.cpp writes them
// and turned into PCRE2 by to_pcre2() below. Where llama.cpp rewrote a Hugging Face regex, its
// rewrite is used: `(?i:'s|...)` became `'[sS]|...`, which is also what its hand-written
// matchers (unicode_regex_split_custom_*) do.
#define TWINFER_CONTRACTIONS R"((?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD]))"
constexpr const char* kGpt2 = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S))";
constexpr const char* kLlama3 = TWINFER_CONTRACTIONS
    R"(|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr const char* kQwen2 = TWINFER_CONTRACTIONS
    R"(|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr const char* kQwen35 = TWINFER_CONTRACTIONS
    R"(|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr const char* kMinicpm5 = TWINFER_CONTRACTIONS
    R"(|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}+| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr const char* kJais2 = TWINFER_CONTRACTIONS
    R"(|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s{512}(?!\S)|\s{256}(?!\S))"
    R"(|\s{128}(?!\S)|\s{64}(?!\S)|\s{32}(?!\S)|\s{16}(?!\S)|\s{8}(?!\S)|\s{4}(?!\S)|\s{1,2}(?!\S)|\s{1})";
constexpr const char* kSeedCoder = TWINFER_CONTRACTIONS
    R"(|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr const char* kExaoneMoe = TWINFER_CONTRACTIONS
    R"(|[^\r\n\p{L}\p{N}]?(?:\p{L}\p{M}*(?: \p{L}\p{M}*)*)+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]?|\s*[\r\n]|\s+(?!\S)|\s+)";
constexpr const char* kUfakzeka = R"([^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr const char* kBailing =
    R"('(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+)";
// Upper/lower-case word splitting (Tekken, GPT-4o). llama.cpp replaced \p{Lu}/\p{Ll} by
// lookaheads with ASCII classes; \p{Lu} etc. that remain elsewhere match every letter there.
constexpr const char* kTekken =
    R"([^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*)"
    R"(|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr const char* kGpt4o =
    R"([^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+)" TWINFER_CONTRACTIONS
    R"(?|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*)" TWINFER_CONTRACTIONS
    R"(?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr const char* kGraniteMulti =
    R"([^\r\n\p{L}\p{N}]?((?=[\p{L}\p{M}])([^a-z]))*((?=[\p{L}\p{M}])([^A-Z]))+)" TWINFER_CONTRACTIONS
    R"(?|[^\r\n\p{L}\p{N}]?((?=[\p{L}\p{M}])([^a-z]))+((?=[\p{L}\p{M}])([^A-Z]))*)" TWINFER_CONTRACTIONS
    R"(?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
#define TWINFER_CASED_WORDS                                                                          \
    R"([^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+)" TWINFER_CONTRACTIONS \
    R"(?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*)" TWINFER_CONTRACTIONS "?"
constexpr const char* kYoutu = TWINFER_CASED_WORDS R"(|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr const char* kTinyAya = TWINFER_CASED_WORDS R"(|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
#undef TWINFER_CASED_WORDS
#undef TWINFER_CONTRACTIONS
// DeepSeek V3 and its kin: ASCII punctuation glued to a following ASCII word, letters with marks.
constexpr const char* kDeepseek3 =
    R"re([!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)re";
constexpr const char* kSpark25 =
    R"re([!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+|[\r\n]|\s+(?!\S)|\s+)re";
// A run of digits cut into threes from the right (llama.cpp's unicode_regex_split_custom_afmoe).
constexpr const char* kDigitsInThrees = R"(\p{N}{1,2}(?=(?:\p{N}{3})*(?!\p{N}))|\p{N}{3})";
constexpr const char* kNewlineRuns = R"([^\n]+|\n+)";
// Kimi-K2's tokenizer (llama.cpp's unicode_regex_split_custom_kimi_k2): Han runs apart, then a
// Llama-3-like split whose words hold no Han. "Han" is llama.cpp's list of CJK ideograph blocks.
#define TWINFER_HAN R"([\x{3400}-\x{4DBF}\x{4E00}-\x{9FFF}\x{F900}-\x{FAFF}\x{20000}-\x{2A6DF}\x{2A700}-\x{2EBEF}\x{2F800}-\x{2FA1F}])"
constexpr const char* kKimiK2 = TWINFER_HAN R"(+|[^\r\n\p{L}\p{N}]?(?:(?!)" TWINFER_HAN
    R"()\p{L})+(?:'[sStTmMdD]|'[rR][eE]|'[vV][eE]|'[lL][lL])?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
#undef TWINFER_HAN
// Bloom-style: everything between spaces and a few sentence marks (. , ! ? … 。 ， 、 । ۔ ،).
constexpr const char* kSentenceMarks = R"( ?[^(\s|.,!?\x{2026}\x{3002}\x{FF0C}\x{3001}\x{964}\x{6D4}\x{60C})]+)";

// Regexes with explicit non-ASCII ranges run in llama.cpp through std::wregex after every
// non-ASCII white space became \v, so such a character never matches a range that spans it (the
// first CJK range spans U+1680, U+2000-U+200A, U+2028/9, U+202F, U+205F, U+3000): (?!\s) says so.
constexpr const char* kCjk = R"((?:(?!\s)[\x{4E00}-\x{9FA5}\x{800}-\x{4E00}\x{AC00}-\x{D7FF}])+)";
constexpr const char* kCjkKana = R"([\x{4E00}-\x{9FA5}\x{3040}-\x{309F}\x{30A0}-\x{30FF}]+)";
constexpr const char* kYoutuCjk =
    R"([\x{AC00}-\x{D7A3}\x{3131}-\x{318E}]+|[\x{FF01}\x{2026}\x{201C}\x{201D}\x{2018}\x{2019}\x{2014}\x{FF1A}\x{FF1B}\x{FF0C}\x{3001}-\x{303F}\x{FE30}-\x{FE4F}]+)"
    R"(|[\x{3105}-\x{312F}]+|[\x{4E00}-\x{9FA5}\x{3040}-\x{309F}\x{30A0}-\x{30FF}]+)";
// U+8C48 (not U+F900) is where llama.cpp's second range starts.
constexpr const char* kAfmoeAsian =
    R"([\x{4E00}-\x{9FFF}\x{3400}-\x{4DBF}\x{8C48}-\x{FAFF}\x{3040}-\x{309F}\x{30A0}-\x{30FF}\x{FF65}-\x{FF9F}\x{2F00}-\x{2FDF})"
    R"(\x{E40}-\x{E7F}\x{E80}-\x{EFF}\x{1780}-\x{17FF}\x{1000}-\x{109F}\x{AA60}-\x{AA7F}\x{A9E0}-\x{A9FF}\x{AC00}-\x{D7AF}\x{1100}-\x{11FF}]+)";
constexpr const char* kDeepseekLatin =
    R"(\s?[A-Za-z\x{B5}\x{C0}-\x{D6}\x{D8}-\x{F6}\x{F8}-\x{1BA}\x{1BC}-\x{1BF}\x{1C4}-\x{293}\x{295}-\x{2AF}\x{370}-\x{373})"
    R"(\x{376}\x{377}\x{37B}-\x{37D}\x{37F}\x{386}\x{388}-\x{38A}\x{38C}\x{38E}-\x{3A1}\x{3A3}-\x{3F5}\x{3F7}-\x{481})"
    R"(\x{48A}-\x{52F}\x{531}-\x{556}\x{10A0}-\x{10C5}\x{13A0}-\x{13F5}\x{13F8}-\x{13FD}\x{1C90}-\x{1CBA}\x{1CBD}-\x{1CBF})"
    R"(\x{1D00}-\x{1D2B}\x{1D6B}-\x{1D77}\x{1D79}-\x{1D9A}\x{1E00}-\x{1F15}\x{1F18}-\x{1F1D}\x{1F20}-\x{1F45}\x{1F48}-\x{1F4D})"
    R"(\x{1F50}-\x{1F57}\x{1F59}\x{1F5B}\x{1F5D}\x{1F5F}-\x{1F7D}\x{1F80}-\x{1FB4}\x{1FB6}-\x{1FBC}\x{1FBE}\x{1FC2}-\x{1FC4})"
    R"(\x{1FC6}-\x{1FCC}\x{1FD0}-\x{1FD3}\x{1FD6}-\x{1FDB}\x{1FE0}-\x{1FEC}\x{1FF2}-\x{1FF4}\x{1FF6}-\x{1FFC}\x{2102}\x{2107})"
    R"(\x{210A}-\x{2113}\x{2115}\x{2119}-\x{211D}\x{2124}\x{2126}\x{2128}\x{212A}-\x{212D}\x{212F}-\x{2134}\x{2139}\x{213C}-\x{213F})"
    R"(\x{2145}-\x{2149}\x{214E}\x{2183}\x{2184}\x{2C00}-\x{2C7B}\x{2C7E}-\x{2CE4}\x{2CEB}-\x{2CEE}\x{2CF2}\x{2CF3}\x{A640}-\x{A66D})"
    R"(\x{A680}-\x{A69B}\x{A722}-\x{A76F}\x{A771}-\x{A787}\x{A78B}-\x{A78E}\x{AB70}-\x{ABBF}\x{FB00}-\x{FB06}\x{FB13}-\x{FB17})"
    R"(\x{FF21}-\x{FF3A}\x{FF41}-\x{FF5A}\x{10400}-\x{1044F}\x{104B0}-\x{104D3}\x{104D8}-\x{104FB}\x{10C80}-\x{10CB2})"
    R"(\x{10CC0}-\x{10CF2}\x{118A0}-\x{118DF}\x{1E900}-\x{1E943}]+)";
// U+3000 (ideographic space) starts llama.cpp's range U+3000-U+3002 but, being white space, never matches.
constexpr const char* kDeepseekPunct = R"(\s?[!-/:-~\x{FF01}-\x{FF0F}\x{FF1A}-\x{FF5E}\x{2018}-\x{201F}\x{3001}\x{3002}]+)";

// llama.cpp's white space (unicode_cpt_flags::is_whitespace): its hand-written matchers test it,
// and its std::regex fallback maps non-ASCII white space to \v so that \s matches it. PCRE2's \s
// leaves out U+0085, so \s is spelled out.
constexpr std::string_view kWhiteSpace = R"(\t-\r \x{85}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000})";

// A regex written as llama.cpp writes it, in PCRE2 with llama.cpp's meaning: \s and \S as above;
// \d is ASCII (std::regex); \p{Lu}, \p{Ll}, \p{Lt}, \p{Lm}, \p{Lo} are any letter, as llama.cpp
// classifies each code point by one flag and its letter flag covers them all.
std::string to_pcre2(std::string_view regex) {
    std::string out;
    bool in_class = false;
    for (size_t i = 0; i < regex.size(); ++i) {
        const char c = regex[i];
        if (c == '\\' && i + 1 < regex.size()) {
            const char e = regex[++i];
            if (e == 's' || e == 'd') {
                const std::string_view set = e == 's' ? kWhiteSpace : "0-9";
                out += in_class ? std::string(set) : "[" + std::string(set) + "]";
            } else if (e == 'S' && !in_class) {
                out += "[^" + std::string(kWhiteSpace) + "]";
            } else if (e == 'p' && regex.substr(i + 1, 2) == "{L" && i + 4 < regex.size() && regex[i + 4] == '}') {
                out += "\\p{L}";
                i += 4;
            } else {
                out += c;
                out += e;
            }
            continue;
        }
        if (c == '[' && !in_class) in_class = true;
        else if (c == ']' && in_class) in_class = false;
        out += c;
    }
    return out;
}

enum Flag : unsigned {
    kIgnoreMerges = 1,
    kAddBos = 2,
    kAlwaysAddBos = 4,
    kRawUtf8 = 8,
    kEscapeSpaces = 16,
    kNewlineRunsWhole = 32,
    kMergesOptional = 64,
};

struct Family {
    std::vector<std::string_view> names;
    std::vector<const char*> regexes;
    unsigned flags = 0;
};

// llama.cpp's `tokenizer.ggml.pre` names (llama_vocab::impl::load), grouped by the regexes and
// flags they get there. clean_spaces and add_sep only change detokenizing and BERT-style
// encoding, which twinfer does not follow; the BOS default of llama.cpp's BPE vocabularies (id
// 11, none for ChatGLM) is not followed either: twinfer takes BOS from the file only.
const std::vector<Family>& families() {
    static const std::vector<Family> table = {
        {{"default"}, {R"([\p{P}\$\+<=>\^~\|]+)", kGpt2, R"(\p{N}+)", "[0-9][0-9][0-9]"}},
        {{"minicpm5"}, {R"(\p{N}{1,3})", kMinicpm5}, kIgnoreMerges},
        {{"llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2", "jina-v5-nano"},
         {kLlama3},
         kIgnoreMerges | kAddBos},
        {{"deepseek-llm"}, {"[\r\n]", kDeepseekLatin, kDeepseekPunct, R"(\s+$)", kCjk, R"(\p{N}+)"}},
        {{"deepseek-coder"}, {"[\r\n]", R"(\s?\p{L}+)", R"(\s?\p{P}+)", kCjk, R"(\p{N})"}},
        {{"deepseek-v3", "hunyuan-dense", "joyai-llm", "hy_v4"}, {R"(\p{N}{1,3})", kCjkKana, kDeepseek3}},
        {{"spark2_5"}, {R"(\p{N}{1,3})", kCjkKana, kSpark25, R"(\p{N})"}},
        {{"youtu"}, {kYoutuCjk, kYoutu}, kIgnoreMerges},
        {{"falcon"}, {R"([\p{P}\$\+<=>\^~\|`]+)", kGpt2, "[0-9][0-9][0-9]"}},
        {{"starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b", "mellum2"},
         {R"(\p{N})", kGpt2}},
        {{"gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de", "a.x-4.0", "mellum",
          "modern-bert", "jina-v1-en", "jina-v2-code", "roberta-bpe", "mpt", "olmo", "jais", "exaone4", "trillion",
          "granite-docling"},
         {kGpt2}},
        {{"jais-2"}, {kJais2}},
        {{"gemma4", "granite-embed-multi-311m"}, {kNewlineRuns}, kRawUtf8 | kEscapeSpaces | kNewlineRunsWhole | kAlwaysAddBos},
        {{"sarvam-moe"}, {kNewlineRuns}, kRawUtf8 | kEscapeSpaces},
        {{"whitespace"}, {R"(\S+)"}, kRawUtf8},
        {{"qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez", "stablelm2", "hunyuan", "solar-open", "grok-2"},
         {kQwen2}},
        {{"qwen35"}, {kQwen35}},
        {{"dbrx", "smaug-bpe", "chatglm-bpe"}, {kLlama3}},
        {{"glm4", "glm5"}, {kLlama3}, kIgnoreMerges},
        {{"poro-chat", "bloom", "gpt3-finnish"}, {kSentenceMarks}},
        {{"viking"}, {kSentenceMarks, R"(\p{N})"}},
        {{"tekken"}, {kTekken}, kIgnoreMerges | kAddBos},
        {{"chameleon"},
         {"<sentinel:[0-9]+>", "(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z", R"(([\t\n]|    |  ))", R"(\p{N})",
          R"([\p{P}!-/:-@\[-`{-~])", kGpt2},
         kAddBos},
        {{"gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"}, {kGpt4o}},
        {{"granite-embed-multi-97m"}, {kGraniteMulti}, kIgnoreMerges},
        {{"tiny_aya", "cohere2moe"}, {kDigitsInThrees, kTinyAya}},
        {{"superbpe"}, {R"(\p{N}+)", R"((?=(\d{3})+(?!\d)))"}},
        {{"bailingmoe", "bailingmoe2", "llada-moe"}, {kBailing}},
        {{"seed-coder"}, {kSeedCoder}},
        {{"kimi-k2"}, {kKimiK2}, kMergesOptional},
        {{"ufakzeka"}, {kUfakzeka}},
        {{"afmoe"}, {kDigitsInThrees, kAfmoeAsian, kDeepseek3}},
        {{"laguna"}, {kNewlineRuns, kQwen2}},
        {{"exaone-moe"}, {kExaoneMoe}},
    };
    return table;
}

}  // namespace

PreTokenizerSpec pre_tokenizer_spec(std::string_view pre) {
    for (const auto& family : families()) {
        if (std::find(family.names.begin(), family.names.end(), pre) == family.names.end()) continue;
        PreTokenizerSpec spec;
        spec.name = std::string(pre);
        for (const char* regex : family.regexes) spec.regexes.push_back(to_pcre2(regex));
        spec.ignore_merges = family.flags & kIgnoreMerges;
        spec.default_add_bos = family.flags & (kAddBos | kAlwaysAddBos);
        spec.always_add_bos = family.flags & kAlwaysAddBos;
        spec.byte_level = !(family.flags & kRawUtf8);
        spec.escape_spaces = family.flags & kEscapeSpaces;
        spec.newline_runs_whole = family.flags & kNewlineRunsWhole;
        spec.merges_optional = family.flags & kMergesOptional;
        return spec;
    }
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
                                       PCRE2_UTF | PCRE2_UCP | PCRE2_DOLLAR_ENDONLY, &error, &error_offset, nullptr);
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
            uint32_t options = 0;
            while (start <= length) {
                const int rc = pcre2_match(compiled->code, base, length, start, PCRE2_NO_UTF_CHECK | options, match, nullptr);
                if (rc == PCRE2_ERROR_NOMATCH) {
                    // As std::regex_iterator, which llama.cpp uses: after an empty match, a
                    // non-empty one at the same place, else the search goes on a character later.
                    if (options == 0 || start == length) break;
                    options = 0;
                    start += utf8_sequence_length(static_cast<uint8_t>(subject[piece.begin + start]));
                    continue;
                }
                if (rc < 0) {
                    pcre2_match_data_free(match);
                    throw TokenizerError("pre-tokenizer: PCRE2 match failed with code " + std::to_string(rc));
                }
                const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(match);
                const size_t m_begin = ovector[0], m_end = ovector[1];
                // An empty match only cuts the piece there (superbpe's digit-group lookahead).
                if (m_begin > emitted) next.push_back({piece.begin + emitted, piece.begin + m_begin});
                if (m_end > m_begin) next.push_back({piece.begin + m_begin, piece.begin + m_end});
                emitted = start = m_end;
                options = m_end == m_begin ? PCRE2_NOTEMPTY_ATSTART | PCRE2_ANCHORED : 0;
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
