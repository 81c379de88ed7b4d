#pragma once
// Flags shared by several commands, declared once with their help text and llama.cpp's defaults,
// and the TOML config file behind them. Precedence: built-in default < config file < command line.
#include <filesystem>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "engine/engine.hpp"

namespace twinfer::cli {

struct Settings {
    // model
    std::string model;
    std::string precision = "f32";
    std::string device = "auto";
    int threads = 0;
    int ctx_size = 0;
    std::string activations = "auto";   // auto (the device's default), f32, int8, int8x2
    std::string cache_type = "f32";     // the KV cache's elements: f32 or f16
    int tensor_parallel = 1;
    // generation
    int max_tokens = -1;
    SamplingParams sampling;     // llama.cpp's defaults (engine/sampler.hpp); its seed is set from `seed`
    int64_t seed = -1;
    std::vector<std::string> stop;
    bool ignore_eos = false;
    bool special = false;        // print control tokens (<|im_end|>, </s>) as text
    // chat
    std::string system_prompt;
    // ui
    bool no_progress = false;
    std::string log_level = "info";

    BackendOptions backend_options() const;   // validates; throws UsageError
    GenerateOptions generate_options() const; // validates; throws UsageError
};

// The config file: --config PATH, else $XDG_CONFIG_HOME/twinfer/config.toml, else
// ~/.config/twinfer/config.toml (absent: no error).
std::filesystem::path default_config_path();
// Reads the config file named on the command line (pre-scanned from argv) or the default one
// into `settings`. A config file named explicitly must exist; a malformed one is an error.
void load_config(Settings& settings, int argc, char** argv);
void load_config_file(Settings& settings, const std::filesystem::path& path);
void save_config_file(const Settings& settings, const std::filesystem::path& path);
std::string settings_to_toml(const Settings& settings);

// Checks a number flag, saying what is allowed as a person would write it ("--threads: -5 is not
// allowed (0 or more; 0 or -1: every core)"), where CLI::Range and CLI::NonNegativeNumber print
// their bounds ("[0 - 1.79769e+308]"). `allowed` is also the flag's help.
CLI::Validator allowed_values(double lowest, double highest, const std::string& allowed);
// The upper bound of a flag that has none: the value's type limits it.
inline constexpr double kNoLimit = std::numeric_limits<double>::infinity();

// Declares flags on a subcommand, bound to `settings` (whose current values are the defaults).
void add_config_flag(CLI::App& cmd);
void add_model_flags(CLI::App& cmd, Settings& settings);
void add_generation_flags(CLI::App& cmd, Settings& settings);
void add_ui_flags(CLI::App& cmd, Settings& settings);

// The global settings object every command binds to (filled from the config file before the
// command line is parsed).
Settings& settings();

// Log lines to stderr at or above the chosen level: debug, info, warn, error.
void log(std::string_view level, const std::string& message);

// Resolve the model path: the flag, or the config file's, else a usage error.
std::filesystem::path require_model(const Settings& s);

}  // namespace twinfer::cli
