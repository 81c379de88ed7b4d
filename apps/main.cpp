// twinfer: the command-line front end. See docs/user-guide.md for every command.
#include <cstdio>
#include <exception>
#include <algorithm>
#include <iostream>
#include <string>

#include "apps/commands.hpp"
#include "apps/options.hpp"

int main(int argc, char** argv) {
    CLI::App app{"twinfer: run GPT-2 and Llama family models from GGUF files on CPU and NVIDIA GPUs"};
    app.require_subcommand(1);
    app.set_version_flag("--version", "twinfer 0.1.0");
    twinfer::cli::register_info(app);
    twinfer::cli::register_tokenize(app);
    twinfer::cli::register_run(app);
    twinfer::cli::register_chat(app);
    twinfer::cli::register_bench(app);
    twinfer::cli::register_eval(app);
    try {
        // The config file fills the settings first; flags given on the command line override it.
        const auto subcommands = app.get_subcommands([](CLI::App*) { return true; });
        const bool known = argc <= 1 || argv[1][0] == '-' ||
                           std::any_of(subcommands.begin(), subcommands.end(), [&](CLI::App* sub) { return sub->check_name(argv[1]); });
        if (!known) {
            std::string names;
            for (const auto* sub : subcommands) names += (names.empty() ? "" : ", ") + sub->get_name();
            throw twinfer::cli::UsageError("unknown command '" + std::string(argv[1]) + "' (commands: " + names + ")");
        }
        twinfer::cli::load_config(twinfer::cli::settings(), argc, argv);
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
    } catch (const std::exception& e) {
        std::cerr << "twinfer: error: " << e.what() << "\n";
        return 1;
    }
    return 0;
}
