// A mapped file that changes under its mapping (format/mapped_file_guard.hpp): truncated, a read
// past its new end is SIGBUS, which the guard turns into zeros and a damaged mapping; rewritten in
// place, the modification time tells. mapped_files_problem() must name each, and a SIGBUS outside
// the watched mappings must still end the process.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "common/test_data.hpp"
#include "format/mapped_file.hpp"
#include "format/mapped_file_guard.hpp"

namespace twinfer::test {
namespace {

namespace fs = std::filesystem;

const size_t kPage = static_cast<size_t>(sysconf(_SC_PAGESIZE));

// Three pages of 'x', modified a day ago (so that a rewrite now shows in the modification time,
// whatever the clock's granularity).
fs::path three_pages(const std::string& name) {
    const fs::path path = scratch_dir() / name;
    std::ofstream(path, std::ios::binary) << std::string(3 * kPage, 'x');
    const struct timespec old[2] = {{time(nullptr) - 86400, 0}, {time(nullptr) - 86400, 0}};
    EXPECT_EQ(utimensat(AT_FDCWD, path.c_str(), old, 0), 0);
    return path;
}

// Reads every byte, as a model reads its weights.
size_t count_x(const MappedFile& file) {
    size_t n = 0;
    for (std::byte b : file.bytes()) n += b == std::byte{'x'};
    return n;
}

TEST(MappedFileGuard, ATruncatedFileReadsZerosPastItsEndAndIsNamed) {
    guard_mapped_files();
    const fs::path path = three_pages("truncated.bin");
    MappedFile file(path, "test");
    EXPECT_EQ(mapped_files_problem(), "");
    EXPECT_EQ(count_x(file), 3 * kPage);

    fs::resize_file(path, kPage);
    EXPECT_EQ(mapped_files_problem(), path.string() + " was truncated from " + std::to_string(3 * kPage) + " to " +
                                          std::to_string(kPage) + " bytes after it was loaded");
    // Without the guard this read is SIGBUS: the last two pages now read as zeros.
    EXPECT_EQ(count_x(file), kPage);

    // Grown back to its size with its old modification time, only the damage still tells.
    fs::resize_file(path, 3 * kPage);
    const struct timespec old[2] = {{time(nullptr) - 86400, 0}, {time(nullptr) - 86400, 0}};
    ASSERT_EQ(utimensat(AT_FDCWD, path.c_str(), old, 0), 0);
    EXPECT_EQ(mapped_files_problem(), path.string() + " could not be read after it was loaded (SIGBUS on its mapping)");
}

TEST(MappedFileGuard, ARewriteInPlaceIsNamedARenameIsNot) {
    const fs::path path = three_pages("rewritten.bin");
    {
        MappedFile file(path, "test");
        // Another file renamed over the path: the mapping keeps the old file, nothing changed for it.
        const fs::path other = three_pages("other.bin");
        std::ofstream(other, std::ios::binary | std::ios::app) << "more";
        fs::rename(other, path);
        EXPECT_EQ(mapped_files_problem(), "");
        EXPECT_EQ(count_x(file), 3 * kPage);
    }
    const struct timespec old[2] = {{time(nullptr) - 86400, 0}, {time(nullptr) - 86400, 0}};
    ASSERT_EQ(utimensat(AT_FDCWD, path.c_str(), old, 0), 0);
    MappedFile file(path, "test");
    EXPECT_EQ(mapped_files_problem(), "");
    {
        std::fstream rewrite(path, std::ios::binary | std::ios::in | std::ios::out);
        rewrite.seekp(100);
        rewrite << "y";
    }
    EXPECT_EQ(mapped_files_problem(), path.string() + " was modified after it was loaded");
    EXPECT_EQ(count_x(file), 3 * kPage - 1);
}

TEST(MappedFileGuard, AClosedMappingIsNoLongerWatched) {
    const fs::path path = three_pages("closed.bin");
    {
        MappedFile file(path, "test");
        MappedFile moved = std::move(file);   // the watch follows the mapping
        fs::resize_file(path, kPage);
        EXPECT_NE(mapped_files_problem(), "");
    }
    EXPECT_EQ(mapped_files_problem(), "");
}

// A SIGBUS the guard does not own (a mapping of its own, not a MappedFile) ends the process as
// before: killed by SIGBUS, or under AddressSanitizer reported and exited non-zero.
TEST(MappedFileGuard, ASigbusElsewhereStillEndsTheProcess) {
    guard_mapped_files();
    const fs::path path = three_pages("unwatched.bin");
    const pid_t child = fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
        dup2(open("/dev/null", O_WRONLY), STDERR_FILENO);   // AddressSanitizer's report of the expected SIGBUS
        const int fd = open(path.c_str(), O_RDONLY);
        const auto* bytes = static_cast<const volatile char*>(mmap(nullptr, 3 * kPage, PROT_READ, MAP_PRIVATE, fd, 0));
        if (ftruncate(open(path.c_str(), O_WRONLY), 0) != 0) _exit(3);
        const char c = bytes[2 * kPage];
        _exit(c == 0 ? 0 : 2);
    }
    int status = 0;
    ASSERT_EQ(waitpid(child, &status, 0), child);
    EXPECT_FALSE(WIFEXITED(status) && (WEXITSTATUS(status) == 0 || WEXITSTATUS(status) == 2))
        << "the read past the end returned (status " << status << ")";
    EXPECT_TRUE((WIFSIGNALED(status) && WTERMSIG(status) == SIGBUS) || (WIFEXITED(status) && WEXITSTATUS(status) != 3))
        << "status " << status;
}

}  // namespace
}  // namespace twinfer::test
