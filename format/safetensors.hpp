#pragma once
// safetensors (Hugging Face checkpoints): a memory-mapped reader that validates the header
// against the file size before any tensor is read.
//
// File layout:
//   u64 header_length (little endian) | header: JSON object, header_length bytes | data
//   header = { "__metadata__": {string: string} (optional),
//              name: {"dtype": "F32", "shape": [rows, cols], "data_offsets": [begin, end]}, ... }
//   offsets are relative to the start of the data; shapes are row-major (outermost first).
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "format/mapped_file.hpp"

namespace twinfer::safetensors {

// Every problem with a file: names the file, the tensor if there is one, and what is wrong.
struct FormatError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

struct TensorInfo {
    std::string name;
    std::string dtype;             // as the header says: "F64", "F32", "F16", "BF16", "I64", ...
    size_t element_size = 0;       // bytes per element of dtype
    std::vector<uint64_t> shape;   // row-major, outermost first (a PyTorch tensor's .shape)
    uint64_t n_elements = 0;
    std::span<const std::byte> data;  // into the mapping, n_elements * element_size bytes
};

class File {
public:
    // Maps and validates the file. Throws FormatError (or std::system_error for I/O).
    static File open(const std::filesystem::path& path);
    // Parses an in-memory image (for tests); `bytes` must outlive the File.
    static File parse(std::span<const std::byte> bytes, std::string origin = "<memory>");

    File(File&&) noexcept;
    File& operator=(File&&) noexcept;
    ~File();

    const std::string& origin() const { return origin_; }
    const std::map<std::string, std::string>& metadata() const { return metadata_; }

    const std::vector<TensorInfo>& tensors() const { return tensors_; }   // sorted by name
    const TensorInfo* find_tensor(std::string_view name) const;
    const TensorInfo& tensor(std::string_view name) const;   // throws FormatError naming it

    // The tensor's elements widened to float64 (exactly: every F32, F16 and BF16 value is a
    // double). Supports F64, F32, F16, BF16; throws FormatError naming the tensor otherwise.
    std::vector<double> to_double(const TensorInfo& tensor) const;

private:
    File() = default;
    std::unique_ptr<MappedFile> mapping_;
    std::span<const std::byte> bytes_;
    std::string origin_;
    std::map<std::string, std::string> metadata_;
    std::vector<TensorInfo> tensors_;
    void parse_all();
};

}  // namespace twinfer::safetensors
