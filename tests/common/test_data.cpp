#include "common/test_data.hpp"

#include <cstdlib>
#include <unistd.h>

namespace twinfer::test {
namespace {
std::filesystem::path from_env(const char* name, const char* fallback) {
    const char* value = std::getenv(name);
    return value && *value ? std::filesystem::path(value) : std::filesystem::path(fallback);
}
}  // namespace

std::filesystem::path third_party_testdata() { return from_env("TWINFER_TESTDATA", TWINFER_DEFAULT_TESTDATA); }
std::filesystem::path models_dir() { return from_env("TWINFER_MODELS", TWINFER_DEFAULT_MODELS); }
std::filesystem::path repo_root() { return from_env("TWINFER_REPO", TWINFER_DEFAULT_REPO); }
std::filesystem::path twinfer_binary() { return from_env("TWINFER_BIN", TWINFER_DEFAULT_BIN); }
std::filesystem::path smollm2_path() { return models_dir() / "SmolLM2-135M-Instruct.Q4_1.gguf"; }
std::filesystem::path gemma3_path() { return models_dir() / "gemma-3-270m-it-Q4_K_M.gguf"; }

std::filesystem::path scratch_dir() {
    static const std::filesystem::path dir = [] {
        auto d = std::filesystem::temp_directory_path() / ("twinfer-test-" + std::to_string(::getpid()));
        std::filesystem::create_directories(d);
        return d;
    }();
    return dir;
}

}  // namespace twinfer::test
