// Hostile GGUF files: a valid image from gguf::Writer, broken in every field the reader trusts.
// Each broken image must fail with a FormatError that names the file, the key or tensor, and the
// problem; never crash (scripts/test.sh runs this under AddressSanitizer) and never allocate much
// more than the image itself (checked with a counting operator new).
#include "format/gguf.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <iostream>
#include <cstdlib>
#include <cstring>
#include <new>
#include <random>
#include <string>
#include <tuple>
#include <vector>

// The largest single allocation since the last reset. Replacing the global operator new is the
// one way to see what the parser asks for, whatever container does the asking.
namespace {
std::atomic<size_t> g_largest_allocation{0};
}  // namespace

// GCC sees std::allocator's operator new flow into free() once these are inlined, and warns; the
// pair is malloc/free on both sides, so the warning does not apply here.
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
void* operator new(std::size_t size) {
    size_t seen = g_largest_allocation.load(std::memory_order_relaxed);
    while (size > seen && !g_largest_allocation.compare_exchange_weak(seen, size, std::memory_order_relaxed)) {
    }
    if (void* p = std::malloc(size ? size : 1)) return p;
    throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }

namespace twinfer::gguf {
namespace {

constexpr const char* kOrigin = "broken.gguf";

// ---------------------------------------------------------------------------------------------
// The valid image and a map of its fields

std::vector<std::byte> valid_image() {
    Writer writer;
    writer.set_alignment(32);
    writer.set_string("general.architecture", "llama");
    writer.set_bool("k.flag", true);
    writer.set_u32("k.count", 7);
    writer.set_f32("k.ratio", 0.5f);
    writer.set_string_array("k.tokens", {"<s>", "b", "cc"});
    writer.set_i32_array("k.ids", {1, -2, 3});
    writer.set("k.bools", Value{Array{ValueType::BOOL, {Value{false}, Value{true}}}});
    writer.set("k.nested", Value{Array{ValueType::ARRAY,
                                       {Value{Array{ValueType::UINT8, {Value{uint8_t{1}}, Value{uint8_t{2}}}}},
                                        Value{Array{ValueType::STRING, {Value{std::string("x")}}}}}}});
    std::vector<std::byte> data(128);
    for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<std::byte>(i * 7);
    writer.add_tensor("t.a", {8, 4}, GGMLType::F32, data);                          // 128 bytes
    writer.add_tensor("t.b", {32, 2}, GGMLType::Q8_0, std::span(data).first(68));   // 68 bytes
    writer.add_tensor("t.c", {5}, GGMLType::F16, std::span(data).first(10));        // 10 bytes
    return writer.to_bytes();
}

enum class Kind {
    TensorCount, KvCount, KeyLength, ValueTypeId, StringLength, ArrayElementType, ArrayCount, BoolByte,
    U32Value, TensorNameLength, DimCount, Dim, TensorType, TensorOffset,
};

struct Field {
    Kind kind;
    size_t offset;
    size_t size;
    std::string owner;  // what the error message must name: "key 'k.ids'", "tensor 't.a'", ...
};

// Walks a well-formed image (the writer's), recording where each field lies.
class LayoutWalker {
public:
    explicit LayoutWalker(const std::vector<std::byte>& image) : image_(image) {
        pos_ = 8;
        const uint64_t n_tensors = take<uint64_t>(Kind::TensorCount, "tensor count");
        const uint64_t n_kv = take<uint64_t>(Kind::KvCount, "metadata count");
        for (uint64_t i = 0; i < n_kv; ++i) {
            const std::string key = string(Kind::KeyLength, "metadata key #" + std::to_string(i));
            const std::string owner = "key '" + key + "'";
            value(take<uint32_t>(Kind::ValueTypeId, owner), owner, key == "general.alignment");
        }
        for (uint64_t i = 0; i < n_tensors; ++i) {
            const std::string name = string(Kind::TensorNameLength, "tensor info #" + std::to_string(i) + " name");
            const std::string owner = "tensor '" + name + "'";
            const uint32_t n_dims = take<uint32_t>(Kind::DimCount, owner);
            for (uint32_t d = 0; d < n_dims; ++d) take<uint64_t>(Kind::Dim, owner);
            take<uint32_t>(Kind::TensorType, owner);
            take<uint64_t>(Kind::TensorOffset, owner);
        }
    }
    const std::vector<Field>& fields() const { return fields_; }
    std::vector<Field> fields(Kind kind, std::string_view owner = {}) const {
        std::vector<Field> out;
        for (const auto& f : fields_)
            if (f.kind == kind && (owner.empty() || f.owner == owner)) out.push_back(f);
        return out;
    }
    // The index-th field of this kind and owner (a tensor's dims, in order).
    const Field& field(Kind kind, std::string_view owner, size_t index = 0) const {
        for (const auto& f : fields_)
            if (f.kind == kind && f.owner == owner && index-- == 0) return f;
        throw std::logic_error("no such field of " + std::string(owner));
    }

private:
    const std::vector<std::byte>& image_;
    size_t pos_ = 0;
    std::vector<Field> fields_;

