#pragma once
// Where the fuzz targets find the files they load once at start-up (vocabularies, real chat
// templates): the repository root compiled in by tests/fuzz/CMakeLists.txt, or TWINFER_REPO, the
// variable the unit tests use for the same purpose, when the binary runs from another checkout.
#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <string_view>
#include <vector>

namespace twinfer::fuzz {

inline std::filesystem::path repo_root() {
    const char* from_env = std::getenv("TWINFER_REPO");
    return from_env ? std::filesystem::path(from_env) : std::filesystem::path(TWINFER_FUZZ_REPO);
}

// The files of `dir` (relative to the repository) ending in `extension`, sorted: an input byte
// that picks one must mean the same file on every run, or a saved crash would not reproduce.
inline std::vector<std::filesystem::path> sorted_files(const std::filesystem::path& dir, std::string_view extension) {
    std::vector<std::filesystem::path> paths;
    for (const auto& entry : std::filesystem::directory_iterator(repo_root() / dir))
        if (entry.path().extension() == extension) paths.push_back(entry.path());
    std::sort(paths.begin(), paths.end());
    return paths;
}

}  // namespace twinfer::fuzz
