#include "format/gguf.hpp"

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <limits>
#include <system_error>
#include <utility>

namespace twinfer::gguf {

static_assert(std::endian::native == std::endian::little, "GGUF readers here assume little endian");

namespace {

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" read as little-endian u32
// Arrays may nest (an array of arrays); real files never go deeper than 2. A bound keeps a
// hostile file from recursing the stack away.
constexpr int kMaxArrayDepth = 8;
constexpr uint32_t kMaxDims = 4;  // GGML_MAX_DIMS
// Counts come from the file, so space is reserved for at most this many items up front; a larger
// count that is true grows its vector as the items are read, and one that lies costs nothing.
constexpr uint64_t kMaxReserve = uint64_t{1} << 16;

[[noreturn]] void fail(const std::string& origin, const std::string& what) {
    throw FormatError(origin + ": " + what);
}

// A bounds-checked cursor over the file image. Every read checks the remaining size first, so a
// truncated file fails with the section being read instead of reading past the end.
class Cursor {
public:
    Cursor(std::span<const std::byte> bytes, const std::string& origin) : bytes_(bytes), origin_(origin) {}

    uint64_t position() const { return pos_; }
    uint64_t remaining() const { return bytes_.size() - pos_; }

    template <class T> T read(const char* what) {
        need(sizeof(T), what);
        T value;
        std::memcpy(&value, bytes_.data() + pos_, sizeof(T));
        pos_ += sizeof(T);
        return value;
    }

    // n bytes in place (a view into the file image).
    std::span<const std::byte> read_bytes(uint64_t n, const std::string& what) {
        need(n, what);
        const auto bytes = bytes_.subspan(pos_, n);
        pos_ += n;
        return bytes;
    }

    std::string read_string(const std::string& what) {
        const auto length = read<uint64_t>((what + " (string length)").c_str());
        if (length > remaining())
            fail(origin_, what + ": string length " + std::to_string(length) + " exceeds the " +
                              std::to_string(remaining()) + " bytes left in the file");
        std::string s(reinterpret_cast<const char*>(bytes_.data() + pos_), length);
        pos_ += length;
        return s;
    }

