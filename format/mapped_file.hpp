#pragma once
// A read-only memory mapping of a whole file, released on destruction: the GGUF and safetensors
// readers parse their files in place through it, so loading copies nothing.
#include <cstddef>
#include <filesystem>
#include <memory>
#include <span>
#include <stdexcept>
#include <system_error>

namespace twinfer {

class MappedFile {
public:
    // Throws std::system_error for I/O failures and std::runtime_error (via `not_a_file`) when the
    // path is a directory or not a regular file; `kind` names the format in that message.
    MappedFile(const std::filesystem::path& path, const char* kind);
    MappedFile(MappedFile&& other) noexcept;
    MappedFile& operator=(MappedFile&& other) noexcept;
    MappedFile(const MappedFile&) = delete;
    MappedFile& operator=(const MappedFile&) = delete;
    ~MappedFile();

    std::span<const std::byte> bytes() const { return {static_cast<const std::byte*>(address_), length_}; }

private:
    void* address_ = nullptr;
    size_t length_ = 0;
};

// Maps `path` for a reader whose errors are of type FormatError: I/O failures stay
// std::system_error, "not a file" becomes the reader's own error.
template <class FormatError>
std::unique_ptr<MappedFile> map_file(const std::filesystem::path& path, const char* kind) {
    try {
        return std::make_unique<MappedFile>(path, kind);
    } catch (const std::system_error&) {
        throw;
    } catch (const std::runtime_error& e) {
        throw FormatError(e.what());
    }
}

}  // namespace twinfer
