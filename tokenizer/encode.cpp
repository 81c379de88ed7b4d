// The two merge loops, written after llama.cpp's llm_tokenizer_bpe_session and
// llm_tokenizer_spm_session so that ties and fallbacks come out the same.
#include <queue>

#include "tokenizer/utf8.hpp"
#include "tokenizer/vocabulary.hpp"

namespace twinfer::tokenizer_detail {

namespace {

// A piece of the word being merged: a byte range of it, linked to its live neighbours.
struct Symbol {
    int prev, next;
    size_t begin, size;
};

std::vector<Symbol> split_into_characters(std::string_view text) {
    std::vector<Symbol> symbols;
    symbols.reserve(text.size());
    size_t offset = 0;
    int index = 0;
    while (offset < text.size()) {
        const size_t size = std::min(utf8_sequence_length(static_cast<uint8_t>(text[offset])), text.size() - offset);
        symbols.push_back({index - 1, offset + size == text.size() ? -1 : index + 1, offset, size});
        offset += size;
        ++index;
    }
    return symbols;
}

// Merge the right symbol into the left one and unlink it.
void merge_symbols(std::vector<Symbol>& symbols, int left, int right) {
    Symbol& l = symbols[left];
    Symbol& r = symbols[right];
    l.size += r.size;
    r.size = 0;
    l.next = r.next;
    if (r.next >= 0) symbols[r.next].prev = left;
}

struct BpeBigram {
    int left, right;
    int32_t rank;
    size_t size;
};
struct BpeOrder {  // lowest rank first, then leftmost
    bool operator()(const BpeBigram& l, const BpeBigram& r) const {
        return l.rank > r.rank || (l.rank == r.rank && l.left > r.left);
    }
};

struct SpmBigram {
    int left, right;
    float score;
    size_t size;
};
struct SpmOrder {  // highest score first, then leftmost
    bool operator()(const SpmBigram& l, const SpmBigram& r) const {
        return l.score < r.score || (l.score == r.score && l.left > r.left);
    }
};

// The merge loop BPE and SentencePiece share: queues every neighbouring pair (add_bigram queues a
// pair the vocabulary can merge), then merges the best pair in the queue until none is left,
// queueing the merged symbol's pairs with its neighbours. A popped pair is skipped as outdated
// when one side was merged away or grew since it was queued.
template <class Queue, class AddBigram>
void merge_best_pairs(std::vector<Symbol>& symbols, Queue& queue, AddBigram&& add_bigram) {
    for (int i = 1; i < static_cast<int>(symbols.size()); ++i) add_bigram(i - 1, i);
    while (!queue.empty()) {
        const auto bigram = queue.top();
        queue.pop();
        const Symbol& l = symbols[bigram.left];
        const Symbol& r = symbols[bigram.right];
        if (l.size == 0 || r.size == 0 || l.size + r.size != bigram.size) continue;
        merge_symbols(symbols, bigram.left, bigram.right);
        add_bigram(symbols[bigram.left].prev, bigram.left);
        add_bigram(bigram.left, symbols[bigram.left].next);
    }
}

Token byte_token(const Vocabulary& v, uint8_t byte) {
    if (v.byte_tokens[byte]) return *v.byte_tokens[byte];
    if (v.unk) return *v.unk;
    throw TokenizerError("vocabulary has neither a byte token " + byte_token_name(byte) + " nor an unknown token");
}

}  // namespace

int32_t Vocabulary::merge_rank(std::string_view left, std::string_view right, std::string& scratch) const {
    scratch.assign(left);
    scratch.push_back(' ');
    scratch.append(right);
    auto it = merge_ranks.find(std::string_view(scratch));
    return it == merge_ranks.end() ? -1 : it->second;
}

void encode_bpe_fragment(const Vocabulary& v, std::string_view text, std::vector<Token>& output) {
    const auto& byte_map = byte_to_unicode();
    std::string word, scratch;
    std::priority_queue<BpeBigram, std::vector<BpeBigram>, BpeOrder> queue;
    for (const std::string& raw_word : v.pre_tokenizer->split(text)) {
        word.clear();
        if (v.pre.byte_level)
            for (char c : raw_word) word += byte_map[static_cast<uint8_t>(c)];
        else word = raw_word;
        if (v.pre.ignore_merges || (v.pre.newline_runs_whole && word.find_first_not_of('\n') == std::string::npos)) {
            if (auto id = v.find(word)) {
                output.push_back(*id);
                continue;
            }
        }
        std::vector<Symbol> symbols = split_into_characters(word);
        auto view = [&](const Symbol& s) { return std::string_view(word).substr(s.begin, s.size); };
        auto add_bigram = [&](int left, int right) {
            if (left < 0 || right < 0) return;
            const int32_t rank = v.merge_rank(view(symbols[left]), view(symbols[right]), scratch);
            if (rank < 0) return;
            queue.push({left, right, rank, symbols[left].size + symbols[right].size});
        };
        merge_best_pairs(symbols, queue, add_bigram);
        for (int i = symbols.empty() ? -1 : 0; i != -1; i = symbols[i].next) {
            const std::string_view piece = view(symbols[i]);
            if (auto id = v.find(piece)) {
                output.push_back(*id);
                continue;
            }
            // As llama.cpp: a piece outside the vocabulary is looked up byte by byte (the mapped
            // byte, or <0xNN> for raw UTF-8 words), and bytes without a token are dropped (a
            // complete byte-level vocabulary never gets here).
            for (char c : piece) {
                const auto id = v.pre.byte_level ? v.find(std::string_view(&c, 1))
                                                 : v.find(byte_token_name(static_cast<uint8_t>(c)));
                if (id) output.push_back(*id);
            }
        }
    }
}

void append_escaped_spaces(std::string& out, std::string_view text) {
    for (char c : text) {
        if (c == ' ') out += "\xE2\x96\x81";  // "▁"
        else out.push_back(c);
    }
}

void encode_spm_fragment(const Vocabulary& v, std::string_view text, std::vector<Token>& output) {
    std::vector<Symbol> symbols = split_into_characters(text);
    std::priority_queue<SpmBigram, std::vector<SpmBigram>, SpmOrder> queue;
    auto add_bigram = [&](int left, int right) {
        if (left < 0 || right < 0) return;
        const size_t size = symbols[left].size + symbols[right].size;
        auto id = v.find(text.substr(symbols[left].begin, size));
        if (!id) return;
        queue.push({left, right, v.tokens[*id].score, size});
    };
    merge_best_pairs(symbols, queue, add_bigram);
    // Every merged symbol is a token; a symbol still unknown is a single character outside the
    // vocabulary and falls back to its bytes. (llama.cpp's rev_merge resegmentation never
    // applies: no merged symbol can be missing from the vocabulary.)
    for (int i = symbols.empty() ? -1 : 0; i != -1; i = symbols[i].next) {
        const std::string_view piece = text.substr(symbols[i].begin, symbols[i].size);
        if (auto id = v.find(piece)) {
            output.push_back(*id);
            continue;
        }
        for (char c : piece) output.push_back(byte_token(v, static_cast<uint8_t>(c)));
    }
}

}  // namespace twinfer::tokenizer_detail
