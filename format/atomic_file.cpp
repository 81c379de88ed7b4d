#include "format/atomic_file.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <string>
#include <system_error>
#include <utility>

namespace twinfer {
namespace {

// Closes the descriptor and removes the temporary unless `keep` is called (after the rename).
class Temporary {
public:
    Temporary(int fd, std::filesystem::path path) : fd_(fd), path_(std::move(path)) {}
    Temporary(const Temporary&) = delete;
    Temporary& operator=(const Temporary&) = delete;
    ~Temporary() {
        if (fd_ >= 0) ::close(fd_);
        if (!kept_) ::unlink(path_.c_str());
    }
    int fd() const { return fd_; }
    // close(2) reports some write errors (NFS, quotas) only there.
    int close() { return ::close(std::exchange(fd_, -1)); }
    void keep() { kept_ = true; }

private:
    int fd_;
    std::filesystem::path path_;
    bool kept_ = false;
};

[[noreturn]] void fail(int error, const std::filesystem::path& path, const std::string& doing) {
    throw std::system_error(error, std::generic_category(),
                            "cannot save " + path.string() + " (" + doing + "; the old file is unchanged)");
}

}  // namespace

void write_file_atomically(const std::filesystem::path& path, std::string_view contents) {
    std::error_code ec;
    std::filesystem::path target = path;
    if (std::filesystem::is_symlink(path, ec)) {
        const auto resolved = std::filesystem::canonical(path, ec);
        if (!ec) target = resolved;
    }
    const std::filesystem::path folder = target.has_parent_path() ? target.parent_path() : std::filesystem::path(".");

    // A name no other writer uses: this process's id and a counter; O_EXCL refuses a leftover.
    static std::atomic<unsigned> counter{0};
    std::filesystem::path temporary;
    int fd = -1;
    for (int attempt = 0; fd < 0 && attempt < 100; ++attempt) {
        temporary = folder / ("." + target.filename().string() + ".tmp." + std::to_string(::getpid()) + "." +
                              std::to_string(counter.fetch_add(1)));
        fd = ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        if (fd < 0 && errno != EEXIST) break;
    }
    if (fd < 0) fail(errno, path, "creating a temporary file in " + folder.string());
    Temporary file(fd, temporary);

    struct stat old {};
    if (::stat(target.c_str(), &old) == 0 && ::fchmod(fd, old.st_mode & 07777) != 0) fail(errno, path, "copying its permissions");
    for (size_t done = 0; done < contents.size();) {
        const ssize_t n = ::write(fd, contents.data() + done, contents.size() - done);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) fail(errno, path, "writing " + std::to_string(contents.size()) + " bytes");
        done += static_cast<size_t>(n);
    }
    if (::fsync(fd) != 0) fail(errno, path, "flushing it to the disk");
    if (file.close() != 0) fail(errno, path, "closing the temporary file");
    if (::rename(temporary.c_str(), target.c_str()) != 0) fail(errno, path, "renaming the temporary file over it");
    file.keep();
    // The rename itself reaches the disk with the folder's entry.
    if (const int dir = ::open(folder.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC); dir >= 0) {
        ::fsync(dir);
        ::close(dir);
    }
}

}  // namespace twinfer
