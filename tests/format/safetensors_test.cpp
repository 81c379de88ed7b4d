// safetensors reader: values of each float dtype, and hostile headers refused with the tensor named.
#include "format/safetensors.hpp"

#include <gtest/gtest.h>

#include <cstring>
#include <nlohmann/json.hpp>

#include "common/test_data.hpp"

namespace twinfer::safetensors {
namespace {

template <class T>
void append(std::vector<std::byte>& out, const std::vector<T>& values) {
    const auto* p = reinterpret_cast<const std::byte*>(values.data());
    out.insert(out.end(), p, p + values.size() * sizeof(T));
}

// u64 header length | header | data.
std::vector<std::byte> file_image(const std::string& header, const std::vector<std::byte>& data) {
    std::vector<std::byte> out(8 + header.size() + data.size());
    const uint64_t length = header.size();
    std::memcpy(out.data(), &length, 8);
    std::memcpy(out.data() + 8, header.data(), header.size());
    std::copy(data.begin(), data.end(), out.begin() + 8 + static_cast<std::ptrdiff_t>(header.size()));
    return out;
}

std::string parse_error(const std::vector<std::byte>& image) {
    try {
        File::parse(image, "test.safetensors");
    } catch (const FormatError& e) {
        return e.what();
    }
    return "(no error)";
}

// One F32 tensor "w" of shape [2] with the given data_offsets, over 8 bytes of data.
std::vector<std::byte> one_tensor(const std::string& offsets, const std::string& shape = "[2]", const std::string& dtype = "F32") {
    return file_image(R"({"w": {"dtype": ")" + dtype + R"(", "shape": )" + shape + R"(, "data_offsets": )" + offsets + "}}",
                      std::vector<std::byte>(8));
}

TEST(Safetensors, ReadsEachFloatDtype) {
    std::vector<std::byte> data;
    append(data, std::vector<double>{0.1, -2.5});                  // F64 [2]      bytes 0..16
    append(data, std::vector<float>{1.25f, -3.0f, 0.1f});          // F32 [3]      bytes 16..28
    append(data, std::vector<uint16_t>{0x3E00, 0xC000});           // F16 1.5, -2  bytes 28..32
    append(data, std::vector<uint16_t>{0x3FC0, 0xC080});           // BF16 1.5, -4 bytes 32..36
    append(data, std::vector<int64_t>{7});                         // I64 [1]      bytes 36..44
    const std::string header = R"({
        "__metadata__": {"format": "pt"},
        "a64": {"dtype": "F64", "shape": [2], "data_offsets": [0, 16]},
        "b32": {"dtype": "F32", "shape": [1, 3], "data_offsets": [16, 28]},
        "c16": {"dtype": "F16", "shape": [2], "data_offsets": [28, 32]},
        "dbf": {"dtype": "BF16", "shape": [2, 1], "data_offsets": [32, 36]},
        "int": {"dtype": "I64", "shape": [], "data_offsets": [36, 44]}})";
    const auto image = file_image(header, data);
    const File file = File::parse(image);

    EXPECT_EQ(file.metadata().at("format"), "pt");
    ASSERT_EQ(file.tensors().size(), 5u);
    EXPECT_EQ(file.tensor("b32").shape, (std::vector<uint64_t>{1, 3}));
    EXPECT_EQ(file.to_double(file.tensor("a64")), (std::vector<double>{0.1, -2.5}));
    EXPECT_EQ(file.to_double(file.tensor("b32")), (std::vector<double>{1.25, -3.0, double{0.1f}}));
    EXPECT_EQ(file.to_double(file.tensor("c16")), (std::vector<double>{1.5, -2.0}));
    EXPECT_EQ(file.to_double(file.tensor("dbf")), (std::vector<double>{1.5, -4.0}));
    EXPECT_EQ(file.tensor("int").n_elements, 1u);   // a scalar
    try {
        file.to_double(file.tensor("int"));
        ADD_FAILURE() << "I64 read as floating point";
    } catch (const FormatError& e) {
        EXPECT_NE(std::string(e.what()).find("tensor 'int': dtype I64"), std::string::npos) << e.what();
    }
    EXPECT_EQ(file.find_tensor("missing"), nullptr);
    EXPECT_THROW(file.tensor("missing"), FormatError);
}

TEST(Safetensors, OpensGoldenCheckpoint) {
    const auto path = test::repo_root() / "tests/models/golden/gpt2/model.safetensors";
    TWINFER_REQUIRE_FILE(path);
    const File file = File::open(path);
    const TensorInfo& c_attn = file.tensor("transformer.h.0.attn.c_attn.weight");
    EXPECT_EQ(c_attn.dtype, "F64");
    EXPECT_EQ(c_attn.shape, (std::vector<uint64_t>{32, 96}));   // Conv1D: [in, out]
    EXPECT_EQ(file.to_double(c_attn).size(), 32u * 96u);
}

TEST(Safetensors, HostileHeaders) {
    auto expect_error = [](const std::vector<std::byte>& image, const std::string& needle) {
        const std::string error = parse_error(image);
        EXPECT_NE(error.find(needle), std::string::npos) << "wanted '" << needle << "' in: " << error;
    };
    expect_error(std::vector<std::byte>(5), "too short");
    {
        auto image = file_image("{}", {});
        const uint64_t huge = 1000;
        std::memcpy(image.data(), &huge, 8);
        expect_error(image, "header length 1000 exceeds the 2 bytes");
    }
    {
        auto image = file_image("{}", {});
        const uint64_t hostile = ~uint64_t{0};
        std::memcpy(image.data(), &hostile, 8);
        expect_error(image, "exceeds the format's limit");
    }
    expect_error(file_image("{not json", {}), "not valid JSON");
    expect_error(file_image("[1, 2]", {}), "not a JSON object");
    expect_error(one_tensor("[0, 16]"), "tensor 'w': data_offsets [0, 16] fall outside the 8 bytes");
    expect_error(one_tensor("[8, 4]"), "tensor 'w': data_offsets [8, 4] fall outside");
    expect_error(one_tensor("[0, 4]"), "tensor 'w': data_offsets span 4 bytes but F32 [2] needs 8");
    expect_error(one_tensor("[0, -8]"), "tensor 'w': \"data_offsets\" must be two non-negative integers");
    expect_error(one_tensor("[0, 8]", "[-2]"), "tensor 'w': shape [-2] holds a value");
    expect_error(one_tensor("[0, 8]", "[4294967296, 4294967296, 4294967296]"), "tensor 'w': element count");
    expect_error(one_tensor("[0, 8]", "[2]", "F128"), "tensor 'w': unknown dtype 'F128'");
    expect_error(file_image(R"({"w": {"shape": [2], "data_offsets": [0, 8]}})", std::vector<std::byte>(8)), "tensor 'w': missing or non-string \"dtype\"");
    expect_error(file_image(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})",
                            std::vector<std::byte>(8)),
                 "tensor 'b' overlaps tensor 'a'");
    expect_error(file_image(R"({"__metadata__": {"n": 1}})", {}), "__metadata__ value of 'n' is not a string");
}

}  // namespace
}  // namespace twinfer::safetensors
