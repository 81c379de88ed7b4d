#pragma once
// The one interface every model satisfies (docs/design.md, "The interface"): feed tokens after
// what the model has seen, get logits; read the config; forget the sequence. The engine, `verify`
// and the tests run any model against any other through it, dispatched statically.
#include <concepts>
#include <cstddef>
#include <cstdint>
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
