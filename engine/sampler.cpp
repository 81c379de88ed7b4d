#include "engine/sampler.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <stdexcept>
#include <unordered_map>

namespace twinfer {

// ---------------------------------------------------------------------------------------------
// Candidates

namespace {
template <class T>
Candidates candidates_from(std::span<const T> logits) {
    Candidates c;
    c.items.resize(logits.size());
    for (size_t i = 0; i < logits.size(); ++i) c.items[i] = {static_cast<Token>(i), static_cast<float>(logits[i]), 0.0f};
    return c;
}
}  // namespace

Candidates Candidates::from_logits(std::span<const double> logits) { return candidates_from(logits); }
Candidates Candidates::from_logits(std::span<const float> logits) { return candidates_from(logits); }

namespace {
// Larger logit first, the lower token id first among equal logits (so that greedy and top-k agree
// with argmax): a total order, so any sort gives the one result.
bool before(const Candidate& a, const Candidate& b) { return a.logit > b.logit || (a.logit == b.logit && a.id < b.id); }
}  // namespace

void Candidates::sort_descending() {
    if (sorted) return;
    std::sort(items.begin(), items.end(), before);
    sorted = true;
}

void Candidates::softmax() {
    sort_descending();
    normalize();
}

float Candidates::max_logit() const {
    float largest = items.front().logit;
    if (!sorted)
        for (const auto& c : items) largest = std::max(largest, c.logit);
    return largest;
}

void Candidates::normalize() {
    if (items.empty()) return;
    const float largest = max_logit();
    double sum = 0.0;
    for (auto& c : items) {
        const double e = std::isinf(c.logit) && c.logit < 0 ? 0.0 : std::exp(double(c.logit) - largest);
        c.p = static_cast<float>(e);
        sum += e;
    }
    for (auto& c : items) c.p = static_cast<float>(c.p / sum);
}

// ---------------------------------------------------------------------------------------------
// Stages

namespace sampling {

void LogitBias::apply(Candidates& c) const {
    if (bias.empty()) return;
    for (auto& cand : c.items)
        if (auto it = bias.find(cand.id); it != bias.end()) cand.logit += it->second;
    c.sorted = false;
}

void Penalties::apply(Candidates& c) const {
    if (history.empty() || (repeat == 1.0f && frequency == 0.0f && presence == 0.0f)) return;
    std::unordered_map<Token, int> counts;
    for (Token t : history) ++counts[t];
    for (auto& cand : c.items) {
        const auto it = counts.find(cand.id);
        if (it == counts.end()) continue;
        // llama.cpp: divide a positive logit by the penalty, multiply a negative one, so the
        // token always becomes less likely.
        cand.logit = cand.logit <= 0 ? cand.logit * repeat : cand.logit / repeat;
        cand.logit -= float(it->second) * frequency + (it->second > 0 ? 1.0f : 0.0f) * presence;
    }
    c.sorted = false;
}

void Penalties::accept(Token t) {
    if (last_n <= 0) return;
    history.push_back(t);
    while (history.size() > static_cast<size_t>(last_n)) history.pop_front();
}

void TopK::apply(Candidates& c) const {
    if (k <= 0 || static_cast<size_t>(k) >= c.items.size()) return;
    if (!c.sorted) {
        std::partial_sort(c.items.begin(), c.items.begin() + k, c.items.end(), before);
        c.sorted = true;
    }
    c.truncate(static_cast<size_t>(k));
}

namespace {
// TopP over a whole unsorted list without sorting it: the probabilities, then 1,024 buckets of the
// logits between the smallest and the largest; from the top bucket down, the one where the mass
// reaches p. The candidates above it are all kept (in their order), those in it are sorted and
// kept until the mass reaches p, as the sorted scan would. False (nothing changed but p) where
// that cannot decide: all logits equal, or fewer than min_keep kept.
bool top_p_by_buckets(Candidates& c, float p, size_t min_keep) {
    c.normalize();
    float lo = INFINITY, hi = -INFINITY;
    for (const auto& cand : c.items)
        if (std::isfinite(cand.logit)) lo = std::min(lo, cand.logit), hi = std::max(hi, cand.logit);
    if (!(hi > lo)) return false;
    constexpr int n_buckets = 1024;
    const double scale = n_buckets / (double(hi) - double(lo));
    auto bucket_of = [&](float logit) {
        if (!(logit > lo)) return 0;   // -inf and NaN too
        if (logit >= hi) return n_buckets - 1;
        return std::min(n_buckets - 1, int((double(logit) - double(lo)) * scale));
    };
    std::vector<double> mass(n_buckets, 0.0);
    for (const auto& cand : c.items) mass[size_t(bucket_of(cand.logit))] += cand.p;
    int boundary = 0;
    double above = 0.0;
    for (int b = n_buckets - 1; b > 0; --b) {
        if (above + mass[size_t(b)] >= p) {
            boundary = b;
            break;
        }
        above += mass[size_t(b)];
    }
    std::vector<Candidate> kept, at_boundary;
    for (const auto& cand : c.items) {
        const int b = bucket_of(cand.logit);
        if (b > boundary) kept.push_back(cand);
        else if (b == boundary) at_boundary.push_back(cand);
    }
    std::sort(at_boundary.begin(), at_boundary.end(), before);
    double cumulative = 0.0;
    for (const auto& cand : kept) cumulative += cand.p;
    for (const auto& cand : at_boundary) {
        if (cumulative >= p && kept.size() >= min_keep) break;
        cumulative += cand.p;
        kept.push_back(cand);
    }
    if (kept.size() < min_keep) return false;
    c.items = std::move(kept);
    c.sorted = false;
    return true;
}
}  // namespace

void TopP::apply(Candidates& c) const {
    if (p >= 1.0f) return;
    if (!c.sorted && c.items.size() > sort_whole_up_to && top_p_by_buckets(c, p, min_keep)) return;
    c.softmax();
    double cumulative = 0.0;
    size_t keep = c.items.size();
    for (size_t i = 0; i < c.items.size(); ++i) {
        cumulative += c.items[i].p;
        // Keep the smallest prefix whose mass reaches p (and at least min_keep).
        if (cumulative >= p && i + 1 >= min_keep) {
            keep = i + 1;
            break;
        }
    }
    c.truncate(keep);
}

void MinP::apply(Candidates& c) const {
    if (p <= 0.0f || c.items.empty()) return;
    if (!c.sorted && c.items.size() > sort_whole_up_to) {
        // p_i >= p * p_max is logit_i >= max + log(p): kept in their order, unsorted.
        const double threshold = double(c.max_logit()) + std::log(double(p));
        std::vector<Candidate> kept;
        for (const auto& cand : c.items)
            if (double(cand.logit) >= threshold) kept.push_back(cand);
        if (kept.size() >= min_keep) {
            c.items = std::move(kept);
            return;
        }
    }
    c.softmax();
    const float threshold = c.items.front().p * p;
    size_t keep = 0;
    while (keep < c.items.size() && (c.items[keep].p >= threshold || keep < min_keep)) ++keep;
    c.truncate(keep);
}

void Typical::apply(Candidates& c) const {
    // Locally typical sampling (Meister et al. 2022): keep the tokens whose surprisal is closest
    // to the distribution's entropy until their mass reaches p.
    if (p >= 1.0f || c.items.empty()) return;
    c.softmax();
    double entropy = 0.0;
    for (const auto& cand : c.items)
        if (cand.p > 0) entropy -= cand.p * std::log(double(cand.p));
    std::vector<size_t> order(c.items.size());
    std::iota(order.begin(), order.end(), 0);
    auto deviation = [&](size_t i) { return std::abs(-std::log(double(c.items[i].p)) - entropy); };
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return deviation(a) < deviation(b); });
    double cumulative = 0.0;
    size_t keep = order.size();
    for (size_t i = 0; i < order.size(); ++i) {
        cumulative += c.items[order[i]].p;
        if (cumulative > p && i + 1 >= min_keep) {
            keep = i + 1;
            break;
        }
    }
    std::vector<Candidate> kept;
    kept.reserve(keep);
    for (size_t i = 0; i < keep; ++i) kept.push_back(c.items[order[i]]);
    c.items = std::move(kept);
    c.sorted = false;
}

