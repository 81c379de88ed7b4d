#pragma once
// Each `twinfer` subcommand registers itself on the CLI11 app: its flags (declared once, with help
// text and defaults) and the function that runs it. main.cpp only wires them up and turns
// exceptions into one-line errors and exit codes.
#include <CLI/CLI.hpp>
#include <stdexcept>

namespace twinfer::cli {

// A mistake in how the command was called (bad flag value, missing file): exit code 2.
struct UsageError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// Thrown by a command that Ctrl-C (SIGINT) or SIGTERM stopped, after it printed what it had: exit
// code 128 + the signal (130, 143), as a shell reports a program the signal ended and as llama.cpp
// exits.
struct Interrupted {
    int signal;
};

void register_info(CLI::App& app);
void register_tokenize(CLI::App& app);  // tokenize, detokenize
void register_run(CLI::App& app);
void register_chat(CLI::App& app);
void register_bench(CLI::App& app);
void register_eval(CLI::App& app);   // perplexity, verify
void register_serve(CLI::App& app);

}  // namespace twinfer::cli
