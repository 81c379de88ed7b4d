#pragma once
// How far one model's logits stray from another's, position by position: the numbers `verify`
// prints and the tests assert on. Also the per-token negative log-likelihood perplexity needs.
#include <span>
#include <vector>

#include "models/inference.hpp"

namespace twinfer {

// One token's logits in both rows.
struct LogitPair {
    double ref = 0;
    double fast = 0;
};

struct PositionDivergence {
    double max_abs_diff = 0;     // max_v |fast - ref|
    double max_abs_ref = 0;      // max_v |ref|, to make the first relative
    double kl = 0;               // KL(softmax(ref) || softmax(fast)), nats
    Token ref_top1 = 0;
    Token fast_top1 = 0;
    LogitPair ref_top1_logits;   // the reference's argmax in both rows
    LogitPair fast_top1_logits;  // the fast row's argmax in both rows
    bool top1_agrees() const { return ref_top1 == fast_top1; }
    double relative() const { return max_abs_ref > 0 ? max_abs_diff / max_abs_ref : max_abs_diff; }
};

PositionDivergence compare_logits(std::span<const double> ref, std::span<const double> fast);
std::vector<PositionDivergence> compare_logits(const Logits& ref, const Logits& fast);  // throws on shape mismatch

// A set of positions in a few numbers, as llama-perplexity --kl-divergence reports them.
struct DivergenceSummary {
    size_t positions = 0;
    size_t same_top = 0;         // positions whose argmax is the reference's
    double worst_relative = 0;
    double mean_kl = 0;
    double kl_p99 = 0;           // 99th percentile of KL (nearest rank)
    double kl_max = 0;
    double same_top_share() const { return positions ? double(same_top) / double(positions) : 0; }
};
DivergenceSummary summarize(std::span<const PositionDivergence> rows);

// -log softmax(logits)[target], computed stably in float64.
double negative_log_likelihood(std::span<const double> logits, Token target);

}  // namespace twinfer
