#pragma once
// The sampler chain: small stages, each doing one thing to a list of candidates, run in order,
// then a final draw (greedy, or seeded random). Like llama.cpp's llama-sampling, without virtual
// dispatch: a stage is one alternative of a std::variant.
//
// Default order (llama.cpp's): logit bias, penalties, top-k, typical, top-p, min-p, temperature.
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <random>
#include <span>
#include <string>
#include <variant>
#include <vector>

namespace twinfer {

using Token = int32_t;

struct Candidate {
    Token id;
    float logit;
    float p;  // probability; valid after softmax()
};

// The working list a sampler chain operates on; one per sampling call.
struct Candidates {
    std::vector<Candidate> items;
    bool sorted = false;  // by logit, descending, the lower id first among equal logits

    static Candidates from_logits(std::span<const double> logits);
    static Candidates from_logits(std::span<const float> logits);
    void sort_descending();
    void softmax();       // sorts, then normalize()
    // Sets p from the logits (max-subtracted, float64 sum over the candidates in their order)
    // without sorting them.
    void normalize();
    float max_logit() const;   // the front's where sorted; items non-empty
    void truncate(size_t n) { if (n < items.size()) items.resize(n); }
};

// Lists longer than this (a whole vocabulary, when no top-k came first) are not sorted whole by
// top-p, min-p or the draw: top-p finds its cut through buckets of the logits and sorts only the
// bucket it falls in, min-p compares logits with the largest, the draw walks the list as it is.
// (Sorting 49,152 candidates took ~3 ms a token.)
constexpr size_t sort_whole_up_to = 1024;

namespace sampling {

struct LogitBias {
    std::map<Token, float> bias;  // added to the logit; -inf bans a token
    void apply(Candidates& c) const;
};

// Repetition penalty (divide positive logits, multiply negative ones, as llama.cpp and CTRL),
// then presence and frequency penalties, over the last `last_n` accepted tokens.
struct Penalties {
    int last_n = 64;
    float repeat = 1.0f;
    float frequency = 0.0f;
    float presence = 0.0f;
    std::deque<Token> history;
    void apply(Candidates& c) const;
    void accept(Token t);
    void reset() { history.clear(); }
};

struct TopK { int k = 40; void apply(Candidates& c) const; };            // k <= 0: off
struct TopP { float p = 0.95f; size_t min_keep = 1; void apply(Candidates& c) const; };   // p >= 1: off
struct MinP { float p = 0.05f; size_t min_keep = 1; void apply(Candidates& c) const; };   // p <= 0: off
struct Typical { float p = 1.0f; size_t min_keep = 1; void apply(Candidates& c) const; }; // p >= 1: off
struct Temperature { float t = 0.8f; void apply(Candidates& c) const; };  // divides logits

using Stage = std::variant<LogitBias, Penalties, TopK, Typical, TopP, MinP, Temperature>;

std::string stage_name(const Stage& s);

}  // namespace sampling

struct SamplingParams {
    float temperature = 0.8f;   // <= 0: greedy
    int top_k = 40;
    float top_p = 0.95f;
    float min_p = 0.05f;
    float typical_p = 1.0f;
    float repeat_penalty = 1.0f;
    int repeat_last_n = 64;
    float frequency_penalty = 0.0f;
    float presence_penalty = 0.0f;
    uint64_t seed = 0xFFFFFFFF;  // 0xFFFFFFFF (llama.cpp's LLAMA_DEFAULT_SEED): a random seed
    std::map<Token, float> logit_bias;

    void validate() const;  // throws std::invalid_argument naming the bad value
};

class SamplerChain {
public:
    explicit SamplerChain(const SamplingParams& params);

    // Picks the next token from a row of logits; does not record it (call accept()).
    Token sample(std::span<const double> logits);
    // The k of a top-k stage that comes first in the chain (nothing before it changes the
    // logits; not greedy), else 0: that stage can then run where the logits are (a model's
    // forward_top_k) and sample_top() finish the chain on the k candidates it leaves.
    size_t leading_top_k() const;
    // sample() given what the leading top-k stage leaves: ids and logits, largest first, the lower
    // id first among equal logits (TopLogits). The same token as sample() on the whole row.
    Token sample_top(std::span<const Token> ids, std::span<const float> logits);
    // sample() where only the tokens `allows` accepts may come (structured output): the draw is
    // from the allowed tokens' renormalized distribution, as sample() on logits with every other
    // token at -inf. `list` gives every allowed token. Where no stage cuts the list (top-k,
    // typical, top-p, min-p), a token is drawn from the whole row and, if refused, struck out and
    // the draw repeated, which draws from the same distribution while testing a token or two;
    // otherwise, and after max_struck refusals, the chain runs on the listed tokens alone.
    // Throws std::runtime_error when no token is allowed.
    Token sample_allowed(std::span<const double> logits, const std::function<bool(Token)>& allows,
                         const std::function<std::vector<Token>()>& list);
    static constexpr size_t max_struck = 8;
    void accept(Token t);   // the token was emitted: feeds the penalty history
    void reset();           // a new conversation

    bool greedy() const { return greedy_; }
    // sample() is the logits' argmax whatever came before: greedy, no stage changing a logit.
    bool only_argmax() const { return greedy_ && stages_.empty(); }
    uint64_t seed() const { return seed_; }
    const std::vector<sampling::Stage>& stages() const { return stages_; }
    std::string describe() const;

private:
    Token draw(Candidates& c);   // the stages' result to one token (greedy, or the seeded draw)
    std::vector<sampling::Stage> stages_;
    bool greedy_ = false;
    uint64_t seed_ = 0;
    std::mt19937_64 rng_;
};

// Index of the largest value; the lowest index among ties (as argmax everywhere else here).
Token argmax(std::span<const double> logits);

}  // namespace twinfer