    void need(uint64_t n, const std::string& what) const {
        if (n > remaining())
            fail(origin_, "file truncated while reading " + what + " (need " + std::to_string(n) +
                              " bytes at offset " + std::to_string(pos_) + ", " +
                              std::to_string(remaining()) + " left)");
    }

private:
    std::span<const std::byte> bytes_;
    const std::string& origin_;
    uint64_t pos_ = 0;
};

// The smallest number of bytes one element of `type` takes in the file; lets an array count be
// checked against what is left before anything is allocated for it.
uint64_t min_encoded_size(ValueType type) {
    if (type == ValueType::STRING) return 8;        // the length prefix
    if (type == ValueType::ARRAY) return 4 + 8;     // element type + count
    return fixed_size(type);
}

bool is_valid_value_type(uint32_t t) { return t <= static_cast<uint32_t>(ValueType::FLOAT64); }

Value read_value(Cursor& cur, ValueType type, const std::string& key, const std::string& origin, int depth);

Array read_array(Cursor& cur, const std::string& key, const std::string& origin, int depth) {
    if (depth >= kMaxArrayDepth) fail(origin, "key '" + key + "': arrays nested deeper than " + std::to_string(kMaxArrayDepth));
    const auto element_type_id = cur.read<uint32_t>(("key '" + key + "' (array element type)").c_str());
    if (!is_valid_value_type(element_type_id))
        fail(origin, "key '" + key + "': invalid array element type " + std::to_string(element_type_id));
    Array array(static_cast<ValueType>(element_type_id));
    const auto count = cur.read<uint64_t>(("key '" + key + "' (array length)").c_str());
    const uint64_t min_size = min_encoded_size(array.element_type());
    if (count > cur.remaining() / min_size)
        fail(origin, "key '" + key + "': array length " + std::to_string(count) + " of " +
                         std::string(value_type_name(array.element_type())) + " cannot fit in the " +
                         std::to_string(cur.remaining()) + " bytes left in the file");
    if (fixed_size(array.element_type()) > 0) {
        const auto bytes = cur.read_bytes(count * min_size, "value of key '" + key + "'");
        if (array.element_type() == ValueType::BOOL)
            for (std::byte b : bytes)
                if (std::to_integer<uint8_t>(b) > 1) fail(origin, "key '" + key + "': invalid bool byte " + std::to_string(std::to_integer<int>(b)));
        array.assign_packed(bytes);
        return array;
    }
    for (uint64_t i = 0; i < count; ++i) array.push_back(read_value(cur, array.element_type(), key, origin, depth + 1));
    return array;
}

Value read_value(Cursor& cur, ValueType type, const std::string& key, const std::string& origin, int depth) {
    const std::string what = "value of key '" + key + "'";
    switch (type) {
        case ValueType::UINT8: return Value{cur.read<uint8_t>(what.c_str())};
        case ValueType::INT8: return Value{cur.read<int8_t>(what.c_str())};
        case ValueType::UINT16: return Value{cur.read<uint16_t>(what.c_str())};
        case ValueType::INT16: return Value{cur.read<int16_t>(what.c_str())};
        case ValueType::UINT32: return Value{cur.read<uint32_t>(what.c_str())};
        case ValueType::INT32: return Value{cur.read<int32_t>(what.c_str())};
        case ValueType::FLOAT32: return Value{cur.read<float>(what.c_str())};
        case ValueType::BOOL: {
            const auto b = cur.read<uint8_t>(what.c_str());
            if (b > 1) fail(origin, "key '" + key + "': invalid bool byte " + std::to_string(b));
            return Value{b == 1};
        }
        case ValueType::STRING: return Value{cur.read_string(what)};
        case ValueType::ARRAY: return Value{read_array(cur, key, origin, depth)};
        case ValueType::UINT64: return Value{cur.read<uint64_t>(what.c_str())};
        case ValueType::INT64: return Value{cur.read<int64_t>(what.c_str())};
        case ValueType::FLOAT64: return Value{cur.read<double>(what.c_str())};
    }
    fail(origin, "key '" + key + "': invalid value type " + std::to_string(static_cast<uint32_t>(type)));
}

std::string describe_type(const Value& v) { return std::string(value_type_name(v.type())); }

}  // namespace

std::string_view value_type_name(ValueType t) {
    switch (t) {
        case ValueType::UINT8: return "uint8";
        case ValueType::INT8: return "int8";
        case ValueType::UINT16: return "uint16";
        case ValueType::INT16: return "int16";
        case ValueType::UINT32: return "uint32";
        case ValueType::INT32: return "int32";
        case ValueType::FLOAT32: return "float32";
        case ValueType::BOOL: return "bool";
        case ValueType::STRING: return "string";
        case ValueType::ARRAY: return "array";
        case ValueType::UINT64: return "uint64";
        case ValueType::INT64: return "int64";
        case ValueType::FLOAT64: return "float64";
    }
    return "invalid";
}

ValueType Value::type() const {
    // The variant's alternatives are declared in ValueType order, so the index is the type id.
    return static_cast<ValueType>(v.index());
}

size_t fixed_size(ValueType type) {
    switch (type) {
        case ValueType::UINT8: case ValueType::INT8: case ValueType::BOOL: return 1;
        case ValueType::UINT16: case ValueType::INT16: return 2;
        case ValueType::UINT32: case ValueType::INT32: case ValueType::FLOAT32: return 4;
        case ValueType::UINT64: case ValueType::INT64: case ValueType::FLOAT64: return 8;
        case ValueType::STRING: case ValueType::ARRAY: return 0;
    }
    return 0;
}

namespace {
template <class T> Value load(const std::byte* element) {
    T x;
    std::memcpy(&x, element, sizeof x);
    return Value{x};
}
}  // namespace

Array::Array(ValueType element_type) : element_type_(element_type) {}

Array::Array(ValueType element_type, const std::vector<Value>& items) : element_type_(element_type) {
    for (const Value& item : items) push_back(item);
}

size_t Array::size() const {
    const size_t element = fixed_size(element_type_);
    return element ? packed_.size() / element : values_.size();
}

Value Array::at(size_t i) const {
    if (i >= size()) throw std::out_of_range("GGUF array index " + std::to_string(i) + " of " + std::to_string(size()));
    const size_t element = fixed_size(element_type_);
    if (!element) return values_[i];
    const std::byte* p = packed_.data() + i * element;
    switch (element_type_) {
        case ValueType::UINT8: return load<uint8_t>(p);
        case ValueType::INT8: return load<int8_t>(p);
        case ValueType::UINT16: return load<uint16_t>(p);
        case ValueType::INT16: return load<int16_t>(p);
        case ValueType::UINT32: return load<uint32_t>(p);
        case ValueType::INT32: return load<int32_t>(p);
        case ValueType::FLOAT32: return load<float>(p);
        case ValueType::BOOL: return Value{std::to_integer<uint8_t>(*p) != 0};
        case ValueType::UINT64: return load<uint64_t>(p);
        case ValueType::INT64: return load<int64_t>(p);
        case ValueType::FLOAT64: return load<double>(p);
        case ValueType::STRING: case ValueType::ARRAY: break;
    }
    return values_[i];
}

void Array::push_back(const Value& item) {
    if (item.type() != element_type_) throw std::invalid_argument("GGUF array items must all be of the element type");
    const size_t element = fixed_size(element_type_);
    if (!element) return values_.push_back(item);
    std::visit(
        [&](const auto& x) {
            using T = std::decay_t<decltype(x)>;
            if constexpr (std::is_same_v<T, bool>) {
                packed_.push_back(std::byte{x ? uint8_t{1} : uint8_t{0}});
            } else if constexpr (std::is_arithmetic_v<T>) {
                const auto* bytes = reinterpret_cast<const std::byte*>(&x);
                packed_.insert(packed_.end(), bytes, bytes + sizeof x);
            }
        },
        item.v);
}

void Array::assign_packed(std::span<const std::byte> bytes) {
    if (fixed_size(element_type_) == 0 || bytes.size() % fixed_size(element_type_) != 0)
        throw std::invalid_argument("GGUF array: packed bytes need a fixed-size element type and whole elements");
    packed_.assign(bytes.begin(), bytes.end());
}

// ---------------------------------------------------------------------------------------------
// Reading

File::File(File&&) noexcept = default;
File& File::operator=(File&&) noexcept = default;
File::~File() = default;

File File::open(const std::filesystem::path& path) {
    File file;
    file.mapping_ = map_file<FormatError>(path, "GGUF");
    file.bytes_ = file.mapping_->bytes();
    file.origin_ = path.string();
    file.parse_all();
    return file;
}

File File::parse(std::span<const std::byte> bytes, std::string origin) {
    File file;
    file.bytes_ = bytes;
    file.origin_ = std::move(origin);
    file.parse_all();
    return file;
}

void File::parse_all() {
    Cursor cur(bytes_, origin_);
    if (bytes_.size() < 4 || cur.read<uint32_t>("magic") != kMagic)
        fail(origin_, "not a GGUF file (bad magic; expected \"GGUF\")");
    version_ = cur.read<uint32_t>("version");
    if (version_ == 1) fail(origin_, "GGUF version 1 is not supported (only 2 and 3)");
    if (version_ != 2 && version_ != 3) fail(origin_, "unsupported GGUF version " + std::to_string(version_));
    const auto n_tensors = cur.read<uint64_t>("tensor count");
    const auto n_kv = cur.read<uint64_t>("metadata count");
    // Each key-value takes at least 8 (key length) + 4 (type) + 1 bytes; each tensor info at
    // least 8 + 4 + 4 + 8. Counts beyond what the file could hold are rejected before any
    // allocation.
    if (n_kv > cur.remaining() / 13)
        fail(origin_, "metadata count " + std::to_string(n_kv) + " cannot fit in a file of " + std::to_string(bytes_.size()) + " bytes");
    if (n_tensors > cur.remaining() / 24)
        fail(origin_, "tensor count " + std::to_string(n_tensors) + " cannot fit in a file of " + std::to_string(bytes_.size()) + " bytes");

    kv_.reserve(std::min(n_kv, kMaxReserve));
    for (uint64_t i = 0; i < n_kv; ++i) {
        std::string key = cur.read_string("metadata key #" + std::to_string(i));
        const auto type_id = cur.read<uint32_t>(("type of key '" + key + "'").c_str());
        if (!is_valid_value_type(type_id))
            fail(origin_, "key '" + key + "': invalid value type " + std::to_string(type_id));
        Value value = read_value(cur, static_cast<ValueType>(type_id), key, origin_, 0);
        if (kv_index_.count(key)) fail(origin_, "duplicate metadata key '" + key + "'");
        kv_index_.emplace(key, kv_.size());
        kv_.emplace_back(std::move(key), std::move(value));
    }

    if (const Value* a = find("general.alignment")) {
        if (a->type() != ValueType::UINT32) fail(origin_, "key 'general.alignment' must be uint32, not " + describe_type(*a));
        alignment_ = std::get<uint32_t>(a->v);
        if (alignment_ == 0 || (alignment_ & (alignment_ - 1)) != 0)
            fail(origin_, "key 'general.alignment' = " + std::to_string(alignment_) + " is not a power of two");
    }

    tensors_.reserve(std::min(n_tensors, kMaxReserve));
    for (uint64_t i = 0; i < n_tensors; ++i) {
        TensorInfo t;
        t.name = cur.read_string("tensor info #" + std::to_string(i) + " name");
        const std::string where = "tensor '" + t.name + "'";
        const auto n_dims = cur.read<uint32_t>((where + " dimension count").c_str());
        if (n_dims == 0 || n_dims > kMaxDims)
            fail(origin_, where + ": " + std::to_string(n_dims) + " dimensions (must be 1 to " + std::to_string(kMaxDims) + ")");
        t.dims.resize(n_dims);
        uint64_t n_elements = 1;
        for (auto& d : t.dims) {
            d = cur.read<uint64_t>((where + " dimensions").c_str());
            if (d == 0) fail(origin_, where + ": a dimension is zero");
            if (d > std::numeric_limits<uint64_t>::max() / n_elements)
                fail(origin_, where + ": element count overflows");
            n_elements *= d;
        }
        t.n_elements = n_elements;
        const auto type_id = cur.read<uint32_t>((where + " type").c_str());
        if (!is_known_type(type_id)) fail(origin_, where + ": unknown tensor type id " + std::to_string(type_id));
        t.type = static_cast<GGMLType>(type_id);
        const auto& traits = type_traits(t.type);
        if (t.dims[0] % traits.block_size != 0)
            fail(origin_, where + ": row length " + std::to_string(t.dims[0]) + " is not a multiple of the " +
                              std::string(traits.name) + " block size " + std::to_string(traits.block_size));
        if (n_elements / traits.block_size > std::numeric_limits<uint64_t>::max() / traits.type_size)
            fail(origin_, where + ": byte size overflows");
        t.n_bytes = n_elements / traits.block_size * traits.type_size;
        t.offset = cur.read<uint64_t>((where + " data offset").c_str());
        if (t.offset % alignment_ != 0)
            fail(origin_, where + ": data offset " + std::to_string(t.offset) + " is not a multiple of the alignment " + std::to_string(alignment_));
        if (tensor_index_.count(t.name)) fail(origin_, "duplicate tensor name '" + t.name + "'");
        tensor_index_.emplace(t.name, tensors_.size());
        tensors_.push_back(std::move(t));
    }

    // The data section starts at the next multiple of the alignment after the header.
    const uint64_t header_end = cur.position();
    data_offset_ = (header_end + alignment_ - 1) / alignment_ * alignment_;
    if (n_tensors > 0 && data_offset_ > bytes_.size())
        fail(origin_, "file truncated: tensor data should start at byte " + std::to_string(data_offset_) +
                          " but the file has " + std::to_string(bytes_.size()));
    const uint64_t data_size = n_tensors > 0 ? bytes_.size() - data_offset_ : 0;
    for (auto& t : tensors_) {
        if (t.offset > data_size || t.n_bytes > data_size - t.offset)
            fail(origin_, "tensor '" + t.name + "': data [" + std::to_string(t.offset) + ", +" + std::to_string(t.n_bytes) +
                              ") lies past the end of the file (data section holds " + std::to_string(data_size) + " bytes)");
        t.data = bytes_.subspan(data_offset_ + t.offset, t.n_bytes);
    }
    // ggml lays tensors out one after another; two that share bytes mean a corrupt file.
    std::vector<const TensorInfo*> by_offset;
    by_offset.reserve(tensors_.size());
    for (const auto& t : tensors_) by_offset.push_back(&t);
    std::sort(by_offset.begin(), by_offset.end(), [](const TensorInfo* a, const TensorInfo* b) { return a->offset < b->offset; });
    for (size_t i = 1; i < by_offset.size(); ++i) {
        const TensorInfo& before = *by_offset[i - 1];
        const TensorInfo& after = *by_offset[i];
        if (before.offset + before.n_bytes > after.offset)
            fail(origin_, "tensor '" + after.name + "': data at offset " + std::to_string(after.offset) + " overlaps tensor '" +
                              before.name + "' [" + std::to_string(before.offset) + ", +" + std::to_string(before.n_bytes) + ")");
    }
}

const Value* File::find(std::string_view key) const {
    const auto it = kv_index_.find(key);
    return it == kv_index_.end() ? nullptr : &kv_[it->second].second;
}

namespace {
const Value& require(const File& f, std::string_view key) {
    const Value* v = f.find(key);
    if (!v) fail(f.origin(), "missing metadata key '" + std::string(key) + "'");
    return *v;
}
[[noreturn]] void wrong_type(const File& f, std::string_view key, const Value& v, const char* wanted) {
    fail(f.origin(), "metadata key '" + std::string(key) + "' is " + describe_type(v) + ", expected " + wanted);
}
template <class Out> bool integer_of(const Value& v, Out& out) {
    return std::visit(
        [&](const auto& x) -> bool {
            using T = std::decay_t<decltype(x)>;
            if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
                if (!std::in_range<Out>(x)) return false;
                out = static_cast<Out>(x);
                return true;
            } else {
                return false;
            }
        },
        v.v);
}
}  // namespace

