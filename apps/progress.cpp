#include "apps/progress.hpp"

#include <unistd.h>

#include <cstdio>

#include "apps/options.hpp"

namespace twinfer::cli {

bool progress_enabled() { return !settings().no_progress && isatty(STDERR_FILENO); }

ProgressBar::ProgressBar(std::string label, size_t total, bool enabled)
    : label_(std::move(label)), total_(total), enabled_(enabled), start_(std::chrono::steady_clock::now()) {}

ProgressBar::~ProgressBar() { finish(); }

void ProgressBar::update(size_t done, const std::string& detail) {
    if (!enabled_ || finished_ || total_ == 0) return;
    constexpr int kWidth = 30;
    const double fraction = std::min(1.0, double(done) / double(total_));
    const int filled = static_cast<int>(fraction * kWidth);
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    const double eta = done > 0 ? elapsed * (double(total_) - double(done)) / double(done) : 0.0;
    std::fprintf(stderr, "\r%s [%.*s%*s] %zu/%zu %3.0f%% eta %.0fs %s", label_.c_str(), filled,
                 "##############################", kWidth - filled, "", done, total_, fraction * 100, eta, detail.c_str());
    std::fflush(stderr);
}

void ProgressBar::finish() {
    if (!enabled_ || finished_) return;
    finished_ = true;
    std::fprintf(stderr, "\r\033[K");
    std::fflush(stderr);
}

}  // namespace twinfer::cli
