// `twinfer perplexity` and `twinfer verify`: how good a model is on a text, and how far a fast
// path strays from the float64 reference.
#include <cmath>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <iterator>
#include <utility>

#include <nlohmann/json.hpp>

#include "apps/commands.hpp"
#include "apps/options.hpp"
#include "apps/progress.hpp"
#include "engine/divergence.hpp"

namespace twinfer::cli {
namespace {

std::string read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw UsageError("cannot read text file: " + path);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

struct PerplexityOptions {
    std::string file;
    int chunks = -1;
    std::string path = "prompt";
};

// llama.cpp's llama-perplexity method: the text (tokenized with BOS) is cut into chunks of n_ctx
// tokens; each chunk starts with BOS in place of its first token, is evaluated from an empty
// cache, and only the second half of its positions is scored (each predicted token then has at
// least n_ctx/2 tokens of context). PPL = exp(mean negative log-likelihood). The prompt path
// evaluates a chunk in one call (as llama-perplexity); the decode path feeds it a token at a time
// through the decode step that generates text, and scores what generation would see.
void run_perplexity(const PerplexityOptions& opts) {
    auto& s = settings();
    auto backend = s.backend_options();
    if (backend.n_ctx == 0) backend.n_ctx = 512;  // llama-perplexity's default context
    const std::string text = read_file(opts.file);
    auto engine = InferenceEngine::load(backend);
    const size_t n_ctx = engine.n_ctx();
    if (n_ctx < 8) throw UsageError("--ctx-size must be at least 8 for perplexity");
    const auto tokens = engine.tokenize(text, /*add_special=*/true, /*parse_special=*/false);
    if (tokens.size() < 2 * n_ctx)
        throw UsageError("the text has " + std::to_string(tokens.size()) + " tokens; perplexity with --ctx-size " + std::to_string(n_ctx) +
                         " needs at least " + std::to_string(2 * n_ctx));
    size_t n_chunks = tokens.size() / n_ctx;
    if (opts.chunks > 0) n_chunks = std::min<size_t>(n_chunks, opts.chunks);
    const auto bos = engine.tokenizer().bos();
    const size_t first = n_ctx / 2;

    const bool decode_path = opts.path == "decode";
    log("info", "perplexity: " + std::to_string(tokens.size()) + " tokens, " + std::to_string(n_chunks) + " chunks of " +
                    std::to_string(n_ctx) + " [" + engine.backend_name() + ", " + opts.path + " path]");
    ProgressBar bar("perplexity", n_chunks, progress_enabled());
    double nll_sum = 0, nll2_sum = 0;
    size_t count = 0;
    for (size_t c = 0; c < n_chunks; ++c) {
        std::vector<Token> chunk(tokens.begin() + c * n_ctx, tokens.begin() + (c + 1) * n_ctx);
        if (bos) chunk[0] = *bos;
        auto score = [&](size_t j, std::span<const double> row) {
            if (j < first || j + 1 >= n_ctx) return;
            const double nll = negative_log_likelihood(row, tokens[c * n_ctx + j + 1]);
            nll_sum += nll;
            nll2_sum += nll * nll;
            ++count;
        };
        if (decode_path) {
            engine.evaluate_as_generated(chunk, 1, score);
        } else {
            const Logits logits = engine.evaluate_all(chunk);
            for (size_t j = first; j + 1 < n_ctx; ++j) score(j, logits.row(j));
        }
        std::ostringstream detail;
        detail << std::fixed << std::setprecision(4) << "ppl " << std::exp(nll_sum / count);
        bar.update(c + 1, detail.str());
        if (!progress_enabled()) std::cerr << "[" << c + 1 << "]" << std::fixed << std::setprecision(4) << std::exp(nll_sum / count) << (c + 1 == n_chunks ? "\n" : ",") << std::flush;
    }
    bar.finish();
    const double mean = nll_sum / count;
    const double var = nll2_sum / count - mean * mean;
    const double ppl = std::exp(mean);
    // Error of the mean NLL, propagated to the perplexity (as llama-perplexity reports).
    const double ppl_err = ppl * std::sqrt(std::max(0.0, var) / (count - 1));
    std::cout << std::fixed << std::setprecision(4) << "Final estimate: PPL = " << ppl << " +/- " << ppl_err << " (" << opts.path
              << " path)\n";
}

enum class VerifyPath { Decode, Prompt, Both };

struct VerifyOptions {
    std::string prompt = "The capital of France is Paris. The capital of Germany is";
    std::string prompt_file;
    std::string from_run;           // `twinfer run --json` output: its prompt and generated ids
    std::string path = "decode";
    int prompt_tokens = 1;          // decode path: fed in one call first, as run feeds a prompt
    double max_error = -1;          // > 0: exit 1 above this worst relative error
    double max_kl = -1;             // > 0: exit 1 above this worst KL
    bool json = false;
};

// What one path of the fast model produced against the reference, from position `first` on.
struct PathResult {
    std::string name;               // "decode" or "prompt"
    size_t first = 0;
    std::vector<PositionDivergence> rows;
    DivergenceSummary summary;
};

std::string printable_piece(const Tokenizer& tokenizer, Token id, size_t width) {
    std::string piece = tokenizer.token_to_piece(id);
    for (auto& ch : piece)
        if (ch == '\n' || ch == '\r' || ch == '\t') ch = ' ';
    if (piece.size() > width) piece.resize(width);
    return piece;
}

void print_path(const PathResult& r, std::span<const Token> ids, const Tokenizer& tokenizer) {
    std::cout << "path: " << r.name
              << (r.name == "decode" ? " (each token alone through the decode step `run` generates with)"
                                     : " (the whole sequence in one call, as a prompt is processed)")
              << "\n  pos  token        max|dlogit|   relative      KL(ref||fast)  top-1\n";
    for (size_t i = 0; i < r.rows.size(); ++i) {
        const auto& d = r.rows[i];
        const size_t p = r.first + i;
        std::cout << std::setw(5) << p << "  " << std::left << std::setw(12) << printable_piece(tokenizer, ids[p], 12) << std::right
                  << std::scientific << std::setprecision(3) << std::setw(13) << d.max_abs_diff << std::setw(12) << d.relative()
                  << std::setw(15) << d.kl << "  " << (d.top1_agrees() ? "yes" : "NO") << "\n";
    }
    const auto& s = r.summary;
    std::cout << std::defaultfloat << std::setprecision(4) << "summary (" << r.name << "): " << s.positions
              << " positions, worst relative error " << s.worst_relative << ", mean KL " << s.mean_kl << ", KL p99 " << s.kl_p99
              << ", KL max " << s.kl_max << ", same top " << s.same_top << "/" << s.positions << "\n";
    for (size_t i = 0; i < r.rows.size(); ++i) {
        const auto& d = r.rows[i];
        if (d.top1_agrees()) continue;
        std::cout << std::fixed << std::setprecision(4) << "  top-1 differs at " << r.first + i << ": reference "
                  << d.ref_top1 << " '" << printable_piece(tokenizer, d.ref_top1, 16) << "' (ref " << d.ref_top1_logits.ref
                  << ", fast " << d.ref_top1_logits.fast << "), fast " << d.fast_top1 << " '"
                  << printable_piece(tokenizer, d.fast_top1, 16) << "' (ref " << d.fast_top1_logits.ref << ", fast "
                  << d.fast_top1_logits.fast << ")\n";
    }
    std::cout << std::defaultfloat;
}

nlohmann::json path_json(const PathResult& r, std::span<const Token> ids) {
    nlohmann::json rows = nlohmann::json::array();
    for (size_t i = 0; i < r.rows.size(); ++i) {
        const auto& d = r.rows[i];
        rows.push_back({{"position", r.first + i},
                        {"token", ids[r.first + i]},
                        {"relative", d.relative()},
                        {"kl", d.kl},
                        {"ref_top1", d.ref_top1},
                        {"fast_top1", d.fast_top1},
                        {"ref_top1_logits", {d.ref_top1_logits.ref, d.ref_top1_logits.fast}},
                        {"fast_top1_logits", {d.fast_top1_logits.ref, d.fast_top1_logits.fast}}});
    }
    const auto& s = r.summary;
    return {{"path", r.name},
            {"positions", rows},
            {"summary",
             {{"positions", s.positions}, {"worst_relative", s.worst_relative}, {"mean_kl", s.mean_kl}, {"kl_p99", s.kl_p99},
              {"kl_max", s.kl_max}, {"same_top", s.same_top}}}};
}

// The sequence to verify and how much of it is a prompt: text (-p, -f; every row from the decode
// step unless --prompt-tokens says otherwise), or a `run --json` output replayed as run fed it.
std::pair<std::vector<Token>, size_t> verify_sequence(const VerifyOptions& opts, const InferenceEngine& engine) {
    if (opts.from_run.empty()) {
        const std::string text = opts.prompt_file.empty() ? opts.prompt : read_file(opts.prompt_file);
        auto ids = engine.tokenize(text, true, false);
        if (ids.empty()) throw UsageError("the text has no tokens");
        if (opts.prompt_tokens < 1 || size_t(opts.prompt_tokens) > ids.size())
            throw UsageError("--prompt-tokens must be 1.." + std::to_string(ids.size()) + " (the text's tokens)");
        return {ids, size_t(opts.prompt_tokens)};
    }
    nlohmann::json run;
    try {
        run = nlohmann::json::parse(read_file(opts.from_run));
    } catch (const nlohmann::json::exception& e) {
        throw UsageError(opts.from_run + ": not a `twinfer run --json` output (" + e.what() + ")");
    }
    std::vector<Token> ids, generated;
    try {
        ids = run.at("prompt_ids").get<std::vector<Token>>();
        generated = run.at("ids").get<std::vector<Token>>();
    } catch (const nlohmann::json::exception& e) {
        throw UsageError(opts.from_run + ": needs the arrays prompt_ids and ids of `twinfer run --json` (" + e.what() + ")");
    }
    if (ids.empty()) throw UsageError(opts.from_run + ": prompt_ids is empty");
    const size_t n_prompt = ids.size();
    ids.insert(ids.end(), generated.begin(), generated.end());
    for (Token t : ids)
        if (t < 0 || size_t(t) >= engine.tokenizer().n_vocab())
            throw UsageError(opts.from_run + ": token " + std::to_string(t) + " is not in this model's vocabulary");
    return {ids, n_prompt};
}

void run_verify(const VerifyOptions& opts) {
    auto& s = settings();
    auto fast_options = s.backend_options();
    if (fast_options.precision == Precision::F64)
        throw UsageError("verify compares a fast model with the f64 reference: choose --precision f32");
    const VerifyPath path = opts.path == "decode" ? VerifyPath::Decode : opts.path == "prompt" ? VerifyPath::Prompt : VerifyPath::Both;
    if (!opts.from_run.empty() && (!opts.prompt_file.empty() || opts.prompt_tokens != 1))
        throw UsageError("--from-run brings its own sequence and prompt: give no -f or --prompt-tokens with it");
    auto fast = InferenceEngine::load(fast_options);
    const auto [ids, n_prompt] = verify_sequence(opts, fast);
    if (ids.size() > fast.n_ctx()) throw UsageError("the sequence (" + std::to_string(ids.size()) + " tokens) does not fit the context");
    auto ref_options = fast_options;
    ref_options.precision = Precision::F64;
    ref_options.device = DeviceChoice::CPU;
    ref_options.cache_type = compute::KvType::F32;   // the reference's own cache is float64
    auto reference = InferenceEngine::load(ref_options);
    const Logits ref_logits = reference.evaluate_all(ids);

    std::vector<PathResult> results;
    if (path != VerifyPath::Prompt) {
        PathResult& r = results.emplace_back(PathResult{"decode", n_prompt - 1, {}, {}});
        fast.evaluate_as_generated(ids, n_prompt, [&](size_t p, std::span<const double> row) {
            r.rows.push_back(compare_logits(ref_logits.row(p), row));
        });
    }
    if (path != VerifyPath::Decode) {
        PathResult& r = results.emplace_back(PathResult{"prompt", 0, {}, {}});
        r.rows = compare_logits(ref_logits, fast.evaluate_all(ids));
    }
    for (auto& r : results) r.summary = summarize(r.rows);

    if (opts.json) {
        nlohmann::json out{{"reference", reference.backend_name()}, {"fast", fast.backend_name()}, {"ids", ids},
                           {"prompt_tokens", n_prompt}, {"paths", nlohmann::json::array()}};
        for (const auto& r : results) out["paths"].push_back(path_json(r, ids));
        std::cout << out.dump() << "\n";
    } else {
        std::cout << "reference: " << reference.backend_name() << "\nfast:      " << fast.backend_name() << "\n";
        for (const auto& r : results) {
            std::cout << "\n";
            print_path(r, ids, fast.tokenizer());
        }
    }
    for (const auto& r : results) {
        if (opts.max_error > 0 && r.summary.worst_relative > opts.max_error)
            throw std::runtime_error("verify (" + r.name + " path): worst relative error " + std::to_string(r.summary.worst_relative) +
                                     " exceeds --max-error " + std::to_string(opts.max_error));
        if (opts.max_kl > 0 && r.summary.kl_max > opts.max_kl)
            throw std::runtime_error("verify (" + r.name + " path): worst KL " + std::to_string(r.summary.kl_max) + " exceeds --max-kl " +
                                     std::to_string(opts.max_kl));
    }
}

}  // namespace

void register_eval(CLI::App& app) {
    auto& s = settings();
    auto ppl = std::make_shared<PerplexityOptions>();
    auto* cmd = app.add_subcommand("perplexity", "Perplexity of the model on a text file (llama-perplexity's method)");
    cmd->add_option("-f,--file", ppl->file, "text file")->required();
    cmd->add_option("--chunks", ppl->chunks, "score at most this many chunks (-1: all)");
    cmd->add_option("--path", ppl->path, "prompt: each chunk in one call (llama-perplexity); decode: a token at a time, as generation")
        ->check(CLI::IsMember({"prompt", "decode"}))
        ->capture_default_str();
    add_model_flags(*cmd, s);
    add_ui_flags(*cmd, s);
    cmd->callback([ppl] { run_perplexity(*ppl); });

    auto ver = std::make_shared<VerifyOptions>();
    auto* v = app.add_subcommand("verify", "Run the float64 reference beside the fast model and show how far the fast path strays");
    v->add_option("-p,--prompt", ver->prompt, "text to feed")->capture_default_str();
    v->add_option("-f,--file", ver->prompt_file, "read the text from a file");
    v->add_option("--from-run", ver->from_run, "replay a `twinfer run --json` output (its prompt, then its generated ids) as run fed it");
    v->add_option("--path", ver->path, "decode: each token through the decode step run generates with; prompt: one call; both")
        ->check(CLI::IsMember({"decode", "prompt", "both"}))
        ->capture_default_str();
    v->add_option("--prompt-tokens", ver->prompt_tokens, "decode path: feed the first N tokens in one call first, as run feeds a prompt")
        ->capture_default_str();
    v->add_option("--max-error", ver->max_error, "exit 1 when the worst relative error exceeds this");
    v->add_option("--max-kl", ver->max_kl, "exit 1 when the worst KL divergence exceeds this");
    v->add_flag("--json", ver->json, "print one JSON object (every position, the summary) instead of the table");
    add_model_flags(*v, s);
    add_ui_flags(*v, s);
    v->callback([ver] { run_verify(*ver); });
}

}  // namespace twinfer::cli