std::string File::get_string(std::string_view key) const {
    const Value& v = require(*this, key);
    if (const auto* s = std::get_if<std::string>(&v.v)) return *s;
    wrong_type(*this, key, v, "string");
}

uint64_t File::get_uint(std::string_view key) const {
    const Value& v = require(*this, key);
    uint64_t out = 0;
    if (!integer_of(v, out)) wrong_type(*this, key, v, "a non-negative integer");
    return out;
}

int64_t File::get_int(std::string_view key) const {
    const Value& v = require(*this, key);
    int64_t out = 0;
    if (!integer_of(v, out)) wrong_type(*this, key, v, "an integer");
    return out;
}

double File::get_float(std::string_view key) const {
    const Value& v = require(*this, key);
    if (const auto* f = std::get_if<float>(&v.v)) return *f;
    if (const auto* d = std::get_if<double>(&v.v)) return *d;
    int64_t i = 0;
    if (integer_of(v, i)) return static_cast<double>(i);
    wrong_type(*this, key, v, "a number");
}

bool File::get_bool(std::string_view key) const {
    const Value& v = require(*this, key);
    if (const auto* b = std::get_if<bool>(&v.v)) return *b;
    wrong_type(*this, key, v, "bool");
}

const Array& File::get_array(std::string_view key) const {
    const Value& v = require(*this, key);
    if (const auto* a = std::get_if<Array>(&v.v)) return *a;
    wrong_type(*this, key, v, "array");
}

