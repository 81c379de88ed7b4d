// `twinfer chat`: a multi-turn conversation with the model's chat template. Line editing and
// history through readline when stdin is a terminal; plain lines otherwise (nothing waits for a
// keyboard that is not there). Ctrl-C stops the answer being generated, not the program.
// `--history FILE` keeps the conversation in a file, saved after every answer. SIGTERM stops an
// answer as Ctrl-C does, lets the conversation be saved, and exits 143.
#include <readline/history.h>
#include <readline/readline.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <iostream>
#include <sstream>

#include "apps/commands.hpp"
#include "apps/options.hpp"
#include "engine/chat_session.hpp"

namespace twinfer::cli {
namespace {

std::atomic<bool> g_generating{false};
std::atomic<bool> g_interrupted{false};
// A line is being handled (an answer, a command, the saving after it): SIGTERM then waits for it.
std::atomic<bool> g_busy{false};
std::atomic<bool> g_terminated{false};

void on_sigterm(int) {
    if (!g_busy.load()) {
        // Waiting for a line (or loading): everything is saved already.
        if (isatty(STDIN_FILENO)) rl_deprep_terminal();
        _exit(128 + SIGTERM);
    }
    g_terminated.store(true);
}

void on_sigint(int) {
    if (g_generating.load()) {
        g_interrupted.store(true);
        return;
    }
    // At the prompt: drop the line being typed and show a fresh prompt.
    const char msg[] = "\n(Ctrl-C stops an answer; /exit or Ctrl-D quits)\n";
    [[maybe_unused]] auto n = ::write(STDOUT_FILENO, msg, sizeof msg - 1);
    if (isatty(STDIN_FILENO)) {
        rl_on_new_line();
        rl_replace_line("", 0);
        rl_redisplay();
    }
}

class LineReader {
public:
    LineReader() : interactive_(isatty(STDIN_FILENO)) {
        if (interactive_) rl_catch_signals = 0;  // our SIGINT handler decides what Ctrl-C means
    }
    bool interactive() const { return interactive_; }

    // False at end of input (Ctrl-D or end of a piped stdin).
    bool read(const std::string& prompt, std::string& line) {
        if (!interactive_) {
            if (!std::getline(std::cin, line)) return false;
            return true;
        }
        char* raw = readline(prompt.c_str());
        if (!raw) return false;
        line = raw;
        if (!line.empty()) add_history(raw);
        std::free(raw);
        return true;
    }

private:
    bool interactive_;
};

const char* kHelp =
    "commands:\n"
    "  /help                 this text\n"
    "  /exit                 quit (also Ctrl-D)\n"
    "  /clear                forget the conversation (keeps the system prompt)\n"
    "  /save [FILE]          save the conversation as JSON (default twinfer-chat.json)\n"
    "  /load [FILE]          load a conversation saved with /save\n"
    "  /system TEXT          set the system prompt (and clear the conversation)\n"
    "  /model PATH           load another model\n"
    "  /backend cpu|cuda     run on the CPU or the GPU (reloads the model)\n"
    "  /precision f64|f32    the exact float64 reference or the fast float32 model (reloads)\n"
    "  /stats                timings and token counts\n"
    "  /config               show the settings;  /config save  writes them to the config file\n"
    "Ctrl-C stops the answer being generated.\n";

std::string format_stats(const InferenceEngine& engine, const ChatSession& session) {
    std::ostringstream s;
    s.precision(2);
    s << std::fixed;
    s << "backend: " << engine.backend_name() << "\n"
      << "model: " << engine.options().model.string() << " (loaded in " << engine.load_seconds() << " s)\n"
      << "context: " << engine.n_past() << " / " << engine.n_ctx() << " tokens used\n"
      << "turns: " << session.messages().size() / 2 << "\n"
      << "last turn: prompt " << session.last.prompt_tokens << " tokens (" << session.last.reused_tokens << " reused) at "
      << session.last.prompt_tokens_per_second() << " tok/s, generated " << session.last.generated_tokens << " tokens at "
      << session.last.generation_tokens_per_second() << " tok/s\n"
      << "session: prompt " << session.totals.prompt_tokens << " tokens in " << session.totals.prompt_seconds << " s, generated "
      << session.totals.generated_tokens << " tokens in " << session.totals.generation_seconds << " s\n";
    return s.str();
}

class ChatRepl {
public:
    // `history`: the file the conversation is kept in (none if empty), loaded now if it exists.
    explicit ChatRepl(std::filesystem::path history) : session_(settings().system_prompt), history_(std::move(history)) {
        if (!history_.empty() && std::filesystem::exists(history_)) session_.load(history_);
    }

