#include "format/mapped_file.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <stdexcept>
#include <string>
#include <system_error>
#include <utility>

namespace twinfer {

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
        ::close(fd);
        if (address == MAP_FAILED) throw std::system_error(err, std::generic_category(), "cannot map " + origin);
        address_ = address;
    } else {
        ::close(fd);
    }
}

MappedFile::MappedFile(MappedFile&& other) noexcept
    : address_(std::exchange(other.address_, nullptr)), length_(std::exchange(other.length_, 0)) {}

MappedFile& MappedFile::operator=(MappedFile&& other) noexcept {
    if (this != &other) {
        if (address_) ::munmap(address_, length_);
        address_ = std::exchange(other.address_, nullptr);
        length_ = std::exchange(other.length_, 0);
    }
    return *this;
}

MappedFile::~MappedFile() {
    if (address_) ::munmap(address_, length_);
}

}  // namespace twinfer