std::vector<std::string> File::get_string_array(std::string_view key) const {
    const Array& a = get_array(key);
    if (a.element_type() != ValueType::STRING)
        fail(origin_, "metadata key '" + std::string(key) + "' is not an array of strings (it holds " +
                          std::string(value_type_name(a.element_type())) + ")");
    std::vector<std::string> out;
    out.reserve(a.size());
    for (size_t i = 0; i < a.size(); ++i) out.push_back(std::get<std::string>(a.at(i).v));
    return out;
}

// The typed array getters check the declared element type, not only the elements: an empty array
// of strings read as floats is a type error, as a full one is, rather than an empty result.
std::vector<float> File::get_float_array(std::string_view key) const {
    const Array& a = get_array(key);
    if (a.element_type() != ValueType::FLOAT32 && a.element_type() != ValueType::FLOAT64)
        fail(origin_, "metadata key '" + std::string(key) + "' is not an array of floats (it holds " +
                          std::string(value_type_name(a.element_type())) + ")");
    std::vector<float> out;
    out.reserve(a.size());
    for (size_t i = 0; i < a.size(); ++i) {
        const Value item = a.at(i);
        const auto* f = std::get_if<float>(&item.v);
        out.push_back(f ? *f : static_cast<float>(std::get<double>(item.v)));
    }
    return out;
}

