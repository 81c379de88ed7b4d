// `twinfer info MODEL`: what a GGUF file really holds, for people (text) and machines (--json).
#include <filesystem>
#include <iostream>
#include <map>

#include <nlohmann/json.hpp>

#include "apps/commands.hpp"
#include "format/gguf.hpp"

namespace twinfer::cli {
namespace {

struct InfoOptions {
    std::string model;
    bool json = false;
};

// Hyper-parameters worth showing, by their key suffix after "<arch>.".
constexpr const char* kHyperParameterKeys[] = {
    "context_length", "embedding_length", "block_count", "feed_forward_length",
    "attention.head_count", "attention.head_count_kv", "attention.layer_norm_epsilon",
    "attention.layer_norm_rms_epsilon", "rope.dimension_count", "rope.freq_base",
    "rope.scaling.type", "rope.scaling.factor", "vocab_size",
};

nlohmann::json to_json(const gguf::Value& value) {
    return std::visit(
        [](const auto& x) -> nlohmann::json {
            using T = std::decay_t<decltype(x)>;
            if constexpr (std::is_same_v<T, gguf::Array>) {
                auto arr = nlohmann::json::array();
                for (size_t i = 0; i < x.size(); ++i) arr.push_back(to_json(x.at(i)));
                return arr;
            } else {
                return x;
            }
        },
        value.v);
}

nlohmann::json describe(const gguf::File& file) {
    nlohmann::json out;
    out["file"] = file.origin();
    out["file_size"] = file.file_size();
    out["gguf_version"] = file.version();
    const std::string arch = file.string_or("general.architecture").value_or("");
    out["architecture"] = arch;
    if (auto name = file.string_or("general.name")) out["name"] = *name;
    nlohmann::json hparams = nlohmann::json::object();
    for (const char* key : kHyperParameterKeys)
        if (const auto* v = file.find(arch + "." + key)) hparams[key] = to_json(*v);
    out["hyperparameters"] = hparams;

    nlohmann::json tokenizer = nlohmann::json::object();
    if (auto model = file.string_or("tokenizer.ggml.model")) tokenizer["model"] = *model;
    if (auto pre = file.string_or("tokenizer.ggml.pre")) tokenizer["pre"] = *pre;
    if (file.has("tokenizer.ggml.tokens")) tokenizer["vocab_size"] = file.get_array("tokenizer.ggml.tokens").size();
    for (const char* id : {"bos_token_id", "eos_token_id", "eot_token_id", "padding_token_id", "unknown_token_id"})
        if (const auto* v = file.find(std::string("tokenizer.ggml.") + id)) tokenizer[id] = to_json(*v);
    out["tokenizer"] = tokenizer;
    out["chat_template"] = file.has("tokenizer.chat_template");

    std::map<std::string, uint64_t> type_counts;
    uint64_t parameters = 0, tensor_bytes = 0;
    for (const auto& t : file.tensors()) {
        ++type_counts[std::string(type_name(t.type))];
        parameters += t.n_elements;
        tensor_bytes += t.n_bytes;
    }
    out["tensor_count"] = file.tensors().size();
    out["tensor_types"] = type_counts;
    out["parameters"] = parameters;
    out["tensor_bytes"] = tensor_bytes;
    out["metadata_count"] = file.metadata().size();
    return out;
}

// Metadata strings are bytes from the file: invalid UTF-8 is shown replaced, not an error.
std::string dump(const nlohmann::json& j, int indent = -1) {
    return j.dump(indent, ' ', false, nlohmann::json::error_handler_t::replace);
}

void print_text(const nlohmann::json& d) {
    auto line = [](const std::string& label, const auto& value) { std::cout << label << ": " << value << "\n"; };
    line("file", d["file"].get<std::string>());
    line("size", std::to_string(d["file_size"].get<uint64_t>()) + " bytes (" +
                     std::to_string(d["file_size"].get<uint64_t>() / (1024.0 * 1024.0)) + " MiB)");
    line("gguf version", d["gguf_version"].get<uint32_t>());
    line("architecture", d["architecture"].get<std::string>().empty() ? "(none: vocabulary-only or unknown)" : d["architecture"].get<std::string>());
    if (d.contains("name")) line("name", d["name"].get<std::string>());
    for (const auto& [key, value] : d["hyperparameters"].items()) line("  " + key, dump(value));
    const auto& tok = d["tokenizer"];
    line("tokenizer", tok.empty() ? std::string("(none)") : dump(tok));
    line("chat template", d["chat_template"].get<bool>() ? "yes" : "no");
    line("tensors", d["tensor_count"].get<uint64_t>());
    std::string types;
    for (const auto& [type, count] : d["tensor_types"].items()) types += type + " x" + std::to_string(count.get<uint64_t>()) + "  ";
    if (!types.empty()) line("tensor types", types);
    line("parameters", d["parameters"].get<uint64_t>());
    line("metadata keys", d["metadata_count"].get<uint64_t>());
}

}  // namespace

void register_info(CLI::App& app) {
    auto options = std::make_shared<InfoOptions>();
    auto* cmd = app.add_subcommand("info", "Show what a GGUF model file holds");
    cmd->add_option("model", options->model, "GGUF file");
    cmd->add_option("-m,--model", options->model, "GGUF file (same as the positional argument)");
    cmd->add_flag("--json", options->json, "Print JSON for machines");
    cmd->callback([options] {
        if (options->model.empty()) throw UsageError("info: no model given (twinfer info MODEL.gguf)");
        if (!std::filesystem::exists(options->model)) throw UsageError("model file not found: " + options->model);
        const auto file = gguf::File::open(options->model);
        const auto description = describe(file);
        if (options->json) std::cout << dump(description, 2) << "\n";
        else print_text(description);
    });
}

}  // namespace twinfer::cli
