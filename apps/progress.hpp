#pragma once
// A progress bar on stderr for long work (perplexity, bench). Drawn only when stderr is a
// terminal and --no-progress was not given, so logs and pipes stay clean.
#include <chrono>
#include <string>

namespace twinfer::cli {

class ProgressBar {
public:
    ProgressBar(std::string label, size_t total, bool enabled);
    ~ProgressBar();
    void update(size_t done, const std::string& detail = {});
    void finish();

private:
    std::string label_;
    size_t total_;
    bool enabled_;
    bool finished_ = false;
    std::chrono::steady_clock::time_point start_;
};

// Whether progress bars should be drawn at all (stderr is a terminal, no --no-progress).
bool progress_enabled();

}  // namespace twinfer::cli
