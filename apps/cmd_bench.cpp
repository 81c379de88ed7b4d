// `twinfer bench`: llama-bench's measurements — prompt processing (pp: N tokens in one forward
// pass) and text generation (tg: N single-token steps), each after a cache holding `depth` tokens
// (-d, 0: an empty cache; the depth's own prompt is not timed) — repeated, mean ± standard
// deviation of tokens/s, as a markdown table or JSON.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <iostream>
#include <numeric>
#include <random>
#include <sstream>

#include <nlohmann/json.hpp>

#include "apps/commands.hpp"
#include "apps/options.hpp"
#include "apps/progress.hpp"

namespace twinfer::cli {
namespace {

struct BenchOptions {
    std::vector<int> prompt_sizes{512};
    std::vector<int> gen_sizes{128};
    std::vector<int> depths{0};
    int repetitions = 5;
    std::string output = "md";
};

struct BenchResult {
    std::string test;
    int n_tokens;
    int depth;
    std::vector<double> tokens_per_second;
    double mean() const { return std::accumulate(tokens_per_second.begin(), tokens_per_second.end(), 0.0) / tokens_per_second.size(); }
    double stddev() const {
        if (tokens_per_second.size() < 2) return 0.0;
        const double m = mean();
        double sq = 0;
        for (double v : tokens_per_second) sq += (v - m) * (v - m);
        return std::sqrt(sq / (tokens_per_second.size() - 1));
    }
};

// Random ids, as llama-bench feeds: the content does not change the work done.
std::vector<Token> random_tokens(size_t n, size_t n_vocab, std::mt19937& rng) {
    std::uniform_int_distribution<Token> pick(0, static_cast<Token>(n_vocab - 1));
    std::vector<Token> ids(n);
    for (auto& t : ids) t = pick(rng);
    return ids;
}

// Empties the cache, then fills it with `context` (the test's depth), untimed.
void start_at_depth(InferenceEngine& engine, const std::vector<Token>& context) {
    engine.clear();
    if (!context.empty()) engine.forward(context);
}

double time_prompt(InferenceEngine& engine, const std::vector<Token>& context, const std::vector<Token>& ids) {
    start_at_depth(engine, context);
    const auto t0 = std::chrono::steady_clock::now();
    engine.forward(ids);
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

double time_generation(InferenceEngine& engine, const std::vector<Token>& context, const std::vector<Token>& ids) {
    start_at_depth(engine, context);
    const auto t0 = std::chrono::steady_clock::now();
    for (Token t : ids) engine.forward(std::span<const Token>(&t, 1));
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

void register_bench(CLI::App& app) {
    auto opts = std::make_shared<BenchOptions>();
    auto& s = settings();
    auto* cmd = app.add_subcommand("bench", "Measure prompt processing and generation speed (like llama-bench)");
    cmd->add_option("-p,--n-prompt", opts->prompt_sizes, "prompt sizes to test (0 skips)")->delimiter(',')->capture_default_str();
    cmd->add_option("-n,--n-gen", opts->gen_sizes, "generation lengths to test (0 skips)")->delimiter(',')->capture_default_str();
    cmd->add_option("-d,--n-depth", opts->depths, "tokens already in the cache before each test")->delimiter(',')->capture_default_str();
    cmd->add_option("-r,--repetitions", opts->repetitions, "repetitions of each test")->check(allowed_values(1, 1000, "1 to 1000"))->capture_default_str();
    cmd->add_option("-o,--output", opts->output, "md or json")->check(CLI::IsMember({"md", "json"}))->capture_default_str();
    add_model_flags(*cmd, s);
    add_ui_flags(*cmd, s);
    cmd->callback([opts] {
        auto& s = settings();
        for (int n : opts->prompt_sizes) if (n < 0) throw UsageError("--n-prompt must not be negative");
        for (int n : opts->gen_sizes) if (n < 0) throw UsageError("--n-gen must not be negative");
        for (int n : opts->depths) if (n < 0) throw UsageError("--n-depth must not be negative");
        auto backend = s.backend_options();
        size_t longest_test = 1;
        for (int n : opts->prompt_sizes) longest_test = std::max<size_t>(longest_test, n);
        for (int n : opts->gen_sizes) longest_test = std::max<size_t>(longest_test, n);
        const size_t longest = longest_test + static_cast<size_t>(*std::max_element(opts->depths.begin(), opts->depths.end()));
        if (backend.n_ctx == 0) backend.n_ctx = longest;  // a bench needs no more context than its longest test
        auto engine = InferenceEngine::load(backend);
        if (longest > engine.n_ctx()) throw UsageError("a test needs " + std::to_string(longest) + " tokens but the context holds " + std::to_string(engine.n_ctx()));
        std::mt19937 rng(42);
        const size_t n_vocab = engine.tokenizer().n_vocab();

        std::vector<BenchResult> results;
        size_t total_runs = 0;
        for (int n : opts->prompt_sizes) total_runs += n > 0 ? opts->repetitions * opts->depths.size() : 0;
        for (int n : opts->gen_sizes) total_runs += n > 0 ? opts->repetitions * opts->depths.size() : 0;
        ProgressBar bar("bench", total_runs, progress_enabled());
        size_t done = 0;
        auto run_test = [&](const std::string& kind, int n, int depth, auto timer) {
            if (n <= 0) return;
            BenchResult r{kind + std::to_string(n) + (depth ? " @ d" + std::to_string(depth) : ""), n, depth, {}};
            const std::vector<Token> context = random_tokens(depth, n_vocab, rng);
            timer(engine, context, random_tokens(n, n_vocab, rng));  // warm-up, as llama-bench
            for (int i = 0; i < opts->repetitions; ++i) {
                const double seconds = timer(engine, context, random_tokens(n, n_vocab, rng));
                r.tokens_per_second.push_back(n / seconds);
                bar.update(++done, r.test);
            }
            results.push_back(std::move(r));
        };
        for (int depth : opts->depths) {
            for (int n : opts->prompt_sizes) run_test("pp", n, depth, time_prompt);
            for (int n : opts->gen_sizes) run_test("tg", n, depth, time_generation);
        }
        bar.finish();

        const auto& cfg = engine.config();
        const double size_mib = engine.file().file_size() / (1024.0 * 1024.0);
        if (opts->output == "json") {
            nlohmann::json out = nlohmann::json::array();
            for (const auto& r : results)
                out.push_back({{"model", engine.options().model.string()}, {"model_size_bytes", engine.file().file_size()},
                               {"backend", engine.backend_name()}, {"threads", s.threads}, {"test", r.test},
                               {"n_tokens", r.n_tokens}, {"n_depth", r.depth}, {"avg_ts", r.mean()}, {"stddev_ts", r.stddev()},
                               {"samples_ts", r.tokens_per_second}, {"n_layer", cfg.n_layer}, {"n_embd", cfg.n_embd}});
            std::cout << out.dump(2) << "\n";
            return;
        }
        std::ostringstream table;
        table.precision(2);
        table << std::fixed;
        table << "| model | size | backend | threads | test | t/s |\n|---|---:|---|---:|---:|---:|\n";
        for (const auto& r : results)
            table << "| " << engine.options().model.filename().string() << " | " << size_mib << " MiB | " << engine.backend_name() << " | "
                  << (s.threads ? std::to_string(s.threads) : std::string("all")) << " | " << r.test << " | " << r.mean() << " ± " << r.stddev() << " |\n";
        std::cout << table.str();
    });
}

}  // namespace twinfer::cli