    void run() {
        reload("loaded");
        LineReader reader;
        if (reader.interactive()) std::cout << "twinfer chat: " << engine_->backend_name() << ". /help for commands.\n";
        if (!history_.empty() && !session_.messages().empty())
            log("info", "continuing the " + std::to_string(session_.messages().size()) + " messages of " + history_.string());
        std::string line;
        for (;;) {
            g_busy = false;   // from here a SIGTERM exits at once
            if (g_terminated) throw Interrupted{SIGTERM};
            if (!reader.read(reader.interactive() ? "> " : "", line)) break;
            g_busy = true;
            if (line.empty()) continue;
            if (line[0] == '/') {
                if (!command(line)) break;
                continue;
            }
            answer(line);
            keep_history();
        }
        g_busy = true;
        if (unsaved_changes_ > 0) throw std::runtime_error(unsaved_changes_message());
    }

private:
    void reload(const char* verb) {
        const auto options = settings().backend_options();
        auto engine = InferenceEngine::load(options);
        try {
            engine.chat_template();   // chat needs one: another model file is the fix (exit 2)
        } catch (const ChatTemplateError& e) {
            throw UsageError(e.what());
        }
        engine_.reset();
        engine_ = std::make_unique<InferenceEngine>(std::move(engine));
        log("info", std::string(verb) + " " + options.model.string() + " [" + engine_->backend_name() + "]");
    }

    void answer(const std::string& message) {
        g_interrupted = false;
        g_generating = true;
        try {
            const auto result = session_.reply(*engine_, message, settings().generate_options(), [](std::string_view text) {
                std::cout << text << std::flush;
                return !g_interrupted.load() && !g_terminated.load();
            });
            g_generating = false;
            std::cout << "\n";
            if (result.reason == StopReason::Cancelled) std::cout << "[stopped]\n";
            if (result.reason == StopReason::ContextFull) std::cout << "[context full: /clear to start over]\n";
            std::cout << std::flush;
            if (session_.dropped_turns > 0)
                log("warn", "dropped the " + std::to_string(session_.dropped_turns) + " oldest turn(s) to fit the context of " +
                                std::to_string(engine_->n_ctx()) + " tokens");
        } catch (const ContextOverflow& e) {
            g_generating = false;
            std::cout << std::flush;
            std::cerr << "error: " << e.what() << " (/clear to start over)\n";
        } catch (const ModelFileChanged& e) {
            // Every later answer would read the same damaged weights: the chat ends (exit 1). This
            // answer, computed from them, is not kept; the history file has every turn before it.
            g_generating = false;
            std::cout << "\n" << std::flush;
            throw ModelFileChanged(e.what() + history_state());
        }
    }

    // Where the conversation stands in the --history file, for a message that ends the chat: "" if
    // there is none, else that the file holds every finished turn, or what it lacks.
    std::string history_state() const {
        if (history_.empty()) return {};
        if (unsaved_changes_ == 0) return "; the conversation up to the last answer is saved in " + history_.string();
        return "; " + unsaved_changes_message();
    }

    std::string unsaved_changes_message() const {
        return history_.string() + " lacks the last " + std::to_string(unsaved_changes_) + " change(s) of the conversation: " + save_error_;
    }

