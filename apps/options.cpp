#include "apps/options.hpp"

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>
#include <thread>

#include <toml++/toml.h>

#include "apps/commands.hpp"
#include "format/atomic_file.hpp"

namespace twinfer::cli {

Settings& settings() {
    static Settings s;
    return s;
}

namespace {

int level_rank(std::string_view level) {
    if (level == "debug") return 0;
    if (level == "info") return 1;
    if (level == "warn") return 2;
    if (level == "error") return 3;
    return 1;
}

template <class T>
void read_value(const toml::table& table, std::string_view key, T& out, const std::filesystem::path& path) {
    const toml::node* node = table.get(key);
    if (!node) return;
    if constexpr (std::is_same_v<T, std::string>) {
        if (auto v = node->value<std::string>()) { out = *v; return; }
    } else if constexpr (std::is_same_v<T, bool>) {
        if (auto v = node->value<bool>()) { out = *v; return; }
    } else if constexpr (std::is_integral_v<T>) {
        if (auto v = node->value<int64_t>()) { out = static_cast<T>(*v); return; }
    } else if constexpr (std::is_floating_point_v<T>) {
        if (auto v = node->value<double>()) { out = static_cast<T>(*v); return; }
    } else if constexpr (std::is_same_v<T, std::vector<std::string>>) {
        if (const auto* arr = node->as_array()) {
            out.clear();
            for (const auto& item : *arr) {
                auto v = item.value<std::string>();
                if (!v) throw UsageError(path.string() + ": '" + std::string(key) + "' must be an array of strings");
                out.push_back(*v);
            }
            return;
        }
    }
    throw UsageError(path.string() + ": '" + std::string(key) + "' has the wrong type");
}

// A table's keys as read_value reads them, so a key nobody asked for (a typo, a setting of another
// program) is an error naming it instead of being silently ignored.
class TableReader {
public:
    TableReader(const toml::table& table, const std::filesystem::path& path, std::string prefix = {})
        : table_(table), path_(path), prefix_(std::move(prefix)) {}

