// The server's batched decode pass (F32ModelBase::forward_rows, Single rows) against the same rows
// decoded one pass each, and against the decode step alone: decode tokens a second at 1, 4, 16
// (or the listed) concurrent sequences of one model (BENCHMARKS.md, "Batched decode").
//   twinfer_batched_bench MODEL.gguf [threads=0 (one per core)] [prompt_tokens=100] [steps=32] [rows...=1 4 16]
// Each sequence's slot holds a prompt of distinct ids (fed as one Tiled pass, not timed); then
// `steps` decode passes feed every sequence its previous row's argmax. Every configuration starts
// from the same cache lengths, so attention reads as much in each.
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

Token argmax(std::span<const double> logits) { return Token(std::max_element(logits.begin(), logits.end()) - logits.begin()); }

// Decode tokens a second over `steps` steps of n sequences: batched (one pass of n Single rows a
// step) or not (n passes of one row a step: every product reads its weights once per row).
double decode_rate(F32LlamaModel& model, size_t n, size_t prompt_tokens, size_t steps, bool batched) {
    for (size_t s = 0; s < n; ++s) model.truncate_slot(s, prompt_tokens);
    std::vector<Token> next(n, Token(100));
    const auto start = Clock::now();
    for (size_t step = 0; step < steps; ++step) {
        if (batched) {
            std::vector<SlotToken> rows;
            for (size_t s = 0; s < n; ++s) rows.push_back({.slot = s, .token = next[s], .logits = true});
            const Logits logits = model.forward_rows(rows);
            for (size_t s = 0; s < n; ++s) next[s] = argmax(logits.row(s));
        } else {
            for (size_t s = 0; s < n; ++s) {
                const SlotToken row{.slot = s, .token = next[s], .logits = true};
                next[s] = argmax(model.forward_rows(std::span(&row, 1)).row(0));
            }
        }
    }
    const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    return double(n * steps) / seconds;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: %s MODEL.gguf [threads=0] [prompt_tokens=100] [steps=32] [rows...=1 4 16]\n", argv[0]);
        return 2;
    }
    const int threads = argc > 2 ? std::stoi(argv[2]) : 0;
    const size_t prompt_tokens = argc > 3 ? std::stoul(argv[3]) : 100;
    const size_t steps = argc > 4 ? std::stoul(argv[4]) : 32;
    std::vector<size_t> row_counts;
    for (int i = 5; i < argc; ++i) row_counts.push_back(std::stoul(argv[i]));
    if (row_counts.empty()) row_counts = {1, 4, 16};
    const size_t max_rows = *std::max_element(row_counts.begin(), row_counts.end());

    auto file = std::make_shared<const gguf::File>(gguf::File::open(argv[1]));
    F32LlamaModel model = F32LlamaModel::load(file, {.n_ctx = prompt_tokens + steps + 1, .n_threads = threads});
    model.set_slot_count(max_rows);
    std::vector<SlotToken> prompt_rows;
    for (size_t s = 0; s < max_rows; ++s)
        for (size_t i = 0; i < prompt_tokens; ++i)
            prompt_rows.push_back({.slot = s, .token = Token((s * 7919 + i * 104729) % 40000 + 100), .products = RowProducts::Tiled});
    prompt_rows.back().logits = true;
    model.forward_rows(prompt_rows);

    decode_rate(model, 1, prompt_tokens, 4, true);   // warm-up: pages of the mapping, the thread pool
    std::printf("| sequences | batched pass tok/s | one pass a row tok/s | batched / one a row |\n|---:|---:|---:|---:|\n");
    for (size_t n : row_counts) {
        const double batched = decode_rate(model, n, prompt_tokens, steps, true);
        const double alone = decode_rate(model, n, prompt_tokens, steps, false);
        std::printf("| %zu | %.1f | %.1f | %.2fx |\n", n, batched, alone, batched / alone);
    }
    return 0;
}