void Temperature::apply(Candidates& c) const {
    if (t == 1.0f) return;
    for (auto& cand : c.items) cand.logit /= t;
}

std::string stage_name(const Stage& s) {
    return std::visit(
        [](const auto& stage) -> std::string {
            using T = std::decay_t<decltype(stage)>;
            if constexpr (std::is_same_v<T, LogitBias>) return "logit-bias";
            else if constexpr (std::is_same_v<T, Penalties>) return "penalties";
            else if constexpr (std::is_same_v<T, TopK>) return "top-k";
            else if constexpr (std::is_same_v<T, Typical>) return "typical";
            else if constexpr (std::is_same_v<T, TopP>) return "top-p";
            else if constexpr (std::is_same_v<T, MinP>) return "min-p";
            else return "temperature";
        },
        s);
}

}  // namespace sampling

// ---------------------------------------------------------------------------------------------
// Parameters and chain

void SamplingParams::validate() const {
    auto bad = [](const std::string& what) { throw std::invalid_argument(what); };
    if (!std::isfinite(temperature)) bad("--temperature must be a finite number");
    if (!(top_p >= 0.0f && top_p <= 1.0f)) bad("--top-p must be between 0 and 1, got " + std::to_string(top_p));
    if (!(min_p >= 0.0f && min_p <= 1.0f)) bad("--min-p must be between 0 and 1, got " + std::to_string(min_p));
    if (!(typical_p >= 0.0f && typical_p <= 1.0f)) bad("--typical must be between 0 and 1, got " + std::to_string(typical_p));
    if (!(repeat_penalty > 0.0f) || !std::isfinite(repeat_penalty)) bad("--repeat-penalty must be positive");
    if (repeat_last_n < -1) bad("--repeat-last-n must be -1 (whole context), 0 (off) or positive");
    if (top_k < 0) bad("--top-k must be 0 (off) or positive");
}

