#pragma once
// The one interface every model satisfies (docs/design.md, "The interface"): feed tokens after
// what the model has seen, get logits; read the config; forget the sequence. The engine, `verify`
// and the tests run any model against any other through it, dispatched statically.
#include <algorithm>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <numeric>
#include <span>
#include <vector>

#include "models/model_config.hpp"

namespace twinfer {

using Token = int32_t;

enum class LogitsMode { Last, All };

// Row-major [n_positions, n_vocab]. float64 so the reference's logits are kept exactly; the
// float32 models widen theirs (one row per decode step: negligible).
struct Logits {
    size_t n_vocab = 0;
    size_t n_positions = 0;
    std::vector<double> values;

    std::span<const double> row(size_t position) const { return {values.data() + position * n_vocab, n_vocab}; }
    std::span<const double> last() const { return row(n_positions - 1); }
};

// The k largest logits of one position and their token ids, largest first, the lower id first
// among equal logits: what a sampler chain's top-k keeps (SamplerChain::sample_top). A model that
// can computes it where its logits are (forward_top_k: on a GPU only the k pairs come back).
struct TopLogits {
    std::vector<Token> ids;
    std::vector<float> logits;
};

// The same from the last row of logits on the host (k at most n_vocab).
inline TopLogits top_logits_of_last(const Logits& logits, size_t k) {
    const auto row = logits.last();
    std::vector<Token> order(row.size());
    std::iota(order.begin(), order.end(), Token{0});
    k = std::min(k, order.size());
    std::partial_sort(order.begin(), order.begin() + std::ptrdiff_t(k), order.end(), [&](Token a, Token b) {
        const float x = float(row[size_t(a)]), y = float(row[size_t(b)]);
        return x > y || (x == y && a < b);
    });
    TopLogits top;
    for (size_t r = 0; r < k; ++r) top.ids.push_back(order[r]), top.logits.push_back(float(row[size_t(order[r])]));
    return top;
}

// A sequence that would not fit in the model's context: an error, never silent truncation.
struct ContextOverflow : std::runtime_error {
    using std::runtime_error::runtime_error;
};

template <class M>
concept GPTInference = requires(M& m, const M& cm, std::span<const Token> ids, LogitsMode mode) {
    { m.forward(ids) } -> std::same_as<Logits>;          // logits of the last position
    { m.forward(ids, mode) } -> std::same_as<Logits>;    // or of every position fed
    { cm.config() } -> std::same_as<const ModelConfig&>;
    { cm.n_past() } -> std::convertible_to<size_t>;      // tokens seen since clear_cache()
    { cm.n_ctx() } -> std::convertible_to<size_t>;       // the most tokens the model can hold
    { m.clear_cache() };
};

}  // namespace twinfer