    template <class T>
    void read(std::string_view key, T& out) {
        known_.emplace_back(key);
        read_value(table_, key, out, path_);
    }
    const toml::table* subtable(std::string_view key) {
        known_.emplace_back(key);
        return table_.get_as<toml::table>(key);
    }
    void reject_unknown_keys() const {
        for (const auto& [key, value] : table_)
            if (std::find(known_.begin(), known_.end(), key.str()) == known_.end())
                throw UsageError(path_.string() + ": unknown key '" + prefix_ + std::string(key.str()) + "'");
    }

private:
    const toml::table& table_;
    const std::filesystem::path& path_;
    std::string prefix_;
    std::vector<std::string> known_;
};

}  // namespace

CLI::Validator allowed_values(double lowest, double highest, const std::string& allowed) {
    return CLI::Validator(
        [=](std::string& text) -> std::string {
            double value = 0;
            if (!CLI::detail::lexical_cast(text, value)) return "'" + text + "' is not a number";
            if (value >= lowest && value <= highest) return {};
            return text + " is not allowed (" + allowed + ")";
        },
        allowed);
}

void log(std::string_view level, const std::string& message) {
    if (level_rank(level) < level_rank(settings().log_level)) return;
    std::cerr << "twinfer: " << (level == "info" ? "" : std::string(level) + ": ") << message << "\n";
}

std::filesystem::path default_config_path() {
    if (const char* xdg = std::getenv("XDG_CONFIG_HOME"); xdg && *xdg) return std::filesystem::path(xdg) / "twinfer" / "config.toml";
    if (const char* home = std::getenv("HOME"); home && *home) return std::filesystem::path(home) / ".config" / "twinfer" / "config.toml";
    return {};
}

void load_config_file(Settings& s, const std::filesystem::path& path) {
    toml::table root;
    try {
        root = toml::parse_file(path.string());
    } catch (const toml::parse_error& e) {
        std::ostringstream msg;
        msg << path.string() << ":" << e.source().begin.line << ": " << e.description();
        throw UsageError("bad config file: " + msg.str());
    }
    TableReader top(root, path);
    top.read("model", s.model);
    top.read("precision", s.precision);
    top.read("device", s.device);
    top.read("threads", s.threads);
    top.read("ctx_size", s.ctx_size);
    top.read("activations", s.activations);
    bool exact_activations = false;   // the older spelling of activations = "f32"
    top.read("exact_activations", exact_activations);
    if (exact_activations) s.activations = "f32";
    top.read("cache_type", s.cache_type);
    top.read("tensor_parallel", s.tensor_parallel);
    top.read("system_prompt", s.system_prompt);
    top.read("log_level", s.log_level);
    top.read("no_progress", s.no_progress);
    if (const auto* generation = top.subtable("generation")) {
        TableReader gen(*generation, path, "generation.");
        gen.read("max_tokens", s.max_tokens);
        gen.read("temperature", s.sampling.temperature);
        gen.read("top_k", s.sampling.top_k);
        gen.read("top_p", s.sampling.top_p);
        gen.read("min_p", s.sampling.min_p);
        gen.read("typical_p", s.sampling.typical_p);
        gen.read("repeat_penalty", s.sampling.repeat_penalty);
        gen.read("repeat_last_n", s.sampling.repeat_last_n);
        gen.read("frequency_penalty", s.sampling.frequency_penalty);
        gen.read("presence_penalty", s.sampling.presence_penalty);
        gen.read("seed", s.seed);
        gen.read("stop", s.stop);
        gen.reject_unknown_keys();
    }
    top.reject_unknown_keys();
}

void load_config(Settings& s, int argc, char** argv) {
    std::filesystem::path explicit_path;
    for (int i = 1; i < argc; ++i) {
        const std::string_view arg = argv[i];
        if (arg == "--config" && i + 1 < argc) explicit_path = argv[i + 1];
        else if (arg.starts_with("--config=")) explicit_path = std::string(arg.substr(9));
    }
    if (!explicit_path.empty()) {
        if (!std::filesystem::is_regular_file(explicit_path)) throw UsageError("config file not found: " + explicit_path.string());
        load_config_file(s, explicit_path);
        return;
    }
    const auto path = default_config_path();
    if (!path.empty() && std::filesystem::is_regular_file(path)) load_config_file(s, path);
}

std::string settings_to_toml(const Settings& s) {
    // Settings only: max_tokens and seed are one-off values of a run, not preferences to keep.
    toml::table gen{{"temperature", s.sampling.temperature},
                    {"top_k", s.sampling.top_k},                 {"top_p", s.sampling.top_p},
                    {"min_p", s.sampling.min_p},                 {"typical_p", s.sampling.typical_p},
                    {"repeat_penalty", s.sampling.repeat_penalty}, {"repeat_last_n", s.sampling.repeat_last_n},
                    {"frequency_penalty", s.sampling.frequency_penalty}, {"presence_penalty", s.sampling.presence_penalty}};
    toml::array stops;
    for (const auto& stop : s.stop) stops.push_back(stop);
    gen.insert("stop", stops);
    toml::table root{{"model", s.model},         {"precision", s.precision}, {"device", s.device},
                     {"threads", s.threads},     {"ctx_size", s.ctx_size},   {"activations", s.activations},
                     {"cache_type", s.cache_type}, {"tensor_parallel", s.tensor_parallel}, {"system_prompt", s.system_prompt}, {"log_level", s.log_level}};
    root.insert("generation", gen);
    std::ostringstream out;
    out << "# twinfer configuration: command-line flags override these values.\n" << root << "\n";
    return out.str();
}

// A temporary file renamed over the old one: a failure (a full disk) leaves the old file as it was.
void save_config_file(const Settings& s, const std::filesystem::path& path) {
    if (path.empty()) throw UsageError("no config path (set HOME or XDG_CONFIG_HOME, or pass --config)");
    if (path.has_parent_path()) std::filesystem::create_directories(path.parent_path());
    write_file_atomically(path, settings_to_toml(s));
}

void add_config_flag(CLI::App& cmd) {
    // Read before parsing (load_config scans argv); declared so --help shows it and CLI11 accepts it.
    static std::string ignored;
    cmd.add_option("--config", ignored, "TOML config file (default: " + default_config_path().string() + ")");
}

void add_model_flags(CLI::App& cmd, Settings& s) {
    cmd.add_option("-m,--model", s.model, "GGUF model file");
    cmd.add_option("--precision", s.precision, "f32 (fast models) or f64 (the exact reference)")
        ->check(CLI::IsMember({"f32", "f64"}))->capture_default_str();
    cmd.add_option("--device", s.device, "auto (GPU when present), cpu or cuda")
        ->check(CLI::IsMember({"auto", "cpu", "cuda", "gpu"}))->capture_default_str();
    cmd.add_option("-t,--threads", s.threads, "CPU threads (0 or -1: every core)")
        ->check(allowed_values(-1, kNoLimit, "0 or more; 0 or -1: every core"));
    cmd.add_option("-c,--ctx-size", s.ctx_size, "context length in tokens (0: the model's trained length)")
        ->check(allowed_values(0, kNoLimit, "0 or more; 0: the model's trained length"));
    cmd.add_option("--activations", s.activations,
                   "how quantized products read activations: auto (cpu int8x2, cuda int8), f32, int8 (as llama.cpp), int8x2 (cpu)")
        ->check(CLI::IsMember({"auto", "f32", "int8", "int8x2"}))
        ->capture_default_str();
    cmd.add_flag_callback("--exact-activations", [&s] { s.activations = "f32"; }, "the same as --activations f32");
    cmd.add_option("--cache-type", s.cache_type, "the KV cache's elements, keys and values: f32, f16 (half the memory), or q8_0 (0.53 of f16's; CPU only)")
        ->check(CLI::IsMember({"f32", "f16", "q8_0"}))->capture_default_str();
    cmd.add_option("--tensor-parallel", s.tensor_parallel,
                   "split the model over N ranks: N GPUs over NCCL (--device cuda), or N simulated ranks (--device cpu)")
        ->check(allowed_values(1, 64, "1 to 64"))->capture_default_str();
}

void add_generation_flags(CLI::App& cmd, Settings& s) {
    cmd.add_option("-n,--max-tokens", s.max_tokens, "tokens to generate (-1: until end of generation or a full context)")
        ->check(allowed_values(-1, kNoLimit, "-1 or more; -1: no limit"))->capture_default_str();
    cmd.add_option("--temp,--temperature", s.sampling.temperature, "sampling temperature (0: greedy)")->check(allowed_values(0, 100, "0 to 100"))->capture_default_str();
    cmd.add_option("--top-k", s.sampling.top_k, "top-k (0: off)")->check(allowed_values(0, kNoLimit, "0 or more; 0: off"))->capture_default_str();
    cmd.add_option("--top-p", s.sampling.top_p, "top-p (1: off)")->check(allowed_values(0, 1, "0 to 1"))->capture_default_str();
    cmd.add_option("--min-p", s.sampling.min_p, "min-p (0: off)")->check(allowed_values(0, 1, "0 to 1"))->capture_default_str();
    cmd.add_option("--typical", s.sampling.typical_p, "locally typical sampling p (1: off)")->check(allowed_values(0, 1, "0 to 1"))->capture_default_str();
    cmd.add_option("--repeat-penalty", s.sampling.repeat_penalty, "repetition penalty (1: off)")->check(allowed_values(0.01, 100, "0.01 to 100"))->capture_default_str();
    cmd.add_option("--repeat-last-n", s.sampling.repeat_last_n, "tokens the penalties look back over (-1: all, 0: off)")
        ->check(allowed_values(-1, kNoLimit, "-1 or more; -1: all, 0: off"))->capture_default_str();
    cmd.add_option("--frequency-penalty", s.sampling.frequency_penalty, "frequency penalty")->capture_default_str();
    cmd.add_option("--presence-penalty", s.sampling.presence_penalty, "presence penalty")->capture_default_str();
    cmd.add_option("-s,--seed", s.seed, "random seed (-1: random)")
        ->check(allowed_values(-1, 0xFFFFFFFE, "-1 to 4294967294; -1: random"))->capture_default_str();
    cmd.add_option("--stop", s.stop, "stop string (repeatable); not printed");
    cmd.add_flag("--ignore-eos", s.ignore_eos, "keep generating past end-of-generation tokens");
    cmd.add_flag("--special", s.special, "print control tokens (<|im_end|>, </s>, ...) as text; hidden by default");
}

void add_ui_flags(CLI::App& cmd, Settings& s) {
    cmd.add_flag("--no-progress", s.no_progress, "no progress bars");
    cmd.add_option("--log-level", s.log_level, "debug, info, warn or error")
        ->check(CLI::IsMember({"debug", "info", "warn", "error"}))->capture_default_str();
    add_config_flag(cmd);
}

BackendOptions Settings::backend_options() const {
    BackendOptions o;
    o.model = require_model(*this);
    try {
        o.precision = parse_precision(precision);
        o.device = parse_device_choice(device);
    } catch (const std::invalid_argument& e) {
        throw UsageError(e.what());
    }
    o.n_ctx = static_cast<size_t>(ctx_size);
    o.n_threads = std::max(threads, 0);   // -1 (llama.cpp's spelling) and 0 both mean every core
    if (const unsigned cores = std::thread::hardware_concurrency(); threads > 0 && cores > 0 && static_cast<unsigned>(threads) > cores)
        log("warn", "--threads " + std::to_string(threads) + " is more than the " + std::to_string(cores) +
                        " cores of this machine: the threads will take turns, which is slower");
    if (activations != "auto") {
        try {
            o.activations = compute::parse_activations(activations);
        } catch (const std::invalid_argument& e) {
            throw UsageError(e.what());
        }
    }
    try {
        o.cache_type = compute::parse_kv_type(cache_type);
    } catch (const std::invalid_argument& e) {
        throw UsageError(e.what());
    }
    o.tensor_parallel = tensor_parallel;
    return o;
}

GenerateOptions Settings::generate_options() const {
    GenerateOptions g;
    g.max_tokens = max_tokens;
    g.stop = stop;
    g.ignore_eos = ignore_eos;
    g.special = special;
    g.sampling = sampling;
    auto& p = g.sampling;
    p.seed = seed < 0 ? 0xFFFFFFFF : static_cast<uint64_t>(seed);
    try {
        p.validate();
    } catch (const std::invalid_argument& e) {
        throw UsageError(e.what());
    }
    return g;
}

std::filesystem::path require_model(const Settings& s) {
    if (s.model.empty()) throw UsageError("no model given (-m MODEL.gguf, or `model = ...` in the config file)");
    std::error_code ec;
    if (!std::filesystem::exists(s.model, ec)) throw UsageError("model file not found: " + s.model);
    if (std::filesystem::is_directory(s.model, ec)) throw UsageError("model path is a directory, not a GGUF file: " + s.model);
    return s.model;
}

}  // namespace twinfer::cli