SamplerChain::SamplerChain(const SamplingParams& params) {
    params.validate();
    greedy_ = params.temperature <= 0.0f;
    seed_ = params.seed == 0xFFFFFFFF ? std::random_device{}() : params.seed;
    rng_.seed(seed_);
    if (!params.logit_bias.empty()) stages_.emplace_back(sampling::LogitBias{params.logit_bias});
    if (params.repeat_penalty != 1.0f || params.frequency_penalty != 0.0f || params.presence_penalty != 0.0f) {
        sampling::Penalties penalties;
        penalties.last_n = params.repeat_last_n == -1 ? std::numeric_limits<int>::max() : params.repeat_last_n;
        penalties.repeat = params.repeat_penalty;
        penalties.frequency = params.frequency_penalty;
        penalties.presence = params.presence_penalty;
        stages_.emplace_back(std::move(penalties));
    }
    if (greedy_) return;  // greedy needs only the adjusted logits
    if (params.top_k > 0) stages_.emplace_back(sampling::TopK{params.top_k});
    if (params.typical_p < 1.0f) stages_.emplace_back(sampling::Typical{params.typical_p});
    if (params.top_p < 1.0f) stages_.emplace_back(sampling::TopP{params.top_p});
    if (params.min_p > 0.0f) stages_.emplace_back(sampling::MinP{params.min_p});
    stages_.emplace_back(sampling::Temperature{params.temperature});
}

Token SamplerChain::sample(std::span<const double> logits) {
    if (logits.empty()) throw std::invalid_argument("sampling from an empty row of logits");
    if (greedy_ && stages_.empty()) return argmax(logits);
    Candidates c = Candidates::from_logits(logits);
    for (const auto& stage : stages_) std::visit([&](const auto& s) { s.apply(c); }, stage);
    return draw(c);
}

size_t SamplerChain::leading_top_k() const {
    if (greedy_ || stages_.empty()) return 0;
    const auto* top_k = std::get_if<sampling::TopK>(&stages_.front());
    return top_k && top_k->k > 0 ? static_cast<size_t>(top_k->k) : 0;
}

