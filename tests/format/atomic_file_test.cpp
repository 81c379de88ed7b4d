// write_file_atomically (format/atomic_file.hpp): the new contents whole, or on any failure the old
// file byte for byte and no temporary left behind. A full disk is a write that fails part-way: here
// RLIMIT_FSIZE (as `ulimit -f`) makes it fail so, with EFBIG, in a child process.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <system_error>

#include "common/test_data.hpp"
#include "format/atomic_file.hpp"

namespace twinfer::test {
namespace {

namespace fs = std::filesystem;

std::string slurp(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// A fresh folder holding only what the test puts there.
fs::path folder(const std::string& name) {
    const fs::path dir = scratch_dir() / name;
    fs::remove_all(dir);
    fs::create_directories(dir);
    return dir;
}

size_t entries(const fs::path& dir) { return static_cast<size_t>(std::distance(fs::directory_iterator(dir), fs::directory_iterator())); }

TEST(AtomicFile, WritesANewFileAndReplacesAnOldOneKeepingItsMode) {
    const fs::path dir = folder("atomic-new");
    const fs::path path = dir / "history.json";
    write_file_atomically(path, "first");
    EXPECT_EQ(slurp(path), "first");
    const mode_t mask = umask(0);
    umask(mask);
    EXPECT_EQ(fs::status(path).permissions(), static_cast<fs::perms>(0666 & ~mask));

    fs::permissions(path, fs::perms::owner_read | fs::perms::owner_write);
    write_file_atomically(path, std::string(100000, 'z'));
    EXPECT_EQ(slurp(path), std::string(100000, 'z'));
    EXPECT_EQ(fs::status(path).permissions(), fs::perms::owner_read | fs::perms::owner_write);
    EXPECT_EQ(entries(dir), 1u) << "a temporary file was left behind";
}

TEST(AtomicFile, ASymbolicLinkStaysAndItsTargetIsReplaced) {
    const fs::path dir = folder("atomic-link");
    write_file_atomically(dir / "target.toml", "old");
    fs::create_symlink("target.toml", dir / "link.toml");
    write_file_atomically(dir / "link.toml", "new");
    EXPECT_TRUE(fs::is_symlink(dir / "link.toml"));
    EXPECT_EQ(slurp(dir / "target.toml"), "new");
    EXPECT_EQ(entries(dir), 2u);
}

// In a child, under a file size limit of `limit` bytes (SIGXFSZ ignored, so write(2) fails with
// EFBIG as it fails with ENOSPC on a full disk): writes `contents` to `path`. Returns the child's
// exit code: 0 written, 1 std::system_error with EFBIG and a message naming the path and the old
// file, 2 anything else.
int write_under_limit(const fs::path& path, const std::string& contents, rlim_t limit) {
    const pid_t child = fork();
    if (child == 0) {
        signal(SIGXFSZ, SIG_IGN);
        const struct rlimit fsize = {limit, limit};
        if (setrlimit(RLIMIT_FSIZE, &fsize) != 0) _exit(3);
        try {
            write_file_atomically(path, contents);
            _exit(0);
        } catch (const std::system_error& e) {
            const std::string what = e.what();
            const bool clear = e.code().value() == EFBIG && what.find(path.string()) != std::string::npos &&
                               what.find("the old file is unchanged") != std::string::npos;
            _exit(clear ? 1 : 2);
        } catch (...) {
            _exit(2);
        }
    }
    int status = 0;
    waitpid(child, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

TEST(AtomicFile, AWriteThatFailsPartWayLeavesTheOldFileWhole) {
    const fs::path dir = folder("atomic-full");
    const fs::path path = dir / "config.toml";
    const std::string old = "model = 'old.gguf'\n" + std::string(5000, '#') + "\n";
    write_file_atomically(path, old);
    // 3 pages fit, 30 do not: the temporary gets its first 16384 bytes, then EFBIG.
    EXPECT_EQ(write_under_limit(path, std::string(3 * 4096, 'a'), 16384), 0);
    EXPECT_EQ(slurp(path), std::string(3 * 4096, 'a'));
    write_file_atomically(path, old);
    EXPECT_EQ(write_under_limit(path, std::string(30 * 4096, 'b'), 16384), 1);
    EXPECT_EQ(slurp(path), old);
    EXPECT_EQ(entries(dir), 1u) << "the half-written temporary was left behind";
    // With no file there before, none is left after.
    EXPECT_EQ(write_under_limit(dir / "new.json", std::string(30 * 4096, 'c'), 16384), 1);
    EXPECT_FALSE(fs::exists(dir / "new.json"));
    EXPECT_EQ(entries(dir), 1u);
}

TEST(AtomicFile, AMissingFolderIsAnErrorNamingThePath) {
    const fs::path path = scratch_dir() / "no-such-folder" / "history.json";
    try {
        write_file_atomically(path, "x");
        FAIL() << "no error";
    } catch (const std::system_error& e) {
        EXPECT_EQ(e.code().value(), ENOENT);
        EXPECT_NE(std::string(e.what()).find(path.string()), std::string::npos) << e.what();
    }
}

}  // namespace
}  // namespace twinfer::test
