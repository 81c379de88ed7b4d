// `twinfer perplexity` and `twinfer verify`: how good a model is on a text, and how far a fast
// path strays from the float64 reference.
#include <cmath>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <iterator>

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
};

// llama.cpp's llama-perplexity method: the text (tokenized with BOS) is cut into chunks of n_ctx
// tokens; each chunk starts with BOS in place of its first token, is evaluated from an empty
// cache, and only the second half of its positions is scored (each predicted token then has at
// least n_ctx/2 tokens of context). PPL = exp(mean negative log-likelihood).
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

    log("info", "perplexity: " + std::to_string(tokens.size()) + " tokens, " + std::to_string(n_chunks) + " chunks of " +
                    std::to_string(n_ctx) + " [" + engine.backend_name() + "]");
    ProgressBar bar("perplexity", n_chunks, progress_enabled());
    double nll_sum = 0, nll2_sum = 0;
    size_t count = 0;
    for (size_t c = 0; c < n_chunks; ++c) {
        std::vector<Token> chunk(tokens.begin() + c * n_ctx, tokens.begin() + (c + 1) * n_ctx);
        if (bos) chunk[0] = *bos;
        const Logits logits = engine.evaluate_all(chunk);
        for (size_t j = first; j + 1 < n_ctx; ++j) {
            const double nll = negative_log_likelihood(logits.row(j), tokens[c * n_ctx + j + 1]);
            nll_sum += nll;
            nll2_sum += nll * nll;
            ++count;
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
    std::cout << std::fixed << std::setprecision(4) << "Final estimate: PPL = " << ppl << " +/- " << ppl_err << "\n";
}

struct VerifyOptions {
    std::string prompt = "The capital of France is Paris. The capital of Germany is";
    std::string prompt_file;
};

void run_verify(const VerifyOptions& opts) {
    auto& s = settings();
    auto fast_options = s.backend_options();
    if (fast_options.precision == Precision::F64)
        throw UsageError("verify compares a fast model with the f64 reference: choose --precision f32");
    const std::string text = opts.prompt_file.empty() ? opts.prompt : read_file(opts.prompt_file);
    auto fast = InferenceEngine::load(fast_options);
    auto ref_options = fast_options;
    ref_options.precision = Precision::F64;
    ref_options.device = DeviceChoice::CPU;
    auto reference = InferenceEngine::load(ref_options);
    const auto ids = fast.tokenize(text, true, false);
    if (ids.size() > fast.n_ctx()) throw UsageError("the prompt does not fit the context");
    const Logits ref_logits = reference.evaluate_all(ids);
    const Logits fast_logits = fast.evaluate_all(ids);
    const auto rows = compare_logits(ref_logits, fast_logits);

    std::cout << "reference: " << reference.backend_name() << "\nfast:      " << fast.backend_name() << "\n\n";
    std::cout << "  pos  token        max|dlogit|   relative      KL(ref||fast)  top-1\n";
    double worst_rel = 0, worst_kl = 0;
    size_t agree = 0;
    for (size_t p = 0; p < rows.size(); ++p) {
        const auto& r = rows[p];
        std::string piece = fast.tokenizer().token_to_piece(ids[p]);
        for (auto& ch : piece) if (ch == '\n') ch = ' ';
        if (piece.size() > 12) piece.resize(12);
        std::cout << std::setw(5) << p << "  " << std::left << std::setw(12) << piece << std::right << std::scientific << std::setprecision(3)
                  << std::setw(13) << r.max_abs_diff << std::setw(12) << r.relative() << std::setw(15) << r.kl << "  "
                  << (r.top1_agrees() ? "yes" : "NO (" + std::to_string(r.ref_top1) + " vs " + std::to_string(r.fast_top1) + ")") << "\n";
        worst_rel = std::max(worst_rel, r.relative());
        worst_kl = std::max(worst_kl, r.kl);
        agree += r.top1_agrees();
    }
    std::cout << std::defaultfloat << "\nsummary: " << rows.size() << " positions, worst relative error " << worst_rel << ", worst KL " << worst_kl
              << ", top-1 agreement " << agree << "/" << rows.size() << "\n";
}

}  // namespace

void register_eval(CLI::App& app) {
    auto& s = settings();
    auto ppl = std::make_shared<PerplexityOptions>();
    auto* cmd = app.add_subcommand("perplexity", "Perplexity of the model on a text file (llama-perplexity's method)");
    cmd->add_option("-f,--file", ppl->file, "text file")->required();
    cmd->add_option("--chunks", ppl->chunks, "score at most this many chunks (-1: all)");
    add_model_flags(*cmd, s);
    add_ui_flags(*cmd, s);
    cmd->callback([ppl] { run_perplexity(*ppl); });

    auto ver = std::make_shared<VerifyOptions>();
    auto* v = app.add_subcommand("verify", "Run the float64 reference beside the fast model and show how far the fast path strays");
    v->add_option("-p,--prompt", ver->prompt, "prompt text")->capture_default_str();
    v->add_option("-f,--file", ver->prompt_file, "read the prompt from a file");
    add_model_flags(*v, s);
    add_ui_flags(*v, s);
    v->callback([ver] { run_verify(*ver); });
}

}  // namespace twinfer::cli
