#pragma once
// Where tests find their data. Paths come from the environment ctest sets (tests/CMakeLists.txt);
// a test that needs a file that is not there calls GTEST_SKIP with the path, never passes silently.
#include <filesystem>
#include <string>

namespace twinfer::test {

std::filesystem::path shared_testdata();   // ../shared/testdata
std::filesystem::path models_dir();        // models/ (the default model, downloaded by setup)
std::filesystem::path repo_root();
std::filesystem::path twinfer_binary();
std::filesystem::path smollm2_path();      // models/SmolLM2-135M-Instruct.Q4_1.gguf
std::filesystem::path scratch_dir();       // a fresh temporary folder per test process

}  // namespace twinfer::test

#define TWINFER_REQUIRE_FILE(path)                                              \
    do {                                                                        \
        if (!std::filesystem::exists(path))                                     \
            GTEST_SKIP() << "test data not found: " << (path).string();         \
    } while (0)
