#pragma once
// How far one model's logits stray from another's, position by position: the numbers `verify`
// prints and the tests assert on. Also the per-token negative log-likelihood perplexity needs.
#include <span>
#include <vector>

#include "models/inference.hpp"

namespace twinfer {

struct PositionDivergence {
    double max_abs_diff = 0;     // max_v |fast - ref|
    double max_abs_ref = 0;      // max_v |ref|, to make the first relative
    double kl = 0;               // KL(softmax(ref) || softmax(fast)), nats
    Token ref_top1 = 0;
    Token fast_top1 = 0;
    bool top1_agrees() const { return ref_top1 == fast_top1; }
    double relative() const { return max_abs_ref > 0 ? max_abs_diff / max_abs_ref : max_abs_diff; }
};

PositionDivergence compare_logits(std::span<const double> ref, std::span<const double> fast);
std::vector<PositionDivergence> compare_logits(const Logits& ref, const Logits& fast);  // throws on shape mismatch

// -log softmax(logits)[target], computed stably in float64.
double negative_log_likelihood(std::span<const double> logits, Token target);

}  // namespace twinfer
