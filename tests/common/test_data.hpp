#pragma once
// Where tests find their data. Paths come from the environment ctest sets (tests/CMakeLists.txt);
// a test that needs a file that is not there fails with the path: every file a CPU test reads is
// in the repository or fetched by scripts/setup.sh, so a missing one is a broken checkout.
#include <filesystem>
#include <string>

namespace twinfer::test {

std::filesystem::path third_party_testdata();   // tests/data/third_party
std::filesystem::path models_dir();        // models/ (the default model, downloaded by setup)
std::filesystem::path repo_root();
std::filesystem::path twinfer_binary();
std::filesystem::path smollm2_path();      // models/SmolLM2-135M-Instruct.Q4_1.gguf
std::filesystem::path gemma3_path();       // models/gemma-3-270m-it-Q4_K_M.gguf (setup fetches it for the tests)
std::filesystem::path scratch_dir();       // a fresh temporary folder per test process

}  // namespace twinfer::test

#define TWINFER_REQUIRE_FILE(path)                                              \
    do {                                                                        \
        if (!std::filesystem::exists(path))                                     \
            GTEST_FAIL() << "test data not found: " << (path).string()          \
                         << " (scripts/setup.sh fetches the default model)";   \
    } while (0)
