// twinfer: the command-line front end. See docs/user-guide.md for every command.
#include <cstdio>
#include <exception>
#include <algorithm>
#include <iostream>
#include <string>

#include "apps/commands.hpp"
#include "apps/options.hpp"
#include "format/mapped_file_guard.hpp"

namespace {

// The letters of `command`'s short flags that take no value ("h" of -h).
std::string short_flag_letters(const CLI::App& command) {
    std::string letters;
    for (const CLI::Option* option : command.get_options())
        if (option->get_items_expected_max() == 0)
            for (const auto& name : option->get_snames()) letters += name;
    return letters;
}

// CLI11 reads "-hf" (llama.cpp's download-from-Hugging-Face flag) as "-h -f" and prints the help
// with exit code 0. A single-dash argument of 3+ characters starting with a short flag that takes
// no value cannot be that flag with an attached value (as "-n64" is), so it is an unknown option.
void reject_unknown_short_options(const CLI::App& command, int argc, char** argv) {
    const std::string flags = short_flag_letters(command);
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        if (arg == "--") return;
        if (arg.size() >= 3 && arg[0] == '-' && arg[1] != '-' && flags.find(arg[1]) != std::string::npos)
            throw twinfer::cli::UsageError("unknown option '" + arg + "' (`twinfer " +
                                           (command.get_parent() ? command.get_name() + " " : std::string()) + "--help` lists the options)");
    }
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"twinfer: run large language models (Llama, Qwen, Gemma, Phi, gpt-oss, GPT-2, ...) from GGUF files on CPU "
                 "and NVIDIA GPUs"};
    app.require_subcommand(1);
    app.set_version_flag("--version", "twinfer 0.1.0");
    twinfer::cli::register_info(app);
    twinfer::cli::register_tokenize(app);
    twinfer::cli::register_run(app);
    twinfer::cli::register_chat(app);
    twinfer::cli::register_bench(app);
    twinfer::cli::register_eval(app);
    twinfer::cli::register_serve(app);
    // Exit codes (docs/user-guide.md): 2 for a usage or input mistake the user can fix, 1 for a
    // failure while running, 130 (143) when Ctrl-C (SIGTERM) interrupted `run`, 0 otherwise.
    try {
        // The config file fills the settings first; flags given on the command line override it.
        const auto subcommands = app.get_subcommands([](CLI::App*) { return true; });
        const CLI::App* command = &app;
        if (argc > 1 && argv[1][0] != '-') {
            const auto named = std::find_if(subcommands.begin(), subcommands.end(), [&](CLI::App* sub) { return sub->check_name(argv[1]); });
            if (named == subcommands.end()) {
                std::string names;
                for (const auto* sub : subcommands) names += (names.empty() ? "" : ", ") + sub->get_name();
                throw twinfer::cli::UsageError("unknown command '" + std::string(argv[1]) + "' (commands: " + names + ")");
            }
            command = *named;
        }
        reject_unknown_short_options(*command, argc, argv);
        twinfer::cli::load_config(twinfer::cli::settings(), argc, argv);
        // The CPU models read their weights from the model file's mapping at every pass: if the
        // file is truncated under a command (a chat left open, a server, a long run), a read past
        // its new end reads zeros instead of ending the process with SIGBUS, and the pass fails:
        // ModelFileChanged (engine/engine.hpp), an error line and exit 1 like any other failure;
        // in the server, a 500 for each request (server/batched_model.cpp).
        twinfer::guard_mapped_files();
        app.parse(argc, argv);
    } catch (const CLI::CallForHelp& e) {
        return app.exit(e);
    } catch (const CLI::CallForAllHelp& e) {
        return app.exit(e);
    } catch (const CLI::CallForVersion& e) {
        return app.exit(e);
    } catch (const CLI::ParseError& e) {
        std::cerr << "twinfer: error: " << e.what() << "\n";
        return 2;
    } catch (const twinfer::cli::UsageError& e) {
        std::cerr << "twinfer: error: " << e.what() << "\n";
        return 2;
    } catch (const twinfer::ContextOverflow& e) {   // a prompt longer than the context: input the user can fix
        std::cerr << "twinfer: error: " << e.what() << "\n";
        return 2;
    } catch (const twinfer::cli::Interrupted& e) {   // the command has printed what it had
        return 128 + e.signal;
    } catch (const std::exception& e) {
        std::cerr << "twinfer: error: " << e.what() << "\n";
        return 1;
    }
    return 0;
}
