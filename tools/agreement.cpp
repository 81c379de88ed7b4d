// twinfer_agreement: how often a fast path gives the float64 reference's answer. On a text set fed
// one token at a time through each path's decode step: the share of positions whose top token is
// the reference's ("same top"; flips = 1 - same top) and the KL divergence from the reference; on a
// set of prompts decoded greedily (32 tokens each): the tokens generated before the first
// divergence from the reference, summed and divided by 32 x prompts. Paths: twinfer's activation
// schemes, and another engine's logits and greedy ids read from files (llama.cpp through a small
// driver of its library; bench/agreement/README.md). BENCHMARKS.md, "Trust", has the table.
//
//   twinfer_agreement -m MODEL [--set bench/agreement] [--paths f32,int8x2,int8] [--chunks 20]
//                     [--write-ids DIR] [--external NAME:LOGITS_FILE:IDS_FILE]
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "engine/divergence.hpp"
#include "engine/engine.hpp"

namespace twinfer {
namespace {

constexpr size_t kChunk = 512;          // tokens a text chunk holds, fed from an empty cache
constexpr size_t kGreedyTokens = 32;    // tokens decoded per prompt

std::string read_text(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw std::runtime_error("cannot read " + path.string());
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// The set's token sequences: text chunks and prompts, tokenized by the model's tokenizer.
struct AgreementSet {
    std::vector<std::vector<Token>> chunks;
    std::vector<std::vector<Token>> prompts;
};

AgreementSet load_set(const InferenceEngine& engine, const std::filesystem::path& dir, size_t max_chunks) {
    AgreementSet set;
    std::vector<std::filesystem::path> texts;
    for (const auto& entry : std::filesystem::directory_iterator(dir / "texts")) texts.push_back(entry.path());
    std::sort(texts.begin(), texts.end());
    std::vector<Token> all;
    for (const auto& path : texts) {
        const auto ids = engine.tokenize(read_text(path), false, false);
        all.insert(all.end(), ids.begin(), ids.end());
    }
    for (size_t c = 0; c < max_chunks && (c + 1) * kChunk <= all.size(); ++c)
        set.chunks.emplace_back(all.begin() + std::ptrdiff_t(c * kChunk), all.begin() + std::ptrdiff_t((c + 1) * kChunk));
    const auto prompts = nlohmann::json::parse(read_text(dir / "prompts.json"));
    for (const auto& question : prompts.at("chat")) {
        const std::vector<ChatMessage> messages = {{"user", question.get<std::string>()}};
        set.prompts.push_back(engine.tokenize(engine.render_chat(messages, true), true, true));
    }
    for (const auto& text : prompts.at("plain")) set.prompts.push_back(engine.tokenize(text.get<std::string>(), true, false));
    return set;
}

void write_ids(const std::vector<std::vector<Token>>& sequences, const std::filesystem::path& path) {
    std::ofstream out(path);
    for (const auto& ids : sequences) {
        for (size_t i = 0; i < ids.size(); ++i) out << (i ? " " : "") << ids[i];
        out << "\n";
    }
    if (!out) throw std::runtime_error("cannot write " + path.string());
}

// A fast path: one of twinfer's activation schemes with a KV cache type, or another engine's
// output read from files (logits: float32 rows of every chunk position, in order; ids:
// kGreedyTokens per prompt line).
struct Path {
    std::string name;
    std::optional<compute::Activations> activations = std::nullopt;
    compute::KvType cache_type = compute::KvType::F32;
    std::filesystem::path logits_file = {}, ids_file = {};
    // Filled as the measurement goes.
    std::vector<PositionDivergence> rows = {};
    size_t tokens_before_divergence = 0;
};

class ExternalLogits {
public:
    ExternalLogits(const std::filesystem::path& path, size_t n_vocab) : in_(path, std::ios::binary), row_(n_vocab), wide_(n_vocab) {
        if (!in_) throw std::runtime_error("cannot read " + path.string());
    }
    std::span<const double> next() {
        if (!in_.read(reinterpret_cast<char*>(row_.data()), std::streamsize(row_.size() * sizeof(float))))
            throw std::runtime_error("the logits file ends early");
        std::copy(row_.begin(), row_.end(), wide_.begin());
        return wide_;
    }

private:
    std::ifstream in_;
    std::vector<float> row_;
    std::vector<double> wide_;
};

std::vector<std::vector<Token>> read_ids(const std::filesystem::path& path) {
    std::ifstream in(path);
    if (!in) throw std::runtime_error("cannot read " + path.string());
    std::vector<std::vector<Token>> out;
    for (std::string line; std::getline(in, line);) {
        std::istringstream fields(line);
        auto& ids = out.emplace_back();
        for (Token t; fields >> t;) ids.push_back(t);
    }
    return out;
}

// How many of `generated` (decoded greedily after `prompt`) the reference would have chosen too:
// the reference fed prompt + generated once, its argmax compared position by position.
size_t agreeing_prefix(InferenceEngine& reference, const std::vector<Token>& prompt, const std::vector<Token>& generated) {
    std::vector<Token> ids = prompt;
    ids.insert(ids.end(), generated.begin(), generated.end() - 1);
    const Logits logits = reference.evaluate_all(ids);
    size_t n = 0;
    while (n < generated.size() && argmax(logits.row(prompt.size() - 1 + n)) == generated[n]) ++n;
    return n;
}

void run(const std::filesystem::path& model, const std::filesystem::path& set_dir, std::vector<Path>& paths, size_t max_chunks,
         const std::filesystem::path& ids_dir, int threads) {
    BackendOptions reference_options{.model = model, .precision = Precision::F64, .device = DeviceChoice::CPU, .n_threads = threads};
    auto reference = InferenceEngine::load(reference_options);
    const AgreementSet set = load_set(reference, set_dir, max_chunks);
    std::fprintf(stderr, "agreement: %zu chunks of %zu tokens, %zu prompts\n", set.chunks.size(), kChunk, set.prompts.size());
    if (!ids_dir.empty()) {
        std::filesystem::create_directories(ids_dir);
        write_ids(set.chunks, ids_dir / "chunks.txt");
        write_ids(set.prompts, ids_dir / "prompts.txt");
        if (paths.empty()) return;   // only the ids, for another engine's driver
    }
    const size_t n_vocab = reference.config().n_vocab;

    std::vector<InferenceEngine> engines;
    std::vector<ExternalLogits> external;
    for (const Path& p : paths) {
        if (p.activations) {
            engines.push_back(InferenceEngine::load({.model = model, .device = DeviceChoice::CPU, .n_ctx = 1024, .n_threads = threads,
                                                     .activations = p.activations, .cache_type = p.cache_type}));
        } else {
            external.emplace_back(p.logits_file, n_vocab);
        }
    }
    for (size_t c = 0; c < set.chunks.size(); ++c) {
        const Logits expected = reference.evaluate_all(set.chunks[c]);
        size_t engine = 0, file = 0;
        for (Path& p : paths) {
            if (p.activations) {
                engines[engine++].evaluate_as_generated(set.chunks[c], 1, [&](size_t pos, std::span<const double> row) {
                    p.rows.push_back(compare_logits(expected.row(pos), row));
                });
            } else {
                for (size_t pos = 0; pos < kChunk; ++pos) p.rows.push_back(compare_logits(expected.row(pos), external[file].next()));
                ++file;
            }
        }
        std::fprintf(stderr, "agreement: chunk %zu/%zu\n", c + 1, set.chunks.size());
    }

    GenerateOptions greedy;
    greedy.max_tokens = kGreedyTokens;
    greedy.ignore_eos = true;
    greedy.sampling.temperature = 0;
    size_t engine = 0;
    for (Path& p : paths) {
        std::vector<std::vector<Token>> generated;
        if (p.activations) {
            for (const auto& prompt : set.prompts) generated.push_back(engines[engine].generate(prompt, greedy).tokens);
            ++engine;
        } else {
            generated = read_ids(p.ids_file);
        }
        if (generated.size() != set.prompts.size()) throw std::runtime_error(p.name + ": greedy ids for a different number of prompts");
        for (size_t i = 0; i < set.prompts.size(); ++i) {
            if (generated[i].size() != kGreedyTokens) throw std::runtime_error(p.name + ": a prompt without 32 greedy ids");
            p.tokens_before_divergence += agreeing_prefix(reference, set.prompts[i], generated[i]);
        }
        std::fprintf(stderr, "agreement: %s prompts done\n", p.name.c_str());
    }

    std::printf("| path | positions | same top | flips | mean KL | KL p99 | KL max | worst relative error | tokens before divergence |\n");
    std::printf("|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for (const Path& p : paths) {
        const DivergenceSummary s = summarize(p.rows);
        const double agreed = double(p.tokens_before_divergence) / double(kGreedyTokens * set.prompts.size());
        std::printf("| %s | %zu | %.2f%% | %zu | %.3e | %.3e | %.3e | %.2e | %zu / %zu = %.3f |\n", p.name.c_str(), s.positions,
                    100 * s.same_top_share(), s.positions - s.same_top, s.mean_kl, s.kl_p99, s.kl_max, s.worst_relative,
                    p.tokens_before_divergence, kGreedyTokens * set.prompts.size(), agreed);
    }
}

}  // namespace
}  // namespace twinfer

int main(int argc, char** argv) {
    using namespace twinfer;
    CLI::App app{"twinfer_agreement: fast paths against the float64 reference on a text set and greedy prompts"};
    std::string model, set_dir = "bench/agreement", paths_list = "f32,int8x2,int8", ids_dir;
    std::vector<std::string> externals;
    size_t chunks = 20;
    int threads = 0;
    app.add_option("-m,--model", model, "GGUF model file")->required();
    app.add_option("--set", set_dir, "the agreement set's folder (texts/, prompts.json)")->capture_default_str();
    app.add_option("--paths", paths_list,
                   "twinfer's paths to measure, comma-separated: an activation scheme, or SCHEME/CACHE_TYPE (int8x2/f16) "
                   "(none: with --write-ids, only the ids)")
        ->capture_default_str();
    app.add_option("--chunks", chunks, "text chunks of 512 tokens to use")->capture_default_str();
    app.add_option("-t,--threads", threads, "CPU threads (0: every core)");
    app.add_option("--write-ids", ids_dir, "write the chunks' and prompts' token ids (chunks.txt, prompts.txt) into this folder");
    app.add_option("--external", externals, "NAME:LOGITS_FILE:IDS_FILE, another engine's rows and greedy ids for the same ids");
    CLI11_PARSE(app, argc, argv);
    try {
        std::vector<Path> paths;
        std::stringstream list(paths_list);
        for (std::string name; std::getline(list, name, ',');)
            if (!name.empty()) {
                const size_t slash = name.find('/');
                paths.push_back({.name = "twinfer " + name,
                                 .activations = compute::parse_activations(name.substr(0, slash)),
                                 .cache_type = slash == std::string::npos ? compute::KvType::F32
                                                                          : compute::parse_kv_type(name.substr(slash + 1))});
            }
        for (const auto& e : externals) {
            const size_t a = e.find(':'), b = e.find(':', a + 1);
            if (a == std::string::npos || b == std::string::npos) throw std::invalid_argument("--external wants NAME:LOGITS:IDS, not " + e);
            paths.push_back({.name = e.substr(0, a), .logits_file = e.substr(a + 1, b - a - 1), .ids_file = e.substr(b + 1)});
        }
        run(model, set_dir, paths, chunks, ids_dir, threads);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "twinfer_agreement: error: %s\n", e.what());
        return 1;
    }
    return 0;
}