    template <class T> T take(Kind kind, const std::string& owner) {
        T v;
        std::memcpy(&v, image_.data() + pos_, sizeof(T));
        fields_.push_back({kind, pos_, sizeof(T), owner});
        pos_ += sizeof(T);
        return v;
    }
    std::string string(Kind length_kind, const std::string& owner) {
        const auto n = take<uint64_t>(length_kind, owner);
        std::string s(reinterpret_cast<const char*>(image_.data() + pos_), n);
        pos_ += n;
        return s;
    }
    void value(uint32_t type, const std::string& owner, bool is_alignment = false) {
        switch (static_cast<ValueType>(type)) {
            case ValueType::STRING: string(Kind::StringLength, owner); break;
            case ValueType::ARRAY: {
                const auto element_type = take<uint32_t>(Kind::ArrayElementType, owner);
                const auto count = take<uint64_t>(Kind::ArrayCount, owner);
                for (uint64_t i = 0; i < count; ++i) value(element_type, owner);
                break;
            }
            case ValueType::BOOL: take<uint8_t>(Kind::BoolByte, owner); break;
            case ValueType::UINT32: take<uint32_t>(Kind::U32Value, is_alignment ? "general.alignment" : owner); break;
            case ValueType::UINT8: case ValueType::INT8: pos_ += 1; break;
            case ValueType::UINT16: case ValueType::INT16: pos_ += 2; break;
            case ValueType::INT32: case ValueType::FLOAT32: pos_ += 4; break;
            case ValueType::UINT64: case ValueType::INT64: case ValueType::FLOAT64: pos_ += 8; break;
        }
    }
};

// ---------------------------------------------------------------------------------------------
// Parsing a broken image

// Parses; on success touches every byte the File hands out, so AddressSanitizer sees any span that
// points outside the image. Returns the FormatError's message, or "" if the image parsed.
std::string parse_error(const std::vector<std::byte>& image) {
    g_largest_allocation = 0;
    std::string message;
    try {
        const File file = File::parse(image, kOrigin);
        size_t sum = 0;
        for (const auto& t : file.tensors()) {
            EXPECT_GE(t.data.data(), image.data()) << t.name;
            EXPECT_LE(t.data.data() + t.data.size(), image.data() + image.size()) << t.name;
            for (std::byte b : t.data) sum += static_cast<size_t>(b);
        }
        for (const auto& [key, value] : file.metadata()) sum += key.size() + static_cast<size_t>(value.type());
        volatile size_t sink = sum;
        (void)sink;
    } catch (const FormatError& e) {
        message = e.what();
        if (message.empty()) message = "(empty FormatError message)";
    }
    // Nothing the parser keeps is larger than a vector of Values, one per byte left in the file.
    const size_t limit = 64 * image.size() + 65536;
    EXPECT_LE(g_largest_allocation.load(), limit) << "parsing a " << image.size() << "-byte image allocated "
                                                  << g_largest_allocation.load() << " bytes at once";
    return message;
}

template <class T> std::vector<std::byte> patched(std::vector<std::byte> image, size_t offset, T value) {
    std::memcpy(image.data() + offset, &value, sizeof(T));
    return image;
}

std::vector<std::byte> patched_field(const std::vector<std::byte>& image, const Field& f, uint64_t value) {
    switch (f.size) {
        case 1: return patched(image, f.offset, static_cast<uint8_t>(value));
        case 4: return patched(image, f.offset, static_cast<uint32_t>(value));
        default: return patched(image, f.offset, value);
    }
}

bool contains(const std::string& s, std::string_view part) { return s.find(part) != std::string::npos; }

// The image must fail with a message naming the file and each of `parts`.
void expect_rejected(const std::vector<std::byte>& image, std::initializer_list<std::string_view> parts,
                     const std::string& what) {
    const std::string message = parse_error(image);
    ASSERT_FALSE(message.empty()) << what << ": parsed, expected an error";
    EXPECT_TRUE(contains(message, kOrigin)) << what << ": " << message;
    for (std::string_view part : parts) EXPECT_TRUE(contains(message, part)) << what << ": '" << part << "' not in: " << message;
}

class BrokenGgufTest : public ::testing::Test {
protected:
    const std::vector<std::byte> image_ = valid_image();
    const LayoutWalker layout_{image_};
};

TEST_F(BrokenGgufTest, TheValidImageParses) {
    EXPECT_EQ(parse_error(image_), "");
    EXPECT_EQ(layout_.fields(Kind::TensorOffset).size(), 3u);
    EXPECT_EQ(layout_.fields(Kind::BoolByte).size(), 3u);
    EXPECT_EQ(layout_.fields(Kind::U32Value, "general.alignment").size(), 1u);
}

TEST_F(BrokenGgufTest, EveryTruncationFails) {
    const File file = File::parse(image_);
    uint64_t data_end = 0;
    for (const auto& t : file.tensors()) data_end = std::max(data_end, file.data_offset() + t.offset + t.n_bytes);
    for (size_t length = 0; length < image_.size(); ++length) {
        const std::vector<std::byte> prefix(image_.begin(), image_.begin() + static_cast<std::ptrdiff_t>(length));
        const std::string message = parse_error(prefix);
        if (length >= data_end) {  // only the padding after the last tensor is gone
            EXPECT_EQ(message, "") << "length " << length;
            continue;
        }
        ASSERT_FALSE(message.empty()) << "truncated to " << length << " bytes, parsed";
        EXPECT_TRUE(contains(message, "truncated") || contains(message, "not a GGUF file") || contains(message, "exceeds") || contains(message, "cannot fit") ||
                    contains(message, "past the end"))
            << "length " << length << ": " << message;
    }
}

TEST_F(BrokenGgufTest, HugeCountsAndLengthsNameTheField) {
    const Kind kinds[] = {Kind::TensorCount, Kind::KvCount,  Kind::KeyLength, Kind::StringLength,
                          Kind::ArrayCount,  Kind::TensorNameLength, Kind::Dim, Kind::TensorOffset};
    const uint64_t huge[] = {~uint64_t{0}, uint64_t{1} << 63, uint64_t{1} << 40, uint64_t{1} << 32,
                             image_.size() * 8, ~uint64_t{0} - 31};
    for (const Kind kind : kinds)
        for (const Field& f : layout_.fields(kind))
            for (const uint64_t value : huge)
                expect_rejected(patched_field(image_, f, value), {f.owner},
                                f.owner + " at " + std::to_string(f.offset) + " = " + std::to_string(value));
}

TEST_F(BrokenGgufTest, OffByOneCountsNeverCrash) {
    for (const Field& f : layout_.fields()) {
        uint64_t original = 0;
        std::memcpy(&original, image_.data() + f.offset, f.size);
        for (const uint64_t value : {original + 1, original - 1, original + 8, original + 32}) (void)parse_error(patched_field(image_, f, value));
    }
}

TEST_F(BrokenGgufTest, BadValueTypeIds) {
    for (const Field& f : layout_.fields(Kind::ValueTypeId))
        for (const uint32_t id : {13u, 14u, 255u, 0x80000000u, 0xFFFFFFFFu})
            expect_rejected(patched_field(image_, f, id), {f.owner, "invalid value type", std::to_string(id)}, f.owner);
    for (const Field& f : layout_.fields(Kind::ArrayElementType))
        for (const uint32_t id : {13u, 0xFFFFFFFFu})
            expect_rejected(patched_field(image_, f, id), {f.owner, "invalid array element type"}, f.owner);
}

TEST_F(BrokenGgufTest, BadTensorTypeIds) {
    for (const Field& f : layout_.fields(Kind::TensorType))
        for (const uint32_t id : {4u, 5u, 1000u, 0xFFFFFFFFu})
            expect_rejected(patched_field(image_, f, id), {f.owner, "unknown tensor type id", std::to_string(id)}, f.owner);
    // A known type whose block does not divide the row: 8 F32 values are not a Q8_0 row.
    expect_rejected(patched_field(image_, layout_.field(Kind::TensorType, "tensor 't.a'"), 8),
                    {"tensor 't.a'", "not a multiple of the Q8_0 block size"}, "t.a as Q8_0");
}

TEST_F(BrokenGgufTest, BadDimensionCounts) {
    for (const Field& f : layout_.fields(Kind::DimCount))
        for (const uint32_t n : {0u, 5u, 0xFFFFFFFFu})
            expect_rejected(patched_field(image_, f, n), {f.owner, "dimensions (must be 1 to 4)"}, f.owner);
}

TEST_F(BrokenGgufTest, ZeroAndOverflowingDimensions) {
    for (const Field& f : layout_.fields(Kind::Dim))
        expect_rejected(patched_field(image_, f, 0), {f.owner, "a dimension is zero"}, f.owner);
    const Field& a0 = layout_.field(Kind::Dim, "tensor 't.a'", 0);
    const Field& a1 = layout_.field(Kind::Dim, "tensor 't.a'", 1);
    auto both = [&](uint64_t d0, uint64_t d1) { return patched_field(patched_field(image_, a0, d0), a1, d1); };
    expect_rejected(both(uint64_t{1} << 33, uint64_t{1} << 31), {"tensor 't.a'", "element count overflows"}, "2^64 elements");
    expect_rejected(both(uint64_t{1} << 62, 1), {"tensor 't.a'", "byte size overflows"}, "2^62 F32 values");
    expect_rejected(both(uint64_t{1} << 40, uint64_t{1} << 20), {"tensor 't.a'", "past the end"}, "2^60 elements");
    // 2^64 - 32 Q8_0 values fit in a u64, their 34-byte blocks do not.
    const Field& b0 = layout_.field(Kind::Dim, "tensor 't.b'", 0);
    const Field& b1 = layout_.field(Kind::Dim, "tensor 't.b'", 1);
    expect_rejected(patched_field(patched_field(image_, b0, ~uint64_t{0} - 31), b1, 1), {"tensor 't.b'", "byte size overflows"},
                    "2^59 - 1 Q8_0 blocks");
}

TEST_F(BrokenGgufTest, MisalignedOverlappingAndOutOfRangeOffsets) {
    const Field& b = layout_.field(Kind::TensorOffset, "tensor 't.b'");
    const Field& c = layout_.field(Kind::TensorOffset, "tensor 't.c'");
    uint64_t b_offset = 0, c_offset = 0;
    std::memcpy(&b_offset, image_.data() + b.offset, 8);
    std::memcpy(&c_offset, image_.data() + c.offset, 8);
    ASSERT_EQ(b_offset, 128u);
    ASSERT_EQ(c_offset, 224u);
    for (const uint64_t delta : {1u, 4u, 16u, 31u})
        expect_rejected(patched_field(image_, b, b_offset + delta), {"tensor 't.b'", "not a multiple of the alignment 32"}, "misaligned");
    expect_rejected(patched_field(image_, c, c_offset + 32), {"tensor 't.c'", "past the end"}, "t.c one slot later");
    expect_rejected(patched_field(image_, c, uint64_t{1} << 40), {"tensor 't.c'", "past the end"}, "t.c far away");
    expect_rejected(patched_field(image_, b, ~uint64_t{0} - 31), {"tensor 't.b'", "past the end"}, "offset near 2^64");
    expect_rejected(patched_field(image_, b, 0), {"overlaps", "'t.a'", "'t.b'"}, "t.b on top of t.a");
    expect_rejected(patched_field(image_, b, 96), {"overlaps", "'t.a'", "'t.b'"}, "t.b inside t.a");
    expect_rejected(patched_field(image_, c, b_offset + 32), {"overlaps", "'t.b'", "'t.c'"}, "t.c inside t.b");
}

TEST_F(BrokenGgufTest, DuplicateNames) {
    // Tensor names are all three bytes: make the second one's name the first's.
    const Field& b_name = layout_.field(Kind::TensorNameLength, "tensor info #1 name");
    auto image = image_;
    image[b_name.offset + 8 + 2] = std::byte{'a'};
    expect_rejected(image, {"duplicate tensor name 't.a'"}, "t.b renamed t.a");
    // "k.ratio" and "k.count" are both seven bytes long.
    const std::string key = "k.ratio";
    auto it = std::search(image_.begin(), image_.end(), reinterpret_cast<const std::byte*>(key.data()),
                          reinterpret_cast<const std::byte*>(key.data() + key.size()));
    ASSERT_NE(it, image_.end());
    image = image_;
    std::memcpy(image.data() + (it - image_.begin()), "k.count", 7);
    expect_rejected(image, {"duplicate metadata key 'k.count'"}, "k.ratio renamed k.count");
}

TEST_F(BrokenGgufTest, BadAlignments) {
    const Field& alignment = layout_.field(Kind::U32Value, "general.alignment");
    for (const uint32_t value : {0u, 3u, 48u, 0x80000001u, 0xFFFFFFFFu})
        expect_rejected(patched_field(image_, alignment, value), {"general.alignment", "not a power of two", std::to_string(value)},
                        "alignment " + std::to_string(value));
    // A valid power of two that puts the data section past the end of the file.
    auto huge_alignment = patched_field(image_, alignment, 0x80000000u);
    huge_alignment = patched_field(huge_alignment, layout_.field(Kind::TensorOffset, "tensor 't.b'"), uint64_t{1} << 31);
    huge_alignment = patched_field(huge_alignment, layout_.field(Kind::TensorOffset, "tensor 't.c'"), uint64_t{1} << 32);
    expect_rejected(huge_alignment, {"truncated", "tensor data should start"}, "alignment 2^31");
    // general.alignment must be a uint32 (as in ggml and gguf-py): int32 is refused.
    const Field& type = layout_.field(Kind::ValueTypeId, "key 'general.alignment'");
    expect_rejected(patched_field(image_, type, static_cast<uint32_t>(ValueType::INT32)), {"general.alignment", "must be uint32"},
                    "int32 alignment");
}

TEST_F(BrokenGgufTest, BoolBytesOtherThanZeroOrOne) {
    for (const Field& f : layout_.fields(Kind::BoolByte))
        for (const uint8_t byte : {uint8_t{2}, uint8_t{0x80}, uint8_t{0xFF}})
            expect_rejected(patched_field(image_, f, byte), {f.owner, "invalid bool byte", std::to_string(byte)}, f.owner);
}

// A header with one key whose value is built by `body`.
std::vector<std::byte> one_key_image(const std::string& key, uint32_t type, const std::vector<std::byte>& body) {
    std::vector<std::byte> image;
    auto put = [&](const auto& v) {
        const auto* p = reinterpret_cast<const std::byte*>(&v);
        image.insert(image.end(), p, p + sizeof(v));
    };
    put(uint32_t{0x46554747});
    put(uint32_t{3});
    put(uint64_t{0});
    put(uint64_t{1});
    put(uint64_t{key.size()});
    for (char ch : key) image.push_back(static_cast<std::byte>(ch));
    put(type);
    image.insert(image.end(), body.begin(), body.end());
    return image;
}

std::vector<std::byte> array_header(uint32_t element_type, uint64_t count) {
    std::vector<std::byte> out(12);
    std::memcpy(out.data(), &element_type, 4);
    std::memcpy(out.data() + 4, &count, 8);
    return out;
}

TEST_F(BrokenGgufTest, NestingDepthBomb) {
    // 100000 arrays, each holding one array: unbounded recursion without a depth limit.
    std::vector<std::byte> body;
    for (int i = 0; i < 100000; ++i) {
        const auto level = array_header(static_cast<uint32_t>(ValueType::ARRAY), 1);
        body.insert(body.end(), level.begin(), level.end());
    }
    expect_rejected(one_key_image("bomb", static_cast<uint32_t>(ValueType::ARRAY), body), {"key 'bomb'", "nested deeper"}, "depth bomb");

    // Width instead of depth: an array claiming 2^60 arrays, and one claiming as many as could fit
    // if each were empty but none present.
    expect_rejected(one_key_image("wide", static_cast<uint32_t>(ValueType::ARRAY), array_header(9, uint64_t{1} << 60)),
                    {"key 'wide'", "cannot fit"}, "wide bomb");
    std::vector<std::byte> lying = array_header(static_cast<uint32_t>(ValueType::ARRAY), 4000);
    lying.resize(lying.size() + 48000, std::byte{0});  // 4000 x 12 zero bytes: 4000 empty u8 arrays
    const std::string ok = parse_error(one_key_image("wide", static_cast<uint32_t>(ValueType::ARRAY), lying));
    EXPECT_EQ(ok, "");  // 4000 empty uint8 arrays: valid
    lying.resize(lying.size() - 1);
    expect_rejected(one_key_image("wide", static_cast<uint32_t>(ValueType::ARRAY), lying), {"key 'wide'"}, "one byte short");
}

// ---------------------------------------------------------------------------------------------
// The classes of peers' GGUF CVEs, each against this reader. Several overlap the generic tests
// above; these pin the exact arithmetic each exploit relied on, so a rewrite of a check that
// still passes the generic cases (a sum instead of a comparison, a count multiplied before it
// is compared) fails here.

// llama.cpp CVE-2025-53630 and its bypass CVE-2026-27940: offset + size (or a size padded to the
// alignment, summed over tensors) wrapped past 2^64 to a small number that passed the bounds
// check. Every offset here is aligned, so only the range check stands between it and a span
// outside the image.
TEST_F(BrokenGgufTest, OffsetPlusSizeThatWrapsPast2To64IsPastTheEnd) {
    const Field& a = layout_.field(Kind::TensorOffset, "tensor 't.a'");  // 128 bytes of F32
    const Field& b = layout_.field(Kind::TensorOffset, "tensor 't.b'");  // 68 bytes of Q8_0
    constexpr uint64_t kWrap = 0;  // 2^64 in uint64 arithmetic
    for (const uint64_t offset : {kWrap - 128, kWrap - 96, kWrap - 32})  // sums 0, 32, 96
        expect_rejected(patched_field(image_, a, offset), {"tensor 't.a'", "past the end"}, "t.a at 2^64 - " + std::to_string(kWrap - offset));
    expect_rejected(patched_field(image_, b, kWrap - 64), {"tensor 't.b'", "past the end"}, "t.b at 2^64 - 64 (sum 4)");
    // A size just under 2^64 that padding to the alignment would wrap: 2^62 - 1 F32 values are
    // 2^64 - 4 bytes, which a multiple of 32 above is 0.
    const Field& a0 = layout_.field(Kind::Dim, "tensor 't.a'", 0);
    const Field& a1 = layout_.field(Kind::Dim, "tensor 't.a'", 1);
    expect_rejected(patched_field(patched_field(image_, a0, (uint64_t{1} << 62) - 1), a1, 1), {"tensor 't.a'", "past the end"},
                    "t.a of 2^64 - 4 bytes");
    // Two tensors of 2^63 bytes each: their sum is 0.
    const Field& b0 = layout_.field(Kind::Dim, "tensor 't.b'", 0);
    const Field& b1 = layout_.field(Kind::Dim, "tensor 't.b'", 1);
    auto halves = patched_field(patched_field(image_, a0, uint64_t{1} << 61), a1, 1);
    halves = patched_field(patched_field(halves, b0, 32), b1, (uint64_t{1} << 63) / 34 / 32 * 32);
    expect_rejected(halves, {"past the end"}, "two tensors near 2^63 bytes");
}

// Ollama CVE-2026-7482 and llama.cpp CVE-2026-33298: dimensions that lie about the data, so that
// the logical tensor is far larger than the bytes behind it. Here the byte size always follows
// from the dimensions, and every byte must lie in the data section and in no other tensor.
TEST_F(BrokenGgufTest, DimensionsThatLieAboutTheByteSize) {
    const Field& a0 = layout_.field(Kind::Dim, "tensor 't.a'", 0);
    const Field& a1 = layout_.field(Kind::Dim, "tensor 't.a'", 1);
    const Field& c0 = layout_.field(Kind::Dim, "tensor 't.c'", 0);
    auto dims = [&](uint64_t d0, uint64_t d1) { return patched_field(patched_field(image_, a0, d0), a1, d1); };
    // Products that wrap: 2^62 x 4 is 2^64 (0 elements), 2^32 x 2^32 likewise, 3 x 6148914691236517206 is 2^64 + 2.
    expect_rejected(dims(uint64_t{1} << 62, 4), {"tensor 't.a'", "element count overflows"}, "2^62 x 4");
    expect_rejected(dims(uint64_t{1} << 32, uint64_t{1} << 32), {"tensor 't.a'", "element count overflows"}, "2^32 x 2^32");
    expect_rejected(dims(3, 6148914691236517206u), {"tensor 't.a'", "element count overflows"}, "3 x (2^64 + 2) / 3");
    // Element counts that fit, byte sizes that do not: 2^63 F32 values, 2^63 F16 values.
    expect_rejected(dims(uint64_t{1} << 63, 1), {"tensor 't.a'", "byte size overflows"}, "2^63 F32 values");
    expect_rejected(patched_field(image_, c0, uint64_t{1} << 63), {"tensor 't.c'", "byte size overflows"}, "2^63 F16 values");
    // A dimension above 2^63, negative as ggml's int64 ne: 2^63 + 1 F16 values need 2^64 + 2 bytes.
    expect_rejected(patched_field(image_, c0, (uint64_t{1} << 63) + 1), {"tensor 't.c'", "byte size overflows"}, "2^63 + 1 F16 values");
    // Small lies: one row more runs into the next tensor; the last tensor grown past the file.
    expect_rejected(dims(8, 5), {"overlaps", "'t.a'", "'t.b'"}, "t.a one row longer");
    expect_rejected(patched_field(image_, c0, 32), {"tensor 't.c'", "past the end"}, "t.c of 32 values");
}

// MXFP4 (gpt-oss's expert matrices): 17-byte blocks, the byte size following from the dimensions
// as for any type. t.b's 68 bytes (Q8_0 [32, 2]) typed MXFP4 [64, 2] are exactly its 4 blocks; a
// row that is no whole number of 32-weight blocks, a row more than the bytes before the next
// tensor, and the last tensor's blocks past the file are refused, naming the tensor.
TEST_F(BrokenGgufTest, MXFP4TensorsAreSizedByTheirBlocks) {
    constexpr uint32_t mxfp4 = 39;
    const Field& b_type = layout_.field(Kind::TensorType, "tensor 't.b'");
    const Field& b0 = layout_.field(Kind::Dim, "tensor 't.b'", 0);
    const Field& b1 = layout_.field(Kind::Dim, "tensor 't.b'", 1);
    const std::vector<std::byte> as_mxfp4 = patched_field(patched_field(image_, b_type, mxfp4), b0, 64);
    ASSERT_EQ(parse_error(as_mxfp4), "");
    const File file = File::parse(as_mxfp4);
    const TensorInfo& b = file.tensors()[1];
    EXPECT_EQ(b.type, GGMLType::MXFP4);
    EXPECT_EQ(b.n_bytes, 68u);
    expect_rejected(patched_field(as_mxfp4, b0, 48), {"tensor 't.b'", "not a multiple of the MXFP4 block size 32"}, "48 MXFP4 values a row");
    expect_rejected(patched_field(as_mxfp4, b1, 3), {"overlaps", "'t.b'", "'t.c'"}, "t.b one MXFP4 row longer");
    const Field& c_type = layout_.field(Kind::TensorType, "tensor 't.c'");
    const Field& c0 = layout_.field(Kind::Dim, "tensor 't.c'", 0);
    expect_rejected(patched_field(patched_field(image_, c_type, mxfp4), c0, 128), {"tensor 't.c'", "past the end"},
                    "t.c as 4 MXFP4 blocks");
}

// A header with the given metadata (each a key and its type and body), no tensors.
std::vector<std::byte> metadata_image(const std::vector<std::tuple<std::string, ValueType, std::vector<std::byte>>>& kvs) {
    std::vector<std::byte> image;
    auto put = [&](const auto& v) {
        const auto* p = reinterpret_cast<const std::byte*>(&v);
        image.insert(image.end(), p, p + sizeof(v));
    };
    put(uint32_t{0x46554747});
    put(uint32_t{3});
    put(uint64_t{0});
    put(uint64_t{kvs.size()});
    for (const auto& [key, type, body] : kvs) {
        put(uint64_t{key.size()});
        for (char ch : key) image.push_back(static_cast<std::byte>(ch));
        put(static_cast<uint32_t>(type));
        image.insert(image.end(), body.begin(), body.end());
    }
    return image;
}

template <class T> std::vector<std::byte> bytes_of(T value) {
    std::vector<std::byte> out(sizeof(T));
    std::memcpy(out.data(), &value, sizeof(T));
    return out;
}

// ggml before #19856: an array's element count times the element size, computed before the
// check, wrapped to a few bytes; the reader then allocated that and walked `count` elements.
TEST_F(BrokenGgufTest, ArrayLengthsWhoseByteSizeWrapsAreRefused) {
    const std::pair<ValueType, uint64_t> types[] = {{ValueType::UINT8, 1}, {ValueType::INT16, 2}, {ValueType::FLOAT32, 4},
                                                    {ValueType::FLOAT64, 8}, {ValueType::STRING, 8}, {ValueType::ARRAY, 12}};
    for (const auto& [type, size] : types) {
        // count x size is 0 modulo 2^64, and count + 1 makes it `size` (12-byte arrays: 2^62 x 12 is
        // 3 x 2^64). One-byte elements cannot wrap: their two largest counts instead.
        const uint64_t wrapping = size == 12 ? uint64_t{1} << 62 : size == 1 ? ~uint64_t{0} - 1 : (~uint64_t{0} / size) + 1;
        for (const uint64_t count : {wrapping, wrapping + 1, ~uint64_t{0}, ~uint64_t{0} - 1, uint64_t{1} << 63}) {
            auto body = array_header(static_cast<uint32_t>(type), count);
            body.resize(body.size() + 64, std::byte{0});  // a few elements' worth, far fewer than claimed
            const std::string what = std::string(value_type_name(type)) + " array of " + std::to_string(count);
            expect_rejected(metadata_image({{"k.arr", ValueType::ARRAY, body}}), {"key 'k.arr'", "array length", "cannot fit"}, what);
        }
    }
}

// String lengths that run one byte past the file, or whose sum with the read position wraps to
// 0 (the position after the length is 32 for the key, 47 for the value, 59 in the array): the
// key, a string value, a string inside an array, a tensor's name. Nine bytes follow each length.
TEST_F(BrokenGgufTest, StringLengthsPastTheFileAreRefused) {
    constexpr uint64_t kWrap = 0;
    for (const uint64_t length : {uint64_t{10}, kWrap - 32, kWrap - 47, kWrap - 59, ~uint64_t{0}}) {
        const std::string n = std::to_string(length);
        // The key "abcd", its type and a one-byte value.
        const auto key = metadata_image({{"abcd", ValueType::UINT8, {std::byte{1}}}});
        expect_rejected(patched(key, 24, length), {"metadata key #0", "string length " + n, "exceeds the 9 bytes left"}, "key length " + n);

        auto value = metadata_image({{"k.s", ValueType::STRING, bytes_of(length)}});
        value.insert(value.end(), 9, std::byte{'x'});
        expect_rejected(value, {"key 'k.s'", "string length " + n, "exceeds the 9 bytes left"}, "string value of length " + n);

        auto in_array = array_header(static_cast<uint32_t>(ValueType::STRING), 1);
        const auto prefix = bytes_of(length);
        in_array.insert(in_array.end(), prefix.begin(), prefix.end());
        in_array.insert(in_array.end(), 9, std::byte{'x'});
        expect_rejected(metadata_image({{"k.a", ValueType::ARRAY, in_array}}), {"key 'k.a'", "string length " + n, "exceeds the 9 bytes left"},
                        "string of length " + n + " in an array");
    }
    // A tensor name one byte longer than the rest of the file.
    const Field& name = layout_.field(Kind::TensorNameLength, "tensor info #2 name");
    expect_rejected(patched_field(image_, name, image_.size() - name.offset - 8 + 1), {"tensor info #2 name", "exceeds"}, "t.c's name");
}

// gguf-py before #19856 and ggml's first readers kept the last of two equal keys: a second
// general.alignment could change where the data lies after the first had been checked.
TEST_F(BrokenGgufTest, ASecondAlignmentKeyIsADuplicate) {
    const auto image = metadata_image({{"general.alignment", ValueType::UINT32, bytes_of(uint32_t{32})},
                                       {"general.alignment", ValueType::UINT32, bytes_of(uint32_t{1})}});
    expect_rejected(image, {"duplicate metadata key 'general.alignment'"}, "two alignments");
}

// A reader that asks for one element type and gets another must get an error naming the key,
// whatever the array holds, including nothing: an empty array of strings is not an empty array
// of floats. (llama.cpp read tokenizer.ggml.scores as float* whatever its declared type.)
TEST(GgufArrayTypes, EachTypedGetterAcceptsOnlyItsElementTypes) {
    Writer writer;
    writer.set_string_array("strings", {"a", "b"});
    writer.set_string_array("no_strings", {});
    writer.set_f32_array("f32s", {0.5f, 1.5f});
    writer.set_f32_array("no_f32s", {});
    writer.set("f64s", Value{Array{ValueType::FLOAT64, {Value{0.25}}}});
    writer.set_i32_array("i32s", {1, -2});
    writer.set_i32_array("no_i32s", {});
    writer.set("u8s", Value{Array{ValueType::UINT8, {Value{uint8_t{7}}}}});
    writer.set("bools", Value{Array{ValueType::BOOL, {Value{true}}}});
    writer.set("nested", Value{Array{ValueType::ARRAY, {Value{Array{ValueType::FLOAT32, {Value{1.0f}}}}}}});
    writer.set("no_nested", Value{Array{ValueType::ARRAY, {}}});
    writer.set_f32("scalar", 1.0f);
    const auto image = writer.to_bytes();
    const File file = File::parse(image, kOrigin);

    enum Getter { Strings, Floats, Ints };
    const std::pair<const char*, std::vector<Getter>> keys[] = {
        {"strings", {Strings}}, {"no_strings", {Strings}}, {"f32s", {Floats}}, {"no_f32s", {Floats}}, {"f64s", {Floats}},
        {"i32s", {Ints}},       {"no_i32s", {Ints}},       {"u8s", {Ints}},    {"bools", {}},          {"nested", {}},
        {"no_nested", {}},      {"scalar", {}},
    };
    const char* names[] = {"strings", "floats", "integers"};
    for (const auto& [key, accepted] : keys) {
        for (const Getter getter : {Strings, Floats, Ints}) {
            const bool ok = std::find(accepted.begin(), accepted.end(), getter) != accepted.end();
            std::string message;
            try {
                if (getter == Strings) (void)file.get_string_array(key);
                if (getter == Floats) (void)file.get_float_array(key);
                if (getter == Ints) (void)file.get_int_array(key);
            } catch (const FormatError& e) {
                message = e.what();
            }
            const std::string what = std::string(key) + " as " + names[getter];
            if (ok) {
                EXPECT_EQ(message, "") << what;
                continue;
            }
            ASSERT_FALSE(message.empty()) << what << ": no error";
            EXPECT_TRUE(contains(message, kOrigin)) << what << ": " << message;
            EXPECT_TRUE(contains(message, "'" + std::string(key) + "'")) << what << ": " << message;
            // A scalar is not an array at all; an array of another type says what was wanted.
            EXPECT_TRUE(contains(message, std::string(key) == "scalar" ? "expected array" : names[getter])) << what << ": " << message;
        }
    }
    EXPECT_EQ(file.get_float_array("f64s"), std::vector<float>{0.25f});
    EXPECT_EQ(file.get_int_array("u8s"), std::vector<int64_t>{7});
}

TEST_F(BrokenGgufTest, NotGgufAtAll) {
    expect_rejected({}, {"not a GGUF file"}, "empty");
    auto image = image_;
    image[0] = std::byte{'g'};
    expect_rejected(image, {"not a GGUF file"}, "bad magic");
}

// Random bytes at random places, and random field values: whatever comes out, it is a FormatError
// or a parsed File whose spans lie inside the image (parse_error touches them all).
TEST_F(BrokenGgufTest, RandomMutationsOnlyEverFailCleanly) {
    std::mt19937_64 rng(0x6767'7566);
    const uint64_t interesting[] = {0, 1, 2, 3, 4, 5, 8, 12, 13, 31, 32, 33, 255, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF,
                                    uint64_t{1} << 32, uint64_t{1} << 40, uint64_t{1} << 63, ~uint64_t{0}};
    const auto& fields = layout_.fields();
    size_t parsed = 0, rejected = 0;
    for (int iteration = 0; iteration < 4000; ++iteration) {
        auto image = image_;
        const int n_mutations = 1 + static_cast<int>(rng() % 4);
        for (int m = 0; m < n_mutations; ++m) {
            if (rng() % 2 == 0) {
                image[rng() % image.size()] = static_cast<std::byte>(rng());
            } else {
                const Field& f = fields[rng() % fields.size()];
                image = patched_field(image, f, interesting[rng() % std::size(interesting)]);
            }
        }
        if (rng() % 8 == 0) image.resize(rng() % image.size());
        try {
            const std::string message = parse_error(image);
            (message.empty() ? parsed : rejected) += 1;
        } catch (const std::exception& e) {
            FAIL() << "iteration " << iteration << ": not a FormatError: " << e.what();
        }
    }
    std::cout << "[ mutation ] " << parsed << " parsed, " << rejected << " rejected\n";
    EXPECT_GT(rejected, 1000u);
}

}  // namespace
}  // namespace twinfer::gguf