Token SamplerChain::sample_top(std::span<const Token> ids, std::span<const float> logits) {
    if (ids.empty() || ids.size() != logits.size() || ids.size() != leading_top_k())
        throw std::invalid_argument("sample_top: " + std::to_string(ids.size()) + " ids and " +
                                    std::to_string(logits.size()) + " logits for a leading top-k of " +
                                    std::to_string(leading_top_k()));
    Candidates c;
    c.items.reserve(ids.size());
    for (size_t i = 0; i < ids.size(); ++i) c.items.push_back({ids[i], logits[i], 0.0f});
    c.sorted = true;   // as TopK::apply leaves them
    for (size_t i = 1; i < stages_.size(); ++i) std::visit([&](const auto& s) { s.apply(c); }, stages_[i]);
    return draw(c);
}

Token SamplerChain::sample_allowed(std::span<const double> logits, const std::function<bool(Token)>& allows,
                                   const std::function<std::vector<Token>()>& list) {
    if (logits.empty()) throw std::invalid_argument("sampling from an empty row of logits");
    const bool pointwise = std::all_of(stages_.begin(), stages_.end(), [](const sampling::Stage& s) {
        return std::holds_alternative<sampling::LogitBias>(s) || std::holds_alternative<sampling::Penalties>(s) ||
               std::holds_alternative<sampling::Temperature>(s);
    });
    if (pointwise) {
        // Each stage changes one token's logit by itself, so striking a token out of the list
        // after the stages is striking it out before them.
        Candidates c = Candidates::from_logits(logits);
        for (const auto& stage : stages_) std::visit([&](const auto& s) { s.apply(c); }, stage);
        for (size_t struck = 0; struck < max_struck && !c.items.empty(); ++struck) {
            // Greedy: the largest without sorting the whole vocabulary.
            const Token t = greedy_ ? std::min_element(c.items.begin(), c.items.end(), before)->id : draw(c);
            if (allows(t)) return t;
            std::erase_if(c.items, [t](const Candidate& cand) { return cand.id == t; });
        }
    }
    const std::vector<Token> ids = list();
    if (ids.empty()) throw std::runtime_error("no token of the vocabulary may come next");
    Candidates c;
    c.items.reserve(ids.size());
    for (const Token t : ids) c.items.push_back({t, static_cast<float>(logits[size_t(t)]), 0.0f});
    for (const auto& stage : stages_) std::visit([&](const auto& s) { s.apply(c); }, stage);
    return draw(c);
}

Token SamplerChain::draw(Candidates& c) {
    if (greedy_) {
        c.sort_descending();
        return c.items.front().id;
    }
    // The candidates in the order the stages left them, short lists sorted: largest first after
    // top-k, top-p or min-p; a whole vocabulary that no stage cut is walked unsorted.
    if (c.items.size() <= sort_whole_up_to) c.sort_descending();
    c.normalize();
    // Inverse-CDF draw from the 53 high bits of the generator: the same seed gives the same
    // tokens on every standard library (std::discrete_distribution's algorithm is unspecified).
    double total = 0.0;
    for (const auto& cand : c.items) total += cand.p;
    const double u = static_cast<double>(rng_() >> 11) * 0x1.0p-53 * total;
    double cumulative = 0.0;
    for (const auto& cand : c.items) {
        cumulative += cand.p;
        if (u < cumulative) return cand.id;
    }
    return c.items.back().id;
}

void SamplerChain::accept(Token t) {
    for (auto& stage : stages_)
        if (auto* penalties = std::get_if<sampling::Penalties>(&stage)) penalties->accept(t);
}

void SamplerChain::reset() {
    for (auto& stage : stages_)
        if (auto* penalties = std::get_if<sampling::Penalties>(&stage)) penalties->reset();
    rng_.seed(seed_);
}

std::string SamplerChain::describe() const {
    std::string s;
    for (const auto& stage : stages_) s += sampling::stage_name(stage) + " -> ";
    return s + (greedy_ ? "greedy" : "dist(seed " + std::to_string(seed_) + ")");
}

Token argmax(std::span<const double> logits) {
    return static_cast<Token>(std::max_element(logits.begin(), logits.end()) - logits.begin());
}

}  // namespace twinfer
