#pragma once
// GGUF v2/v3: a memory-mapped reader that validates every count, length and offset against the
// file size before touching data, and a writer (for tests, tools and quantized test models).
//
// File layout (little endian):
//   magic "GGUF" | u32 version | u64 n_tensors | u64 n_kv
//   n_kv   x { string key | u32 value_type | value }
//   n_tensors x { string name | u32 n_dims | u64 dims[n_dims] | u32 ggml_type | u64 offset }
//   padding to `general.alignment` (default 32) | tensor data (offsets relative to here)
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "format/ggml_type.hpp"
#include "format/mapped_file.hpp"

namespace twinfer::gguf {

// Every problem with a file: names the file, and the key or tensor, and what is wrong.
struct FormatError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

enum class ValueType : uint32_t {
    UINT8 = 0, INT8 = 1, UINT16 = 2, INT16 = 3, UINT32 = 4, INT32 = 5, FLOAT32 = 6, BOOL = 7,
    STRING = 8, ARRAY = 9, UINT64 = 10, INT64 = 11, FLOAT64 = 12,
};
std::string_view value_type_name(ValueType t);

struct Value;
// A metadata array. Strings and nested arrays are kept as Values; numbers and bools, fixed-size in
// the file, are kept packed as the file stores them, so that an array costs about its own bytes in
// memory (a Value is ~48 bytes: a hostile file's huge uint8 array would otherwise cost 48x).
class Array {
public:
    // Out of line: Value is incomplete here. Items must be of the element type (std::invalid_argument).
    explicit Array(ValueType element_type = ValueType::UINT8);
    Array(ValueType element_type, const std::vector<Value>& items);
    ValueType element_type() const { return element_type_; }
    size_t size() const;
    Value at(size_t i) const;            // std::out_of_range past the end
    void push_back(const Value& item);   // std::invalid_argument unless of the element type
    // Fixed-size elements: n of them, as the file stores them (little endian; bools 0 or 1).
    void assign_packed(std::span<const std::byte> bytes);

private:
    ValueType element_type_;
    std::vector<Value> values_;          // STRING and ARRAY elements
    std::vector<std::byte> packed_;      // every other element type
};
struct Value {
    std::variant<uint8_t, int8_t, uint16_t, int16_t, uint32_t, int32_t, float, bool, std::string,
                 Array, uint64_t, int64_t, double>
        v;
    ValueType type() const;
};
// Bytes an element of a fixed-size type takes (0 for STRING and ARRAY).
size_t fixed_size(ValueType type);

struct TensorInfo {
    std::string name;
    std::vector<uint64_t> dims;   // ggml order: dims[0] is the contiguous (row) length
    GGMLType type = GGMLType::F32;
    uint64_t offset = 0;          // relative to the start of the data section
    uint64_t n_elements = 0;
    uint64_t n_bytes = 0;
    std::span<const std::byte> data;  // into the mapping (empty for files read without tensors)
};

class File {
public:
    // Maps and validates the file. Throws FormatError (or std::system_error for I/O).
    static File open(const std::filesystem::path& path);
    // Parses an in-memory image (for tests and fuzzing); `bytes` must outlive the File.
    static File parse(std::span<const std::byte> bytes, std::string origin = "<memory>");

    File(File&&) noexcept;
    File& operator=(File&&) noexcept;
    ~File();

    uint32_t version() const { return version_; }
    uint64_t alignment() const { return alignment_; }
    uint64_t data_offset() const { return data_offset_; }
    uint64_t file_size() const { return bytes_.size(); }
    const std::string& origin() const { return origin_; }

    // Metadata, in file order.
    const std::vector<std::pair<std::string, Value>>& metadata() const { return kv_; }
    const Value* find(std::string_view key) const;
    bool has(std::string_view key) const { return find(key) != nullptr; }

    // Typed getters: throw FormatError naming the key if missing or of another type. Integer
    // getters accept any integer type whose value fits.
    std::string get_string(std::string_view key) const;
    uint64_t get_uint(std::string_view key) const;
    int64_t get_int(std::string_view key) const;
    double get_float(std::string_view key) const;   // any float or integer type
    bool get_bool(std::string_view key) const;
    const Array& get_array(std::string_view key) const;
    std::vector<std::string> get_string_array(std::string_view key) const;
    std::vector<float> get_float_array(std::string_view key) const;
    std::vector<int64_t> get_int_array(std::string_view key) const;

    std::optional<std::string> string_or(std::string_view key) const;
    template <class T> T uint_or(std::string_view key, T fallback) const {
        return has(key) ? static_cast<T>(get_uint(key)) : fallback;
    }
    double float_or(std::string_view key, double fallback) const {
        return has(key) ? get_float(key) : fallback;
    }
    bool bool_or(std::string_view key, bool fallback) const {
        return has(key) ? get_bool(key) : fallback;
    }

    const std::vector<TensorInfo>& tensors() const { return tensors_; }
    const TensorInfo* find_tensor(std::string_view name) const;
    const TensorInfo& tensor(std::string_view name) const;   // throws naming the tensor

    // "general.architecture", the prefix of the architecture's own keys ("llama.block_count").
    std::string architecture() const { return get_string("general.architecture"); }

private:
    File() = default;
    std::unique_ptr<MappedFile> mapping_;
    std::span<const std::byte> bytes_;
    std::string origin_;
    uint32_t version_ = 0;
    uint64_t alignment_ = 32;
    uint64_t data_offset_ = 0;
    std::vector<std::pair<std::string, Value>> kv_;
    std::map<std::string, size_t, std::less<>> kv_index_;
    std::vector<TensorInfo> tensors_;
    std::map<std::string, size_t, std::less<>> tensor_index_;
    void parse_all();
};

// Writes GGUF v3. Tensors are written in the order added, each aligned to `alignment`.
class Writer {
public:
    void set(std::string key, Value value);
    void set_string(std::string key, std::string s) { set(std::move(key), Value{std::move(s)}); }
    void set_u32(std::string key, uint32_t v) { set(std::move(key), Value{v}); }
    void set_f32(std::string key, float v) { set(std::move(key), Value{v}); }
    void set_bool(std::string key, bool v) { set(std::move(key), Value{v}); }
    void set_string_array(std::string key, const std::vector<std::string>& items);
    void set_f32_array(std::string key, const std::vector<float>& items);
    void set_i32_array(std::string key, const std::vector<int32_t>& items);

    // `dims` in ggml order; `data` must be row_size_bytes(type, prod(dims)) bytes.
    void add_tensor(std::string name, std::vector<uint64_t> dims, GGMLType type,
                    std::span<const std::byte> data);

    void set_alignment(uint64_t alignment);
    std::vector<std::byte> to_bytes() const;
    void write(const std::filesystem::path& path) const;

private:
    struct PendingTensor {
        std::string name;
        std::vector<uint64_t> dims;
        GGMLType type;
        std::vector<std::byte> data;
    };
    std::vector<std::pair<std::string, Value>> kv_;
    std::vector<PendingTensor> tensors_;
    uint64_t alignment_ = 32;
};

}  // namespace twinfer::gguf
