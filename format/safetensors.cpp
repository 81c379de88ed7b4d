#include "format/safetensors.hpp"

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <system_error>

#include "format/quant.hpp"

namespace twinfer::safetensors {

static_assert(std::endian::native == std::endian::little, "safetensors readers here assume little endian");

namespace {

// The format's own bound (safetensors' MAX_HEADER_SIZE): a header larger than this is hostile.
constexpr uint64_t kMaxHeaderLength = 100'000'000;

[[noreturn]] void fail(const std::string& origin, const std::string& what) {
    throw FormatError(origin + ": " + what);
}

size_t element_size_of(const std::string& dtype) {
    static const std::map<std::string, size_t, std::less<>> sizes = {
        {"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"I64", 8}, {"I32", 4}, {"I16", 2},
        {"I8", 1},  {"U64", 8}, {"U32", 4}, {"U16", 2},  {"U8", 1},  {"BOOL", 1},
        {"F8_E4M3", 1}, {"F8_E5M2", 1},
    };
    const auto it = sizes.find(dtype);
    return it == sizes.end() ? 0 : it->second;
}

uint64_t checked_multiply(uint64_t a, uint64_t b, const std::string& origin, const std::string& what) {
    if (a != 0 && b > std::numeric_limits<uint64_t>::max() / a) fail(origin, what + " overflows 64 bits");
    return a * b;
}

}  // namespace

File::File(File&&) noexcept = default;
File& File::operator=(File&&) noexcept = default;
File::~File() = default;

File File::open(const std::filesystem::path& path) {
    File file;
    file.mapping_ = map_file<FormatError>(path, "safetensors");
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
    if (bytes_.size() < 8)
        fail(origin_, "file of " + std::to_string(bytes_.size()) + " bytes is too short for the 8-byte header length");
    uint64_t header_length = 0;
    std::memcpy(&header_length, bytes_.data(), 8);
    if (header_length > kMaxHeaderLength)
        fail(origin_, "header length " + std::to_string(header_length) + " exceeds the format's limit of " +
                          std::to_string(kMaxHeaderLength) + " bytes");
    if (header_length > bytes_.size() - 8)
        fail(origin_, "header length " + std::to_string(header_length) + " exceeds the " +
                          std::to_string(bytes_.size() - 8) + " bytes after the length field");
    const char* header_begin = reinterpret_cast<const char*>(bytes_.data() + 8);
    nlohmann::json header;
    try {
        header = nlohmann::json::parse(header_begin, header_begin + header_length);
    } catch (const nlohmann::json::exception& e) {  // parse_error, and out_of_range for a number beyond 64-bit floats
        fail(origin_, std::string("header is not valid JSON: ") + e.what());
    }
    if (!header.is_object()) fail(origin_, "header is not a JSON object");

    const std::span<const std::byte> data = bytes_.subspan(8 + header_length);
    for (const auto& [name, entry] : header.items()) {
        if (name == "__metadata__") {
            if (!entry.is_object()) fail(origin_, "__metadata__ is not a JSON object");
            for (const auto& [key, value] : entry.items()) {
                if (!value.is_string()) fail(origin_, "__metadata__ value of '" + key + "' is not a string");
                metadata_[key] = value.get<std::string>();
            }
            continue;
        }
        const std::string where = "tensor '" + name + "'";
        if (!entry.is_object()) fail(origin_, where + ": entry is not a JSON object");
        TensorInfo t;
        t.name = name;

        const auto dtype = entry.find("dtype");
        if (dtype == entry.end() || !dtype->is_string()) fail(origin_, where + ": missing or non-string \"dtype\"");
        t.dtype = dtype->get<std::string>();
        t.element_size = element_size_of(t.dtype);
        if (t.element_size == 0) fail(origin_, where + ": unknown dtype '" + t.dtype + "'");

        const auto shape = entry.find("shape");
        if (shape == entry.end() || !shape->is_array()) fail(origin_, where + ": missing or non-array \"shape\"");
        t.n_elements = 1;
        for (const auto& d : *shape) {
            if (!d.is_number_unsigned()) fail(origin_, where + ": shape " + shape->dump() + " holds a value that is not a non-negative integer");
            t.shape.push_back(d.get<uint64_t>());
            t.n_elements = checked_multiply(t.n_elements, t.shape.back(), origin_, where + ": element count of shape " + shape->dump());
        }
        const uint64_t n_bytes = checked_multiply(t.n_elements, t.element_size, origin_, where + ": byte size");

        const auto offsets = entry.find("data_offsets");
        if (offsets == entry.end() || !offsets->is_array() || offsets->size() != 2 ||
            !(*offsets)[0].is_number_unsigned() || !(*offsets)[1].is_number_unsigned())
            fail(origin_, where + ": \"data_offsets\" must be two non-negative integers");
        const uint64_t begin = (*offsets)[0].get<uint64_t>(), end = (*offsets)[1].get<uint64_t>();
        if (begin > end || end > data.size())
            fail(origin_, where + ": data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
                              "] fall outside the " + std::to_string(data.size()) + " bytes of tensor data");
        if (end - begin != n_bytes)
            fail(origin_, where + ": data_offsets span " + std::to_string(end - begin) + " bytes but " + t.dtype +
                              " " + shape->dump() + " needs " + std::to_string(n_bytes));
        t.data = data.subspan(begin, n_bytes);
        tensors_.push_back(std::move(t));
    }

    // Tensors may not share bytes (the format requires a dense, non-overlapping buffer).
    std::vector<const TensorInfo*> by_offset;
    for (const auto& t : tensors_) by_offset.push_back(&t);
    std::sort(by_offset.begin(), by_offset.end(), [](const TensorInfo* a, const TensorInfo* b) { return a->data.data() < b->data.data(); });
    for (size_t i = 1; i < by_offset.size(); ++i) {
        const TensorInfo& previous = *by_offset[i - 1];
        if (by_offset[i]->data.data() < previous.data.data() + previous.data.size())
            fail(origin_, "tensor '" + by_offset[i]->name + "' overlaps tensor '" + previous.name + "'");
    }
}

const TensorInfo* File::find_tensor(std::string_view name) const {
    const auto it = std::lower_bound(tensors_.begin(), tensors_.end(), name,
                                     [](const TensorInfo& t, std::string_view n) { return t.name < n; });
    return it != tensors_.end() && it->name == name ? &*it : nullptr;
}

const TensorInfo& File::tensor(std::string_view name) const {
    if (const TensorInfo* t = find_tensor(name)) return *t;
    fail(origin_, "tensor '" + std::string(name) + "' not found");
}

std::vector<double> File::to_double(const TensorInfo& tensor) const {
    std::vector<double> out(tensor.n_elements);
    const std::byte* src = tensor.data.data();
    auto widen = [&]<class Stored>(auto convert) {
        for (size_t i = 0; i < out.size(); ++i) {
            Stored v;
            std::memcpy(&v, src + i * sizeof(Stored), sizeof(Stored));   // data need not be aligned
            out[i] = convert(v);
        }
    };
    if (tensor.dtype == "F64") widen.operator()<double>([](double v) { return v; });
    else if (tensor.dtype == "F32") widen.operator()<float>([](float v) { return double{v}; });
    else if (tensor.dtype == "F16") widen.operator()<uint16_t>([](uint16_t v) { return double{fp16_to_fp32(v)}; });
    else if (tensor.dtype == "BF16") widen.operator()<uint16_t>([](uint16_t v) { return double{bf16_to_fp32(v)}; });
    else fail(origin_, "tensor '" + tensor.name + "': dtype " + tensor.dtype + " cannot be read as floating point (F64, F32, F16, BF16)");
    return out;
}

}  // namespace twinfer::safetensors
