#include "format/mapped_file.hpp"
#include "format/mapped_file_guard.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <string>
#include <system_error>
#include <utility>

namespace twinfer {
namespace {

constexpr int kWatched = 256;

// What the SIGBUS handler reads of each watched mapping: atomics only, no lock (a signal handler
// must not wait for one). begin 0: a free entry.
struct Region {
    std::atomic<uintptr_t> begin{0};
    std::atomic<size_t> length{0};
    std::atomic<bool> damaged{false};
};
Region g_regions[kWatched];

// What mapped_files_problem() compares the file with, under g_mutex: the descriptor the mapping
// was made from (kept open: it stays the same file even when the path is renamed over), and the
// size and modification time it had then.
struct Watched {
    int fd = -1;
    std::string origin;
    off_t size = 0;
    struct timespec mtime {};
};
std::mutex g_mutex;
Watched g_watched[kWatched];

// Watches the mapping at `address`, keeping fd open; closes fd when all entries are taken.
void watch(void* address, size_t length, int fd, const std::string& origin, const struct stat& st) {
    const std::lock_guard lock(g_mutex);
    for (int i = 0; i < kWatched; ++i) {
        if (g_watched[i].fd >= 0) continue;
        g_watched[i] = {fd, origin, st.st_size, st.st_mtim};
        g_regions[i].damaged.store(false);
        g_regions[i].length.store(length);
        g_regions[i].begin.store(reinterpret_cast<uintptr_t>(address), std::memory_order_release);
        return;
    }
    ::close(fd);
}

void unwatch(const void* address) {
    if (!address) return;
    const std::lock_guard lock(g_mutex);
    for (int i = 0; i < kWatched; ++i) {
        if (g_regions[i].begin.load() != reinterpret_cast<uintptr_t>(address)) continue;
        g_regions[i].begin.store(0);
        ::close(g_watched[i].fd);
        g_watched[i] = {};
        return;
    }
}

struct sigaction g_previous {};
uintptr_t g_page_size = 4096;

// A SIGBUS inside a watched mapping is a read past the end of its truncated file (or a page the
// disk could not give): that page and every later one of the mapping become zeros, the mapping
// is marked damaged, and the read runs again. Everything here is async-signal-safe, and errno is
// left as the interrupted code had it.
void on_sigbus(int signal, siginfo_t* info, void* context) {
    const int saved_errno = errno;
    const auto at = reinterpret_cast<uintptr_t>(info->si_addr);
    for (Region& r : g_regions) {
        const uintptr_t begin = r.begin.load(std::memory_order_acquire);
        const size_t length = r.length.load();
        if (begin == 0 || at < begin || at - begin >= length) continue;
        r.damaged.store(true);
        const uintptr_t page = at & ~(g_page_size - 1);
        void* zeros = ::mmap(reinterpret_cast<void*>(page), begin + length - page, PROT_READ,
                             MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
        errno = saved_errno;
        if (zeros != MAP_FAILED) return;
        break;
    }
    // Not a watched mapping: what would have happened without this handler.
    if ((g_previous.sa_flags & SA_SIGINFO) && g_previous.sa_sigaction) return g_previous.sa_sigaction(signal, info, context);
    if (!(g_previous.sa_flags & SA_SIGINFO) && g_previous.sa_handler != SIG_DFL && g_previous.sa_handler != SIG_IGN)
        return g_previous.sa_handler(signal);
    struct sigaction fallback {};
    fallback.sa_handler = SIG_DFL;
    sigaction(SIGBUS, &fallback, nullptr);   // the read runs again and the default action ends the process
}

}  // namespace

void guard_mapped_files() {
    static std::once_flag once;
    std::call_once(once, [] {
        g_page_size = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
        struct sigaction action {};
        action.sa_sigaction = on_sigbus;
        action.sa_flags = SA_SIGINFO;
        sigemptyset(&action.sa_mask);
        if (sigaction(SIGBUS, &action, &g_previous) != 0)
            throw std::system_error(errno, std::generic_category(), "cannot install the SIGBUS handler");
    });
}

std::string mapped_files_problem() {
    const std::lock_guard lock(g_mutex);
    for (int i = 0; i < kWatched; ++i) {
        const Watched& w = g_watched[i];
        if (w.fd < 0) continue;
        struct stat st {};
        if (::fstat(w.fd, &st) != 0) return w.origin + ": cannot stat the loaded file: " + std::strerror(errno);
        if (st.st_size < w.size)
            return w.origin + " was truncated from " + std::to_string(w.size) + " to " + std::to_string(st.st_size) +
                   " bytes after it was loaded";
        if (st.st_size != w.size || st.st_mtim.tv_sec != w.mtime.tv_sec || st.st_mtim.tv_nsec != w.mtime.tv_nsec)
            return w.origin + " was modified after it was loaded";
        if (g_regions[i].damaged.load()) return w.origin + " could not be read after it was loaded (SIGBUS on its mapping)";
    }
    return {};
}

MappedFile::MappedFile(const std::filesystem::path& path, const char* kind) {
    const std::string origin = path.string();
    std::error_code ec;
    if (std::filesystem::is_directory(path, ec)) throw std::runtime_error(origin + ": is a directory, not a " + kind + " file");
    // O_NONBLOCK: opening a named pipe for reading would otherwise wait for a writer, forever if
    // none comes; the fstat below then refuses it. On a regular file the flag changes nothing.
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) throw std::system_error(errno, std::generic_category(), "cannot open " + origin);
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
        const int err = errno;
        ::close(fd);
        throw std::system_error(err, std::generic_category(), "cannot stat " + origin);
    }
    if (!S_ISREG(st.st_mode)) {
        ::close(fd);
        throw std::runtime_error(origin + ": not a regular file");
    }
    length_ = static_cast<size_t>(st.st_size);
    if (length_ > 0) {
        void* address = ::mmap(nullptr, length_, PROT_READ, MAP_PRIVATE, fd, 0);
        const int err = errno;
        if (address == MAP_FAILED) {
            ::close(fd);
            throw std::system_error(err, std::generic_category(), "cannot map " + origin);
        }
        address_ = address;
        watch(address_, length_, fd, origin, st);
    } else {
        ::close(fd);
    }
}

MappedFile::MappedFile(MappedFile&& other) noexcept
    : address_(std::exchange(other.address_, nullptr)), length_(std::exchange(other.length_, 0)) {}

MappedFile& MappedFile::operator=(MappedFile&& other) noexcept {
    if (this != &other) {
        unwatch(address_);
        if (address_) ::munmap(address_, length_);
        address_ = std::exchange(other.address_, nullptr);
        length_ = std::exchange(other.length_, 0);
    }
    return *this;
}

MappedFile::~MappedFile() {
    unwatch(address_);
    if (address_) ::munmap(address_, length_);
}

}  // namespace twinfer