std::vector<int64_t> File::get_int_array(std::string_view key) const {
    const Array& a = get_array(key);
    if (fixed_size(a.element_type()) == 0 || a.element_type() == ValueType::BOOL || a.element_type() == ValueType::FLOAT32 ||
        a.element_type() == ValueType::FLOAT64)
        fail(origin_, "metadata key '" + std::string(key) + "' is not an array of integers (it holds " +
                          std::string(value_type_name(a.element_type())) + ")");
    std::vector<int64_t> out;
    out.reserve(a.size());
    for (size_t i = 0; i < a.size(); ++i) {
        int64_t value = 0;
        if (!integer_of(a.at(i), value))
            fail(origin_, "metadata key '" + std::string(key) + "': element " + std::to_string(i) + " does not fit in int64");
        out.push_back(value);
    }
    return out;
}

std::optional<std::string> File::string_or(std::string_view key) const {
    if (!has(key)) return std::nullopt;
    return get_string(key);
}

const TensorInfo* File::find_tensor(std::string_view name) const {
    const auto it = tensor_index_.find(name);
    return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

const TensorInfo& File::tensor(std::string_view name) const {
    const TensorInfo* t = find_tensor(name);
    if (!t) fail(origin_, "missing tensor '" + std::string(name) + "'");
    return *t;
}

// ---------------------------------------------------------------------------------------------
// Writing

namespace {
class ByteSink {
public:
    template <class T> void put(const T& v) {
        const auto* p = reinterpret_cast<const std::byte*>(&v);
        out_.insert(out_.end(), p, p + sizeof(T));
    }
    void put_string(const std::string& s) {
        put<uint64_t>(s.size());
        const auto* p = reinterpret_cast<const std::byte*>(s.data());
        out_.insert(out_.end(), p, p + s.size());
    }
    void put_bytes(std::span<const std::byte> b) { out_.insert(out_.end(), b.begin(), b.end()); }
    void pad_to(uint64_t alignment) {
        while (out_.size() % alignment) out_.push_back(std::byte{0});
    }
    std::vector<std::byte>& bytes() { return out_; }

private:
    std::vector<std::byte> out_;
};

void put_value_body(ByteSink& sink, const Value& value) {
    std::visit(
        [&](const auto& x) {
            using T = std::decay_t<decltype(x)>;
            if constexpr (std::is_same_v<T, std::string>) {
                sink.put_string(x);
            } else if constexpr (std::is_same_v<T, Array>) {
                sink.put<uint32_t>(static_cast<uint32_t>(x.element_type()));
                sink.put<uint64_t>(x.size());
                for (size_t i = 0; i < x.size(); ++i) put_value_body(sink, x.at(i));
            } else if constexpr (std::is_same_v<T, bool>) {
                sink.put<uint8_t>(x ? 1 : 0);
            } else {
                sink.put<T>(x);
            }
        },
        value.v);
}
}  // namespace

void Writer::set(std::string key, Value value) {
    // The alignment decides where the writer puts tensor data, so it is taken from the key
    // however it was set.
    if (key == "general.alignment") {
        const auto* alignment = std::get_if<uint32_t>(&value.v);
        if (!alignment || *alignment == 0 || (*alignment & (*alignment - 1)) != 0)
            throw std::invalid_argument("GGUF writer: general.alignment must be a uint32 power of two");
        alignment_ = *alignment;
    }
    for (auto& [k, v] : kv_)
        if (k == key) {
            v = std::move(value);
            return;
        }
    kv_.emplace_back(std::move(key), std::move(value));
}

void Writer::set_string_array(std::string key, const std::vector<std::string>& items) {
    Array a(ValueType::STRING);
    for (const auto& s : items) a.push_back(Value{s});
    set(std::move(key), Value{std::move(a)});
}

void Writer::set_f32_array(std::string key, const std::vector<float>& items) {
    Array a(ValueType::FLOAT32);
    for (float f : items) a.push_back(Value{f});
    set(std::move(key), Value{std::move(a)});
}

void Writer::set_i32_array(std::string key, const std::vector<int32_t>& items) {
    Array a(ValueType::INT32);
    for (int32_t i : items) a.push_back(Value{i});
    set(std::move(key), Value{std::move(a)});
}

void Writer::set_alignment(uint64_t alignment) {
    if (alignment > std::numeric_limits<uint32_t>::max())
        throw std::invalid_argument("GGUF writer: general.alignment must be a uint32 power of two");
    set("general.alignment", Value{static_cast<uint32_t>(alignment)});
}

void Writer::add_tensor(std::string name, std::vector<uint64_t> dims, GGMLType type, std::span<const std::byte> data) {
    if (dims.empty() || dims.size() > kMaxDims) throw std::invalid_argument("GGUF writer: tensor '" + name + "' needs 1 to 4 dimensions");
    uint64_t n = 1;
    for (auto d : dims) {
        if (d == 0 || d > std::numeric_limits<uint64_t>::max() / n)
            throw std::invalid_argument("GGUF writer: tensor '" + name + "' has a zero dimension or more elements than fit in 64 bits");
        n *= d;
    }
    const size_t expected = row_size_bytes(type, n);
    if (data.size() != expected)
        throw std::invalid_argument("GGUF writer: tensor '" + name + "' has " + std::to_string(data.size()) +
                                    " bytes, its shape and type need " + std::to_string(expected));
    for (const auto& t : tensors_)
        if (t.name == name) throw std::invalid_argument("GGUF writer: duplicate tensor '" + name + "'");
    tensors_.push_back({std::move(name), std::move(dims), type, {data.begin(), data.end()}});
}

std::vector<std::byte> Writer::to_bytes() const {
    ByteSink sink;
    sink.put<uint32_t>(kMagic);
    sink.put<uint32_t>(3);
    sink.put<uint64_t>(tensors_.size());
    sink.put<uint64_t>(kv_.size());
    for (const auto& [key, value] : kv_) {
        sink.put_string(key);
        sink.put<uint32_t>(static_cast<uint32_t>(value.type()));
        put_value_body(sink, value);
    }
    uint64_t offset = 0;
    for (const auto& t : tensors_) {
        sink.put_string(t.name);
        sink.put<uint32_t>(static_cast<uint32_t>(t.dims.size()));
        for (auto d : t.dims) sink.put<uint64_t>(d);
        sink.put<uint32_t>(static_cast<uint32_t>(t.type));
        sink.put<uint64_t>(offset);
        offset += (t.data.size() + alignment_ - 1) / alignment_ * alignment_;
    }
    sink.pad_to(alignment_);
    for (const auto& t : tensors_) {
        sink.put_bytes(t.data);
        sink.pad_to(alignment_);
    }
    return std::move(sink.bytes());
}

void Writer::write(const std::filesystem::path& path) const {
    const auto bytes = to_bytes();
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    if (!out) throw std::runtime_error("cannot create " + path.string());
    out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    if (!out) throw std::runtime_error("cannot write " + path.string());
}

}  // namespace twinfer::gguf
