#pragma once
// Helpers for the float32 models' tests: GGUF conversion (the golden files hold float64 weights,
// which the float32 models do not read), and comparing logits with the float64 reference.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <string>
#include <tuple>
#include <memory>
#include <span>
#include <vector>

#include "common/test_data.hpp"
#include "common/tolerances.hpp"
#include "format/gguf.hpp"
#include "format/quant.hpp"
#include "models/inference.hpp"

namespace twinfer::test {

inline std::filesystem::path golden_model(const std::string& name) {
    return repo_root() / "tests/models/golden" / name / "model.gguf";
}

// A copy of `source` with every matrix stored as `matrix_type` (F32 where its rows are not whole
// blocks of it) and every other tensor as F32. Returns the new file, opened.
inline std::shared_ptr<const gguf::File> convert_gguf(const std::filesystem::path& source, GGMLType matrix_type,
                                                      const std::string& tag) {
    const gguf::File in = gguf::File::open(source);
    gguf::Writer out;
    for (const auto& [key, value] : in.metadata())
        if (key != "general.alignment") out.set(key, value);
    for (const gguf::TensorInfo& t : in.tensors()) {
        std::vector<float> values(t.n_elements);
        if (t.type == GGMLType::F64) {
            for (size_t i = 0; i < values.size(); ++i) {
                double d;
                std::memcpy(&d, t.data.data() + 8 * i, 8);
                values[i] = static_cast<float>(d);
            }
        } else {
            dequantize(t.type, t.data, values);
        }
        GGMLType type = GGMLType::F32;
        if (t.dims.size() == 2 && t.dims[0] % type_traits(matrix_type).block_size == 0) type = matrix_type;
        std::vector<std::byte> bytes(row_size_bytes(type, values.size()));
        quantize(type, values, bytes);
        out.add_tensor(t.name, t.dims, type, bytes);
    }
    const auto path = scratch_dir() / (source.parent_path().filename().string() + "_" + tag + ".gguf");
    out.write(path);
    return std::make_shared<const gguf::File>(gguf::File::open(path));
}

inline Token argmax(std::span<const double> row) {
    return static_cast<Token>(std::max_element(row.begin(), row.end()) - row.begin());
}

// max|a - b| / max|b| over one row of logits.
inline double relative_error(std::span<const double> a, std::span<const double> b) {
    double max_diff = 0, max_ref = 0;
    for (size_t i = 0; i < b.size(); ++i) {
        max_diff = std::max(max_diff, std::abs(a[i] - b[i]));
        max_ref = std::max(max_ref, std::abs(b[i]));
    }
    return max_diff / max_ref;
}

// The gap between the two largest logits relative to the row's scale: below a model's error, the
// argmax is a coin toss and not worth asserting.
inline double top2_gap(std::span<const double> row) {
    std::vector<double> v(row.begin(), row.end());
    std::partial_sort(v.begin(), v.begin() + 2, v.end(), std::greater<>());
    double max_abs = 0;
    for (double x : row) max_abs = std::max(max_abs, std::abs(x));
    return (v[0] - v[1]) / max_abs;
}

// The logits of every position: the first prompt_length tokens in one call, then one at a time.
template <class Model>
std::vector<std::vector<double>> prompt_then_steps(Model& model, const std::vector<Token>& tokens, size_t prompt_length) {
    std::vector<std::vector<double>> rows;
    const Logits prompt = model.forward(std::span(tokens).first(prompt_length), LogitsMode::All);
    for (size_t p = 0; p < prompt_length; ++p) rows.emplace_back(prompt.row(p).begin(), prompt.row(p).end());
    for (size_t p = prompt_length; p < tokens.size(); ++p) {
        const Logits step = model.forward(std::span(tokens).subspan(p, 1));
        rows.emplace_back(step.last().begin(), step.last().end());
    }
    return rows;
}

// Feeds `tokens` to both models, first `prompt_length` at once then one at a time, and checks
// every position's logits: max relative error per row <= tolerance, and the same argmax wherever
// the top two logits are further apart than the tolerance. Returns the largest error seen.
template <class Model, class Reference>
double compare_logits(Model& model, Reference& reference, const std::vector<Token>& tokens, size_t prompt_length,
                      double tolerance) {
    const Logits expected = reference.forward(tokens, LogitsMode::All);
    const std::vector<std::vector<double>> rows = prompt_then_steps(model, tokens, prompt_length);
    double worst = 0;
    for (size_t p = 0; p < tokens.size(); ++p) {
        const double error = relative_error(rows[p], expected.row(p));
        worst = std::max(worst, error);
        EXPECT_LE(error, tolerance) << "position " << p;
        if (top2_gap(expected.row(p)) > tolerance) {
            EXPECT_EQ(argmax(rows[p]), argmax(expected.row(p))) << "position " << p;
        }
    }
    return worst;
}

// Feeds `tokens` from an empty cache to both models with observers on, and checks every named
// intermediate the float32 model reports against the reference's: max |a - b| / max |b| per
// tensor within `tolerance`; prints each tensor's error and names the first that strays.
template <class Model, class Reference>
void compare_intermediates(Model& model, Reference& reference, const std::vector<Token>& tokens, double tolerance) {
    std::map<std::pair<std::string, int>, std::vector<double>> expected;
    reference.set_observer([&](std::string_view name, int layer, std::span<const double> values) {
        expected[{std::string(name), layer}].assign(values.begin(), values.end());
    });
    std::vector<std::tuple<std::string, int, std::vector<double>>> seen;
    model.set_observer([&](std::string_view name, int layer, std::span<const float> values) {
        seen.emplace_back(std::string(name), layer, std::vector<double>(values.begin(), values.end()));
    });
    reference.forward(tokens);
    model.forward(tokens);
    ASSERT_FALSE(seen.empty());
    bool strayed = false;
    for (const auto& [name, layer, values] : seen) {
        const auto it = expected.find({name, layer});
        ASSERT_NE(it, expected.end()) << "the reference reports no " << name << " at layer " << layer;
        // result_norm: the float32 models normalize only the rows whose logits are asked for.
        ASSERT_TRUE(values.size() == it->second.size() || (name == "result_norm" && values.size() < it->second.size()))
            << name << " layer " << layer << ": " << values.size() << " values, the reference " << it->second.size();
        const double error = relative_error(values, std::span(it->second).last(values.size()));
        std::printf("  %-12s layer %2d  max relative error %.2e\n", name.c_str(), layer, error);
        if (error > tolerance && !strayed) {
            ADD_FAILURE() << "first tensor to stray: " << name << " at layer " << layer << " (" << error << ")";
            strayed = true;
        }
    }
}

// `got` (a fast model's greedy ids after `prompt`) equals `expected` (the reference's), or parts
// from it where the reference's two best candidates are within `bound` of each other (top2_gap):
// a near-tie the fast model's error may tip, and nowhere else.
template <class Reference>
void expect_same_or_near_tie(const std::vector<Token>& got, const std::vector<Token>& expected, Reference& reference,
                             const std::vector<Token>& prompt, double bound) {
    ASSERT_EQ(got.size(), expected.size());
    const auto parted = std::mismatch(got.begin(), got.end(), expected.begin());
    if (parted.first == got.end()) return;
    const size_t at = size_t(parted.first - got.begin());
    std::vector<Token> context = prompt;
    context.insert(context.end(), expected.begin(), expected.begin() + std::ptrdiff_t(at));
    reference.clear_cache();
    const Logits logits = reference.forward(context);
    EXPECT_LE(top2_gap(logits.last()), bound) << "parted from the reference at generated token " << at << " (" << *parted.first
                                              << " instead of " << *parted.second << ") where the reference's top two are not close";
}

template <class Model>
std::vector<Token> greedy(Model& model, const std::vector<Token>& prompt, size_t n_new) {
    std::vector<Token> out;
    Logits logits = model.forward(prompt);
    for (size_t i = 0; i < n_new; ++i) {
        out.push_back(argmax(logits.last()));
        if (i + 1 < n_new) logits = model.forward(std::span(&out.back(), 1));
    }
    return out;
}

}  // namespace twinfer::test
