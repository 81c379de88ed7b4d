// Times the float32 models as llama-bench does: pp N (N random tokens in one forward pass, from an
// empty cache) and tg N (N single-token forward passes from an empty cache), after one warm-up
// run each, averaged over repetitions. Until `twinfer bench` runs the F32 models, this is the
// CPU numbers' source for BENCHMARKS.md.
//
// It also prints tokens per CPU-second of the whole process: on a machine shared with other work,
// that compares two builds of twinfer where wall-clock rates cannot.
//
//   g++ -O2 -std=c++20 -I. tools/bench_f32.cpp build-f32/models/libtwinfer_models.a
//       build-f32/compute/libtwinfer_compute.a build-f32/format/libtwinfer_format.a -o build-f32/bench_f32
//   build-f32/bench_f32 MODEL.gguf [--threads N] [--exact] [--reps N] [--pp N] [--tg N]
#include <chrono>
#include <cmath>
#include <ctime>
#include <functional>
#include <tuple>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "models/f32_llama_model.hpp"

using namespace twinfer;

namespace {

double seconds_since(std::chrono::steady_clock::time_point start) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: %s MODEL.gguf [--threads N] [--exact] [--reps N] [--pp N] [--tg N]\n", argv[0]);
        return 2;
    }
    F32Options options;
    int reps = 5, pp = 128, tg = 64;
    for (int i = 2; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--threads" && i + 1 < argc) options.n_threads = std::stoi(argv[++i]);
        else if (a == "--exact") options.exact_activations = true;
        else if (a == "--reps" && i + 1 < argc) reps = std::stoi(argv[++i]);
        else if (a == "--pp" && i + 1 < argc) pp = std::stoi(argv[++i]);
        else if (a == "--tg" && i + 1 < argc) tg = std::stoi(argv[++i]);
        else { std::fprintf(stderr, "unknown argument %s\n", a.c_str()); return 2; }
    }
    options.n_ctx = std::max(pp, tg);
    auto file = std::make_shared<const gguf::File>(gguf::File::open(argv[1]));
    F32LlamaModel model = F32LlamaModel::load(file, options);
    std::mt19937 rng(42);
    std::uniform_int_distribution<Token> token(0, model.config().n_vocab - 1);

    auto run_pp = [&] {
        std::vector<Token> ids(pp);
        for (Token& t : ids) t = token(rng);
        model.clear_cache();
        const auto start = std::chrono::steady_clock::now();
        model.forward(ids);
        return pp / seconds_since(start);
    };
    auto run_tg = [&] {
        model.clear_cache();
        const auto start = std::chrono::steady_clock::now();
        for (int i = 0; i < tg; ++i) {
            const Token id = token(rng);
            model.forward(std::span(&id, 1));
        }
        return tg / seconds_since(start);
    };
    for (auto [name, n, run] : {std::tuple{"pp", pp, std::function<double()>(run_pp)}, std::tuple{"tg", tg, std::function<double()>(run_tg)}}) {
        if (n == 0) continue;
        run();   // warm-up: pages the weights in
        double sum = 0, sum_sq = 0;
        const std::clock_t cpu_start = std::clock();
        for (int r = 0; r < reps; ++r) {
            const double v = run();
            sum += v;
            sum_sq += v * v;
        }
        const double cpu_seconds = double(std::clock() - cpu_start) / CLOCKS_PER_SEC;
        const double mean = sum / reps;
        std::printf("%s %s%d  %.2f ± %.2f tok/s  %.1f tok per CPU-second  (threads %d, %s activations)\n", argv[1], name,
                    n, mean, std::sqrt(std::max(0.0, sum_sq / reps - mean * mean)), double(n) * reps / cpu_seconds,
                    options.n_threads, options.exact_activations ? "float" : "int8");
    }
}
