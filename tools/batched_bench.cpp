// The server's batched decode pass (F32ModelBase::run_rows, Single rows) against the same rows
// decoded one pass each: decode tokens a second at 1, 4, 16 (or the listed) concurrent sequences
// of one model (BENCHMARKS.md, "Batched decode").
//   twinfer_batched_bench [--device cpu|cuda] [--batched-only] MODEL.gguf [threads=0 (one per core)]
//                         [prompt_tokens=100] [steps=32] [rows...=1 4 16]
// Each sequence's slot holds a prompt of distinct ids (fed as one Tiled pass, not timed); then
// `steps` decode passes feed every sequence its previous row's argmax, which each row asks for
// alone (SlotToken::argmax_only), as the server's greedy sequences do. Every configuration starts
// from the same cache lengths, so attention reads as much in each. --batched-only skips the
// one-pass-a-row runs (slow for a large model on many rows).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "format/gguf.hpp"
#include "models/f32_llama_model.hpp"

namespace {

using namespace twinfer;
using Clock = std::chrono::steady_clock;
constexpr size_t warm_up_steps = 4;

// Decode tokens a second over `steps` steps of n sequences: batched (one pass of n Single rows a
// step) or not (n passes of one row a step: every product reads its weights once per row).
double decode_rate(F32LlamaModel& model, size_t n, size_t prompt_tokens, size_t steps, bool batched) {
    for (size_t s = 0; s < n; ++s) model.truncate_slot(s, prompt_tokens);
    std::vector<Token> next(n, Token(100));
    const auto start = Clock::now();
    for (size_t step = 0; step < steps; ++step) {
        if (batched) {
            std::vector<SlotToken> rows;
            for (size_t s = 0; s < n; ++s) rows.push_back({.slot = s, .token = next[s], .logits = true, .argmax_only = true});
            next = model.run_rows(rows).argmax;
        } else {
            for (size_t s = 0; s < n; ++s) {
                const SlotToken row{.slot = s, .token = next[s], .logits = true, .argmax_only = true};
                next[s] = model.run_rows(std::span(&row, 1)).argmax.at(0);
            }
        }
    }
    const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    return double(n * steps) / seconds;
}

}  // namespace

int main(int argc, char** argv) {
    compute::Device device = compute::Device::CPU;
    bool batched_only = false;
    std::vector<std::string> args(argv + 1, argv + argc);
    while (!args.empty() && args[0].starts_with("--")) {
        if (args[0] == "--batched-only") {
            batched_only = true;
            args.erase(args.begin());
        } else if (args[0] == "--device" && args.size() > 1 && (args[1] == "cpu" || args[1] == "cuda")) {
            device = args[1] == "cuda" ? compute::Device::CUDA : compute::Device::CPU;
            args.erase(args.begin(), args.begin() + 2);
        } else {
            args.clear();
        }
    }
    if (args.empty()) {
        std::fprintf(stderr, "usage: %s [--device cpu|cuda] [--batched-only] MODEL.gguf [threads=0] [prompt_tokens=100] [steps=32] "
                             "[rows...=1 4 16]\n", argv[0]);
        return 2;
    }
    try {
        const int threads = args.size() > 1 ? std::stoi(args[1]) : 0;
        const size_t prompt_tokens = args.size() > 2 ? std::stoul(args[2]) : 100;
        const size_t steps = args.size() > 3 ? std::stoul(args[3]) : 32;
        std::vector<size_t> row_counts;
        for (size_t i = 4; i < args.size(); ++i) row_counts.push_back(std::stoul(args[i]));
        if (row_counts.empty()) row_counts = {1, 4, 16};
        const size_t max_rows = *std::max_element(row_counts.begin(), row_counts.end());

        auto file = std::make_shared<const gguf::File>(gguf::File::open(args[0]));
        const size_t n_ctx = prompt_tokens + std::max(steps, warm_up_steps) + 1;
        F32LlamaModel model = F32LlamaModel::load(file, {.n_ctx = n_ctx, .n_threads = threads, .device = device});
        model.set_slot_count(max_rows);
        std::vector<SlotToken> prompt_rows;
        for (size_t s = 0; s < max_rows; ++s)
            for (size_t i = 0; i < prompt_tokens; ++i)
                prompt_rows.push_back(
                    {.slot = s, .token = Token((s * 7919 + i * 104729) % 40000 + 100), .products = RowProducts::Tiled});
        prompt_rows.back().logits = true;
        model.forward_rows(prompt_rows);

        decode_rate(model, 1, prompt_tokens, warm_up_steps, true);   // warm-up: pages of the mapping, the thread pool
        std::printf("| sequences | batched pass tok/s | ms a step | one pass a row tok/s | batched / one a row |\n"
                    "|---:|---:|---:|---:|---:|\n");
        for (size_t n : row_counts) {
            const double batched = decode_rate(model, n, prompt_tokens, steps, true);
            if (batched_only) {
                std::printf("| %zu | %.1f | %.2f | | |\n", n, batched, 1e3 * double(n) / batched);
                continue;
            }
            const double alone = decode_rate(model, n, prompt_tokens, steps, false);
            std::printf("| %zu | %.1f | %.2f | %.1f | %.2fx |\n", n, batched, 1e3 * double(n) / batched, alone, batched / alone);
        }
        std::fflush(stdout);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "twinfer_batched_bench: error: %s\n", e.what());
        return 1;
    }
    return 0;
}
