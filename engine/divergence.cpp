#include "engine/divergence.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "engine/sampler.hpp"

namespace twinfer {
namespace {
// log sum exp, shifted by the maximum.
double log_sum_exp(std::span<const double> x) {
    const double m = *std::max_element(x.begin(), x.end());
    double s = 0;
    for (double v : x) s += std::exp(v - m);
    return m + std::log(s);
}
}  // namespace

PositionDivergence compare_logits(std::span<const double> ref, std::span<const double> fast) {
    if (ref.size() != fast.size() || ref.empty()) throw std::invalid_argument("compare_logits: rows differ in size");
    PositionDivergence d;
    const double lse_ref = log_sum_exp(ref), lse_fast = log_sum_exp(fast);
    for (size_t i = 0; i < ref.size(); ++i) {
        d.max_abs_diff = std::max(d.max_abs_diff, std::abs(fast[i] - ref[i]));
        d.max_abs_ref = std::max(d.max_abs_ref, std::abs(ref[i]));
        const double log_p = ref[i] - lse_ref, log_q = fast[i] - lse_fast;
        d.kl += std::exp(log_p) * (log_p - log_q);
    }
    d.ref_top1 = argmax(ref);
    d.fast_top1 = argmax(fast);
    d.ref_top1_logits = {ref[size_t(d.ref_top1)], fast[size_t(d.ref_top1)]};
    d.fast_top1_logits = {ref[size_t(d.fast_top1)], fast[size_t(d.fast_top1)]};
    return d;
}

DivergenceSummary summarize(std::span<const PositionDivergence> rows) {
    DivergenceSummary s;
    s.positions = rows.size();
    if (rows.empty()) return s;
    std::vector<double> kl;
    for (const auto& r : rows) {
        s.same_top += r.top1_agrees();
        s.worst_relative = std::max(s.worst_relative, r.relative());
        s.mean_kl += r.kl;
        kl.push_back(r.kl);
    }
    s.mean_kl /= double(rows.size());
    std::sort(kl.begin(), kl.end());
    s.kl_max = kl.back();
    s.kl_p99 = kl[std::min(kl.size() - 1, size_t(std::ceil(0.99 * double(kl.size()))) - 1)];
    return s;
}

std::vector<PositionDivergence> compare_logits(const Logits& ref, const Logits& fast) {
    if (ref.n_vocab != fast.n_vocab || ref.n_positions != fast.n_positions)
        throw std::invalid_argument("compare_logits: shapes differ (" + std::to_string(ref.n_positions) + "x" + std::to_string(ref.n_vocab) +
                                    " vs " + std::to_string(fast.n_positions) + "x" + std::to_string(fast.n_vocab) + ")");
    std::vector<PositionDivergence> out;
    for (size_t p = 0; p < ref.n_positions; ++p) out.push_back(compare_logits(ref.row(p), fast.row(p)));
    return out;
}

double negative_log_likelihood(std::span<const double> logits, Token target) {
    if (target < 0 || static_cast<size_t>(target) >= logits.size()) throw std::out_of_range("token id outside the vocabulary");
    return log_sum_exp(logits) - logits[target];
}

}  // namespace twinfer
