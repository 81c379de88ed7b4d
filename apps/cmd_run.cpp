// `twinfer run`: complete a prompt, streaming the text to stdout and a speed summary to stderr.
#include <unistd.h>

#include <csignal>
#include <fstream>
#include <iostream>
#include <iterator>
#include <sstream>

#include <nlohmann/json.hpp>

#include "apps/commands.hpp"
#include "apps/options.hpp"

namespace twinfer::cli {
namespace {

// The signal that asked to stop: Ctrl-C (SIGINT), or SIGTERM from a service manager or `timeout`,
// which would otherwise end the process mid-line without the summary. The text callbacks return
// false once it is set, so generation stops at the next token and the command still prints its
// summary (or its JSON object).
volatile std::sig_atomic_t g_stop_signal = 0;
void on_stop_signal(int signal) { g_stop_signal = signal; }

struct RunOptions {
    std::string prompt;
    std::string prompt_file;
    std::string token_list;
    bool show_prompt = false;
    bool no_bos = false;
    bool parse_special = true;
    bool json = false;
};

std::vector<Token> parse_token_list(const std::string& list, size_t n_vocab) {
    std::vector<Token> ids;
    std::stringstream in(list);
    std::string item;
    while (std::getline(in, item, ',')) {
        size_t used = 0;
        long long v = 0;
        try {
            v = std::stoll(item, &used);
        } catch (const std::exception&) {
            throw UsageError("--tokens: '" + item + "' is not a token id");
        }
        if (used != item.size() || v < 0 || static_cast<size_t>(v) >= n_vocab)
            throw UsageError("--tokens: '" + item + "' is not a token id of this vocabulary (0.." + std::to_string(n_vocab - 1) + ")");
        ids.push_back(static_cast<Token>(v));
    }
    if (ids.empty()) throw UsageError("--tokens: no token ids given");
    return ids;
}

std::string read_all(std::istream& in) { return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()}; }

void print_generation_summary(const InferenceEngine& engine, const GenerationResult& r) {
    std::ostringstream s;
    s.precision(2);
    s << std::fixed << "[" << engine.backend_name() << "] load " << engine.load_seconds() << " s | prompt "
      << r.stats.prompt_tokens << " tokens, " << r.stats.prompt_tokens_per_second() << " tok/s";
    if (r.stats.reused_tokens) s << " (" << r.stats.reused_tokens << " reused)";
    s << " | generation " << r.stats.generated_tokens << " tokens, " << r.stats.generation_tokens_per_second()
      << " tok/s | stop: " << stop_reason_name(r.reason);
    log("info", s.str());
}

}  // namespace

void register_run(CLI::App& app) {
    auto opts = std::make_shared<RunOptions>();
    auto& s = settings();
    auto* cmd = app.add_subcommand("run", "Complete a prompt (streaming); the prompt from -p, -f, --tokens or stdin");
    cmd->add_option("-p,--prompt", opts->prompt, "prompt text");
    cmd->add_option("-f,--file", opts->prompt_file, "read the prompt from a file (exact bytes)");
    cmd->add_option("--tokens", opts->token_list, "prompt as comma-separated token ids (no BOS added)");
    cmd->add_flag("--show-prompt", opts->show_prompt, "echo the prompt before the completion");
    cmd->add_flag("--no-bos", opts->no_bos, "do not add BOS/EOS to the prompt");
    cmd->add_flag("--json", opts->json, "print one JSON object (prompt and generated ids, text, timings) instead of streaming");
    add_model_flags(*cmd, s);
    add_generation_flags(*cmd, s);
    add_ui_flags(*cmd, s);
    cmd->callback([opts] {
        auto& s = settings();
        const int sources = !opts->prompt.empty() + !opts->prompt_file.empty() + !opts->token_list.empty();
        if (sources > 1) throw UsageError("give the prompt one way: -p, -f or --tokens");
        const auto generate = s.generate_options();
        std::signal(SIGINT, on_stop_signal);
        std::signal(SIGTERM, on_stop_signal);
        auto engine = InferenceEngine::load(s.backend_options());

        std::vector<Token> prompt;
        std::string prompt_text;
        if (!opts->token_list.empty()) {
            prompt = parse_token_list(opts->token_list, engine.tokenizer().n_vocab());
        } else {
            if (!opts->prompt_file.empty()) {
                std::ifstream in(opts->prompt_file, std::ios::binary);
                if (!in) throw UsageError("cannot read prompt file: " + opts->prompt_file);
                prompt_text = read_all(in);
            } else if (!opts->prompt.empty()) {
                prompt_text = opts->prompt;
            } else if (!isatty(STDIN_FILENO)) {
                prompt_text = read_all(std::cin);
            } else {
                throw UsageError("no prompt: give -p TEXT, -f FILE, --tokens IDS, or pipe text on stdin");
            }
            prompt = engine.tokenize(prompt_text, !opts->no_bos, opts->parse_special);
        }
        if (opts->json) {
            const auto r = engine.generate(prompt, generate, [](std::string_view) { return !g_stop_signal; });
            nlohmann::json out{{"backend", engine.backend_name()}, {"prompt_ids", prompt}, {"ids", r.tokens}, {"text", r.text},
                               {"stop_reason", stop_reason_name(r.reason)}, {"load_seconds", engine.load_seconds()},
                               {"prompt_tokens_per_second", r.stats.prompt_tokens_per_second()},
                               {"generation_tokens_per_second", r.stats.generation_tokens_per_second()}};
            std::cout << out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
            if (r.reason == StopReason::Cancelled) throw Interrupted{g_stop_signal};
            return;
        }
        if (opts->show_prompt) std::cout << prompt_text << std::flush;
        const auto result = engine.generate(prompt, generate, [](std::string_view text) {
            std::cout << text << std::flush;
            return !g_stop_signal;
        });
        std::cout << "\n" << std::flush;
        print_generation_summary(engine, result);
        if (result.reason == StopReason::Cancelled) throw Interrupted{g_stop_signal};
    });
}

}  // namespace twinfer::cli