    // Returns false to quit.
    bool command(const std::string& line) {
        std::istringstream in(line);
        std::string name;
        in >> name;
        std::string arg;
        std::getline(in >> std::ws, arg);
        auto& s = settings();
        try {
            if (name == "/exit" || name == "/quit") return false;
            if (name == "/help") std::cout << kHelp;
            else if (name == "/clear") {
                session_.clear();
                engine_->clear();
                std::cout << "conversation cleared\n";
                keep_history();
            } else if (name == "/save") {
                const std::string path = arg.empty() ? "twinfer-chat.json" : arg;
                session_.save(path);
                std::cout << "saved " << session_.messages().size() << " messages to " << path << "\n";
            } else if (name == "/load") {
                const std::string path = arg.empty() ? "twinfer-chat.json" : arg;
                session_.load(path);
                std::cout << "loaded " << session_.messages().size() << " messages from " << path << "\n";
                keep_history();
            } else if (name == "/system") {
                session_.set_system_prompt(arg);
                session_.clear();
                s.system_prompt = arg;
                std::cout << (arg.empty() ? "system prompt removed" : "system prompt set") << "; conversation cleared\n";
                keep_history();
            } else if (name == "/model") {
                if (arg.empty()) throw UsageError("/model needs a path");
                switch_setting(s.model, arg);
            } else if (name == "/backend") {
                if (arg != "cpu" && arg != "cuda") throw UsageError("/backend cpu or /backend cuda");
                switch_setting(s.device, arg);
            } else if (name == "/precision") {
                if (arg != "f32" && arg != "f64") throw UsageError("/precision f32 or /precision f64");
                switch_setting(s.precision, arg);
            } else if (name == "/stats") std::cout << format_stats(*engine_, session_);
            else if (name == "/config") {
                if (arg == "save") {
                    save_config_file(s, default_config_path());
                    std::cout << "saved to " << default_config_path().string() << "\n";
                } else {
                    std::cout << settings_to_toml(s);
                }
            } else {
                throw UsageError("unknown command " + name + " (/help lists them)");
            }
            std::cout << std::flush;
        } catch (const std::exception& e) {
            std::cout << std::flush;
            std::cerr << "error: " << e.what() << "\n";
        }
        return true;
    }

    // Changes one setting and reloads; on failure the old setting and model stay.
    void switch_setting(std::string& setting, const std::string& value) {
        const std::string old = setting;
        setting = value;
        try {
            reload("switched to");
            std::cout << "now: " << engine_->backend_name() << "\n";
        } catch (...) {
            setting = old;
            throw;
        }
    }

    // Saves the conversation to the --history file, if any. A failure (a full disk) is a warning:
    // the file keeps the conversation as last saved, the chat goes on, and the next change tries
    // again; if none succeeds, the command fails at its end naming what the file lacks.
    void keep_history() {
        if (history_.empty()) return;
        try {
            session_.save(history_);
            unsaved_changes_ = 0;
        } catch (const std::exception& e) {
            ++unsaved_changes_;
            save_error_ = e.what();
            log("warn", save_error_);
        }
    }

    ChatSession session_;
    std::unique_ptr<InferenceEngine> engine_;
    std::filesystem::path history_;
    size_t unsaved_changes_ = 0;   // changes since the last successful save
    std::string save_error_;
};

}  // namespace

void register_chat(CLI::App& app) {
    auto& s = settings();
    auto* cmd = app.add_subcommand("chat", "Chat with the model using its chat template (/help inside for commands)");
    cmd->add_option("--system-prompt,--system", s.system_prompt, "system prompt");
    add_model_flags(*cmd, s);
    add_generation_flags(*cmd, s);
    add_ui_flags(*cmd, s);
    static std::string history;
    cmd->add_option("--history", history,
                    "keep the conversation in this JSON file: continued from it when it exists, saved after every answer "
                    "(as /save writes it: a temporary file renamed over the old one)");
    cmd->callback([] {
        std::signal(SIGINT, on_sigint);
        std::signal(SIGTERM, on_sigterm);
        ChatRepl(history).run();
    });
}

}  // namespace twinfer::cli
