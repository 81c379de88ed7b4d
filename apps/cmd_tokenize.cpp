// `twinfer tokenize` and `twinfer detokenize`: the tokenizer of a model file, from the command line.
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <sstream>

#include "apps/commands.hpp"
#include "format/gguf.hpp"
#include "tokenizer/tokenizer.hpp"

namespace twinfer::cli {
namespace {

// A GGUF model (or vocabulary-only) file, or a Hugging Face tokenizer.json.
Tokenizer load_tokenizer(const std::string& model) {
    if (model.empty()) throw UsageError("no model given (-m MODEL.gguf)");
    if (!std::filesystem::exists(model)) throw UsageError("model file not found: " + model);
    if (std::filesystem::path(model).extension() == ".json") return Tokenizer::from_hf_tokenizer_json(model);
    return Tokenizer::from_gguf(gguf::File::open(model));
}

std::string read_all(std::istream& in) { return std::string(std::istreambuf_iterator<char>(in), {}); }

struct TokenizeOptions {
    std::string model, text, file;
    bool ids_only = false, no_bos = false, parse_special = false, time = false;
};

// Encodes the text repeated up to 1 MiB and reports the throughput on stderr.
void report_speed(const Tokenizer& tokenizer, const TokenizeOptions& options, const std::string& text) {
    if (text.empty()) throw UsageError("tokenize --time: no text to repeat");
    constexpr size_t target = 1 << 20;
    std::string sample;
    while (sample.size() < target) sample += text;
    const auto start = std::chrono::steady_clock::now();
    const auto ids = tokenizer.encode(sample, !options.no_bos, options.parse_special);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::cerr << "tokenized " << sample.size() << " bytes into " << ids.size() << " tokens in " << seconds
              << " s: " << sample.size() / seconds / 1e6 << " MB/s\n";
}

void run_tokenize(const TokenizeOptions& options) {
    const Tokenizer tokenizer = load_tokenizer(options.model);
    std::string text;
    if (!options.file.empty()) {
        std::ifstream in(options.file, std::ios::binary);
        if (!in) throw UsageError("cannot read " + options.file);
        text = read_all(in);
    } else if (!options.text.empty()) {
        text = options.text;
    } else {
        text = read_all(std::cin);
    }
    if (options.time) {
        report_speed(tokenizer, options, text);
        return;
    }
    const auto ids = tokenizer.encode(text, !options.no_bos, options.parse_special);
    if (options.ids_only) {
        for (size_t i = 0; i < ids.size(); ++i) std::cout << (i ? " " : "") << ids[i];
        std::cout << "\n";
        return;
    }
    for (Token id : ids) std::cout << id << " -> '" << tokenizer.token_to_piece(id) << "'\n";
}

}  // namespace

// Registers both `tokenize` and `detokenize`.
void register_tokenize(CLI::App& app) {
    auto options = std::make_shared<TokenizeOptions>();
    auto* cmd = app.add_subcommand("tokenize", "Show the tokens a model's tokenizer makes of a text");
    cmd->add_option("-m,--model", options->model, "GGUF file (or a tokenizer.json)")->required();
    cmd->add_option("text", options->text, "Text to tokenize (default: -f FILE, else standard input)");
    cmd->add_option("-f,--file", options->file, "Tokenize this file's exact bytes");
    cmd->add_flag("--ids", options->ids_only, "Print only the ids, space-separated on one line");
    cmd->add_flag("--no-bos", options->no_bos, "Add no BOS/EOS, whatever the vocabulary asks");
    cmd->add_flag("--parse-special", options->parse_special,
                  "Control tokens written in the text (<|im_start|>) become their ids");
    cmd->add_flag("--time", options->time, "Tokenize the text repeated to 1 MiB and report MB/s");
    cmd->callback([options] { run_tokenize(*options); });

    struct DetokenizeOptions {
        std::string model;
        std::vector<Token> ids;
    };
    auto detokenize = std::make_shared<DetokenizeOptions>();
    auto* decode = app.add_subcommand("detokenize", "Print the text token ids stand for");
    decode->add_option("-m,--model", detokenize->model, "GGUF file (or a tokenizer.json)")->required();
    decode->add_option("ids", detokenize->ids, "Token ids")->required();
    decode->callback([detokenize] {
        const Tokenizer tokenizer = load_tokenizer(detokenize->model);
        std::cout << tokenizer.decode(detokenize->ids) << "\n";
    });
}

}  // namespace twinfer::cli
