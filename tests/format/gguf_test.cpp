// GGUF reading and writing against gguf-py (the `gguf` package), both ways: tools/gguf_oracle.py
// writes a file with gguf.GGUFWriter that twinfer must read value for value and byte for byte, and
// reads files twinfer's Writer made (and the real test files) with gguf.GGUFReader, printing JSON
// that must match what twinfer reads.
#include "format/gguf.hpp"

#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/wait.h>

#include <atomic>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <system_error>
#include <vector>

#include "common/test_data.hpp"

namespace twinfer::gguf {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// ---------------------------------------------------------------------------------------------
// Running the oracle

std::string read_text(const fs::path& path) {
    std::ifstream file(path, std::ios::binary);
    return {std::istreambuf_iterator<char>(file), std::istreambuf_iterator<char>()};
}

std::vector<std::byte> read_bytes(const fs::path& path) {
    const std::string text = read_text(path);
    std::vector<std::byte> bytes(text.size());
    std::memcpy(bytes.data(), text.data(), text.size());
    return bytes;
}

// A fresh path in the scratch folder, so tests never share files.
fs::path scratch_path(const std::string& name) {
    static std::atomic<int> counter{0};
    return test::scratch_dir() / ("gguf_" + std::to_string(counter++) + "_" + name);
}

// Runs `command` through the shell; throws with its stderr unless it exits 0. Returns stdout.
std::string run_or_throw(const std::string& command) {
    const fs::path out = scratch_path("stdout.txt"), err = scratch_path("stderr.txt");
    const std::string full = command + " > \"" + out.string() + "\" 2> \"" + err.string() + "\"";
    const int status = std::system(full.c_str());
    if (status == -1 || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
        throw std::runtime_error("failed (status " + std::to_string(status) + "): " + command + "\n" + read_text(err));
    return read_text(out);
}

// Empty when python3 with gguf-py is there; otherwise why not. Missing it is a test failure, not
// a skip: scripts/setup.sh installs it, and without it nothing here is checked against gguf-py.
const std::string& python_problem() {
    static const std::string problem =
        std::system("python3 -c \"import gguf, numpy\" > /dev/null 2>&1") == 0
            ? std::string()
            : std::string("python3 with the gguf (gguf-py) and numpy modules is required for the GGUF "
                          "oracle tests (run scripts/setup.sh)");
    return problem;
}
#define REQUIRE_GGUF_PY() ASSERT_TRUE(python_problem().empty()) << python_problem()

std::string oracle_command(const std::string& verb, const fs::path& path) {
    return "python3 \"" + (test::repo_root() / "tools" / "gguf_oracle.py").string() + "\" " + verb + " \"" +
           path.string() + "\"";
}

json oracle_dump(const fs::path& path) { return json::parse(run_or_throw(oracle_command("dump", path))); }

// ---------------------------------------------------------------------------------------------
// Comparing with the oracle's JSON (its encoding is described in tools/gguf_oracle.py)

uint64_t checksum64(std::span<const std::byte> data) {
    uint64_t total = 0;
    const size_t n_words = (data.size() + 7) / 8;
    for (size_t i = 0; i < n_words; ++i) {
        uint64_t word = 0;
        std::memcpy(&word, data.data() + 8 * i, std::min<size_t>(8, data.size() - 8 * i));
        total += ((word ^ (word >> 31)) * 0x9E3779B97F4A7C15ull) * (2 * i + 1);
    }
    return total ^ data.size();
}

json string_json(const std::string& s) {
    try {
        (void)json(s).dump();  // throws on invalid UTF-8, where the oracle falls back to hex
        return s;
    } catch (const json::type_error&) {
        std::string hex;
        for (unsigned char c : s) {
            static constexpr char kDigits[] = "0123456789abcdef";
            hex += kDigits[c >> 4];
            hex += kDigits[c & 15];
        }
        return json{{"hex", hex}};
    }
}

json to_oracle_json(const Value& value) {
    return std::visit(
        [](const auto& x) -> json {
            using T = std::decay_t<decltype(x)>;
            if constexpr (std::is_same_v<T, float>) return std::bit_cast<uint32_t>(x);
            else if constexpr (std::is_same_v<T, double>) return std::bit_cast<uint64_t>(x);
            else if constexpr (std::is_same_v<T, std::string>) return string_json(x);
            else if constexpr (std::is_same_v<T, Array>) {
                json items = json::array();
                for (size_t i = 0; i < x.size(); ++i) items.push_back(to_oracle_json(x.at(i)));
                return json{{"element_type", std::string(value_type_name(x.element_type()))}, {"items", items}};
            } else {
                return x;  // integers and bool
            }
        },
        value.v);
}

void expect_metadata_matches(const std::vector<std::pair<std::string, Value>>& kv, const json& dump) {
    const json& metadata = dump.at("metadata");
    ASSERT_EQ(kv.size(), metadata.size());
    for (size_t i = 0; i < kv.size(); ++i) {
        const auto& [key, value] = kv[i];
        EXPECT_EQ(key, metadata[i].at("key").get<std::string>()) << "metadata #" << i;
        EXPECT_EQ(value_type_name(value.type()), metadata[i].at("type").get<std::string>()) << key;
        EXPECT_TRUE(to_oracle_json(value) == metadata[i].at("value")) << "value of key " << key;
    }
}

void expect_tensors_match(const File& file, const json& dump) {
    const json& tensors = dump.at("tensors");
    ASSERT_EQ(file.tensors().size(), tensors.size());
    for (size_t i = 0; i < tensors.size(); ++i) {
        const TensorInfo& t = file.tensors()[i];
        const json& d = tensors[i];
        EXPECT_EQ(t.name, d.at("name").get<std::string>());
        EXPECT_EQ(static_cast<uint32_t>(t.type), d.at("type").get<uint32_t>()) << t.name;
        EXPECT_EQ(t.dims, d.at("dims").get<std::vector<uint64_t>>()) << t.name;
        EXPECT_EQ(t.offset, d.at("offset").get<uint64_t>()) << t.name;
        EXPECT_EQ(t.n_elements, d.at("n_elements").get<uint64_t>()) << t.name;
        EXPECT_EQ(t.n_bytes, d.at("n_bytes").get<uint64_t>()) << t.name;
        EXPECT_EQ(t.data.size(), t.n_bytes) << t.name;
        EXPECT_EQ(checksum64(t.data), d.at("checksum").get<uint64_t>()) << t.name;
    }
}

// Everything the oracle reads must be what twinfer reads.
void expect_file_matches(const File& file, const json& dump) {
    EXPECT_EQ(file.version(), dump.at("version").get<uint32_t>());
    EXPECT_EQ(file.alignment(), dump.at("alignment").get<uint64_t>());
    EXPECT_EQ(file.data_offset(), dump.at("data_offset").get<uint64_t>());
    expect_metadata_matches(file.metadata(), dump);
    expect_tensors_match(file, dump);
}

template <class T> T get(const File& file, std::string_view key) {
    const Value* v = file.find(key);
    if (!v) throw std::runtime_error("missing key " + std::string(key));
    return std::get<T>(v->v);
}

// ---------------------------------------------------------------------------------------------
// gguf-py writes, twinfer reads

struct OracleFile {
    fs::path path;
    std::string error;
};

const OracleFile& oracle_file() {
    static const OracleFile file = [] {
        OracleFile result{scratch_path("oracle.gguf"), {}};
        if (!python_problem().empty()) return result;
        try {
            run_or_throw(oracle_command("write", result.path));
        } catch (const std::exception& e) {
            result.error = e.what();
        }
        return result;
    }();
    return file;
}

#define REQUIRE_ORACLE_FILE()                                                  \
    REQUIRE_GGUF_PY();                                                         \
    ASSERT_TRUE(oracle_file().error.empty()) << oracle_file().error

TEST(GgufOracleTest, ReadsEveryValueTypeWrittenByGgufPy) {
    REQUIRE_ORACLE_FILE();
    const File file = File::open(oracle_file().path);
    EXPECT_EQ(file.version(), 3u);
    EXPECT_EQ(file.architecture(), "oracle");
    EXPECT_EQ(get<uint32_t>(file, "general.alignment"), 64u);
    EXPECT_EQ(get<uint8_t>(file, "test.u8"), 255);
    EXPECT_EQ(get<int8_t>(file, "test.i8"), -128);
    EXPECT_EQ(get<uint16_t>(file, "test.u16"), 65535);
    EXPECT_EQ(get<int16_t>(file, "test.i16"), -32768);
    EXPECT_EQ(get<uint32_t>(file, "test.u32"), 4294967295u);
    EXPECT_EQ(get<int32_t>(file, "test.i32"), std::numeric_limits<int32_t>::min());
    EXPECT_EQ(get<float>(file, "test.f32"), 3.14159274101257324f);
    EXPECT_EQ(get<bool>(file, "test.bool_true"), true);
    EXPECT_EQ(get<bool>(file, "test.bool_false"), false);
    EXPECT_EQ(get<std::string>(file, "test.string"), "hello");
    EXPECT_EQ(get<std::string>(file, "test.unicode"), "h\u00e9llo w\u00f6rld \u2713 \u65e5\u672c\u8a9e \U0001F999");
    EXPECT_EQ(get<std::string>(file, "test.empty_string"), "");
    EXPECT_EQ(get<uint64_t>(file, "test.u64"), std::numeric_limits<uint64_t>::max());
    EXPECT_EQ(get<int64_t>(file, "test.i64"), std::numeric_limits<int64_t>::min());
    EXPECT_EQ(get<double>(file, "test.f64"), 2.718281828459045);

    EXPECT_EQ(file.get_int_array("test.arr_i32"), (std::vector<int64_t>{1, -2, 3, 2147483647}));
    EXPECT_EQ(file.get_array("test.arr_i32").element_type(), ValueType::INT32);
    EXPECT_EQ(file.get_array("test.arr_u8").element_type(), ValueType::UINT8);
    EXPECT_EQ(file.get_int_array("test.arr_u8"), (std::vector<int64_t>{0, 1, 254, 255}));
    EXPECT_EQ(file.get_int_array("test.arr_i64"),
              (std::vector<int64_t>{std::numeric_limits<int64_t>::min(), 0, std::numeric_limits<int64_t>::max()}));
    EXPECT_EQ(file.get_int_array("test.arr_i16"), (std::vector<int64_t>{-32768, 32767}));
    const Array& u64s = file.get_array("test.arr_u64");
    ASSERT_EQ(u64s.element_type(), ValueType::UINT64);
    ASSERT_EQ(u64s.size(), 2u);
    EXPECT_EQ(std::get<uint64_t>(u64s.at(1).v), std::numeric_limits<uint64_t>::max());
    // get_int_array cannot hold 2^64-1: it says so, naming the key.
    try {
        (void)file.get_int_array("test.arr_u64");
        ADD_FAILURE() << "expected an error";
    } catch (const FormatError& e) {
        EXPECT_NE(std::string(e.what()).find("test.arr_u64"), std::string::npos) << e.what();
    }

    const std::vector<uint32_t> f32_bits = {0x00000000, 0x80000000, 0x3FC00000, 0xC0100000, 0x7F800000,
                                            0xFF800000, 0x00000001, 0x7F7FFFFF, 0x7FC00000};
    const std::vector<float> f32s = file.get_float_array("test.arr_f32");
    ASSERT_EQ(f32s.size(), f32_bits.size());
    for (size_t i = 0; i < f32s.size(); ++i) EXPECT_EQ(std::bit_cast<uint32_t>(f32s[i]), f32_bits[i]) << i;
    const Array& f64s = file.get_array("test.arr_f64");
    ASSERT_EQ(f64s.element_type(), ValueType::FLOAT64);
    ASSERT_EQ(f64s.size(), 3u);
    EXPECT_EQ(std::get<double>(f64s.at(0).v), 0.1);
    EXPECT_EQ(std::get<double>(f64s.at(1).v), -1e300);
    EXPECT_EQ(std::get<double>(f64s.at(2).v), 5e-324);
    const Array& bools = file.get_array("test.arr_bool");
    ASSERT_EQ(bools.size(), 3u);
    EXPECT_TRUE(std::get<bool>(bools.at(0).v));
    EXPECT_FALSE(std::get<bool>(bools.at(1).v));
    EXPECT_TRUE(std::get<bool>(bools.at(2).v));
    EXPECT_EQ(file.get_string_array("test.arr_str"),
              (std::vector<std::string>{"a", "", "\u00fcnicode \U0001F999", "with\nnewline"}));

    const Array& nested = file.get_array("test.arr_nested");
    ASSERT_EQ(nested.element_type(), ValueType::ARRAY);
    ASSERT_EQ(nested.size(), 2u);
    const Array inner0 = std::get<Array>(nested.at(0).v);
    const Array inner1 = std::get<Array>(nested.at(1).v);
    EXPECT_EQ(inner0.element_type(), ValueType::INT32);
    ASSERT_EQ(inner0.size(), 3u);
    ASSERT_EQ(inner1.size(), 2u);
    EXPECT_EQ(std::get<int32_t>(inner0.at(2).v), 3);
    EXPECT_EQ(std::get<int32_t>(inner1.at(1).v), 5);
    const Array& nested_strings = file.get_array("test.arr_nested_str");
    ASSERT_EQ(nested_strings.size(), 2u);
    const Array strings1 = std::get<Array>(nested_strings.at(1).v);
    EXPECT_EQ(strings1.element_type(), ValueType::STRING);
    ASSERT_EQ(strings1.size(), 1u);
    EXPECT_EQ(std::get<std::string>(strings1.at(0).v), "\u00e9");
    EXPECT_EQ(file.metadata().size(), 28u);  // 26 test keys + architecture + alignment
}

TEST(GgufOracleTest, ReadsTensorsWrittenByGgufPy) {
    REQUIRE_ORACLE_FILE();
    const File file = File::open(oracle_file().path);
    EXPECT_EQ(file.alignment(), 64u);
    EXPECT_EQ(file.data_offset() % 64, 0u);
    struct Expected {
        const char* name;
        GGMLType type;
        std::vector<uint64_t> dims;
    };
    const Expected expected[] = {
        {"blk.0.f32", GGMLType::F32, {5, 3}},        {"blk.0.f16", GGMLType::F16, {7}},
        {"blk.0.q8_0", GGMLType::Q8_0, {64, 4}},     {"blk.1.f32_4d", GGMLType::F32, {2, 3, 1, 2}},
        {"blk.1.q4_0", GGMLType::Q4_0, {32, 2}},
    };
    ASSERT_EQ(file.tensors().size(), std::size(expected));
    for (size_t i = 0; i < std::size(expected); ++i) {
        const TensorInfo& t = file.tensors()[i];
        EXPECT_EQ(t.name, expected[i].name);
        EXPECT_EQ(t.type, expected[i].type) << t.name;
        EXPECT_EQ(t.dims, expected[i].dims) << t.name;
        EXPECT_EQ(t.offset % 64, 0u) << t.name;
        EXPECT_EQ(&file.tensor(t.name), &t);
        const auto bytes = read_bytes(oracle_file().path.string() + "." + t.name + ".bin");
        ASSERT_EQ(t.data.size(), bytes.size()) << t.name;
        EXPECT_EQ(std::memcmp(t.data.data(), bytes.data(), bytes.size()), 0) << t.name;
    }
    // The F32 values are i * 0.25 - 3, in file order.
    const TensorInfo& f32 = file.tensor("blk.0.f32");
    ASSERT_EQ(f32.n_bytes, 15 * sizeof(float));
    for (size_t i = 0; i < 15; ++i) {
        float value;
        std::memcpy(&value, f32.data.data() + i * sizeof(float), sizeof(float));
        EXPECT_EQ(value, static_cast<float>(i) * 0.25f - 3.0f) << i;
    }
    EXPECT_EQ(file.tensor("blk.0.q8_0").n_bytes, 4u * 2 * 34);
    EXPECT_EQ(file.tensor("blk.1.q4_0").n_bytes, 2u * 18);
}

TEST(GgufOracleTest, AgreesWithGgufPyReaderOnGgufPyFile) {
    REQUIRE_ORACLE_FILE();
    expect_file_matches(File::open(oracle_file().path), oracle_dump(oracle_file().path));
}

// ---------------------------------------------------------------------------------------------
// twinfer writes, gguf-py reads

Value array_of(ValueType element_type, std::vector<Value> items) { return Value{Array{element_type, std::move(items)}}; }

// Every value type, extremes, unicode and invalid UTF-8, empty and nested arrays.
std::vector<std::pair<std::string, Value>> every_kind_of_value() {
    const float nan = std::numeric_limits<float>::quiet_NaN();
    const float inf = std::numeric_limits<float>::infinity();
    return {
        {"general.architecture", Value{std::string("twinfer-test")}},
        {"t.u8", Value{uint8_t{200}}},
        {"t.i8", Value{int8_t{-7}}},
        {"t.u16", Value{uint16_t{65535}}},
        {"t.i16", Value{int16_t{-32768}}},
        {"t.u32", Value{uint32_t{4000000000u}}},
        {"t.i32", Value{int32_t{-123456789}}},
        {"t.f32", Value{-0.0f}},
        {"t.f32_nan", Value{nan}},
        {"t.bool", Value{true}},
        {"t.string", Value{std::string("plain")}},
        {"t.unicode", Value{std::string("caf\u00e9 \u4e2d\u6587 \U0001F600")}},
        {"t.not_utf8", Value{std::string("\xff\xfe\x80 bytes")}},
        {"t.empty", Value{std::string()}},
        {"t.u64", Value{std::numeric_limits<uint64_t>::max()}},
        {"t.i64", Value{std::numeric_limits<int64_t>::min()}},
        {"t.f64", Value{1.0 / 3.0}},
        {"t.arr_u8", array_of(ValueType::UINT8, {Value{uint8_t{0}}, Value{uint8_t{255}}})},
        {"t.arr_i8", array_of(ValueType::INT8, {Value{int8_t{-128}}, Value{int8_t{127}}})},
        {"t.arr_u16", array_of(ValueType::UINT16, {Value{uint16_t{1}}})},
        {"t.arr_i16", array_of(ValueType::INT16, {Value{int16_t{-1}}})},
        {"t.arr_u32", array_of(ValueType::UINT32, {Value{uint32_t{7}}, Value{uint32_t{0xFFFFFFFF}}})},
        {"t.arr_i32", array_of(ValueType::INT32, {Value{int32_t{-1}}, Value{int32_t{2}}})},
        {"t.arr_f32", array_of(ValueType::FLOAT32, {Value{inf}, Value{-inf}, Value{nan}, Value{1e-40f}})},
        {"t.arr_bool", array_of(ValueType::BOOL, {Value{false}, Value{true}})},
        {"t.arr_str", array_of(ValueType::STRING, {Value{std::string("\u00e9t\u00e9")}, Value{std::string()},
                                                   Value{std::string("tab\there")}})},
        {"t.arr_u64", array_of(ValueType::UINT64, {Value{std::numeric_limits<uint64_t>::max()}})},
        {"t.arr_i64", array_of(ValueType::INT64, {Value{int64_t{-5}}})},
        {"t.arr_f64", array_of(ValueType::FLOAT64, {Value{-2.5}, Value{1e308}})},
        {"t.arr_empty", array_of(ValueType::INT32, {})},
        {"t.arr_nested",
         array_of(ValueType::ARRAY, {array_of(ValueType::STRING, {Value{std::string("a")}, Value{std::string("bc")}}),
                                     array_of(ValueType::STRING, {}),
                                     array_of(ValueType::STRING, {Value{std::string("\u00fc")}})})},
        {"t.arr_nested2", array_of(ValueType::ARRAY, {array_of(ValueType::ARRAY, {array_of(ValueType::UINT16, {Value{uint16_t{9}}})})})},
    };
}

struct PlannedTensor {
    std::string name;
    std::vector<uint64_t> dims;
    GGMLType type;
    std::vector<std::byte> data;
};

// Random bytes are fine for the reader: it never looks inside the blocks.
std::vector<PlannedTensor> planned_tensors() {
    std::mt19937 rng(2024);
    auto random_bytes = [&](size_t n) {
        std::vector<std::byte> bytes(n);
        for (auto& b : bytes) b = static_cast<std::byte>(rng());
        return bytes;
    };
    std::vector<PlannedTensor> tensors;
    auto plan = [&](std::string name, std::vector<uint64_t> dims, GGMLType type) {
        uint64_t n = 1;
        for (auto d : dims) n *= d;
        tensors.push_back({std::move(name), dims, type, random_bytes(row_size_bytes(type, n))});
    };
    plan("token_embd.weight", {8, 3}, GGMLType::F32);
    plan("output_norm.weight", {5}, GGMLType::F16);
    plan("blk.0.attn_q.weight", {64, 2}, GGMLType::Q8_0);
    plan("blk.0.ffn_up.weight", {256, 2}, GGMLType::Q4_K);
    plan("blk.0.ffn_down.weight", {256, 1, 1, 1}, GGMLType::Q6_K);
    plan("blk.0.bf16", {3, 2, 2}, GGMLType::BF16);
    return tensors;
}

TEST(GgufOracleTest, GgufPyReadsFileWrittenByTwinfer) {
    REQUIRE_GGUF_PY();
    for (const uint64_t alignment : {uint64_t{0}, uint64_t{64}, uint64_t{1}}) {  // 0: the default
        SCOPED_TRACE("alignment " + std::to_string(alignment));
        Writer writer;
        std::vector<std::pair<std::string, Value>> expected;
        if (alignment != 0) {
            writer.set_alignment(alignment);
            expected.emplace_back("general.alignment", Value{static_cast<uint32_t>(alignment)});
        }
        for (auto& [key, value] : every_kind_of_value()) {
            writer.set(key, value);
            expected.emplace_back(key, value);
        }
        const auto tensors = planned_tensors();
        for (const auto& t : tensors) writer.add_tensor(t.name, t.dims, t.type, t.data);
        const fs::path path = scratch_path("twinfer_written.gguf");
        writer.write(path);

        const json dump = oracle_dump(path);
        EXPECT_EQ(dump.at("version").get<uint32_t>(), 3u);
        EXPECT_EQ(dump.at("alignment").get<uint64_t>(), alignment == 0 ? 32u : alignment);
        expect_metadata_matches(expected, dump);
        const json& dumped_tensors = dump.at("tensors");
        ASSERT_EQ(dumped_tensors.size(), tensors.size());
        for (size_t i = 0; i < tensors.size(); ++i) {
            EXPECT_EQ(dumped_tensors[i].at("name").get<std::string>(), tensors[i].name);
            EXPECT_EQ(dumped_tensors[i].at("type").get<uint32_t>(), static_cast<uint32_t>(tensors[i].type));
            EXPECT_EQ(dumped_tensors[i].at("dims").get<std::vector<uint64_t>>(), tensors[i].dims);
            EXPECT_EQ(dumped_tensors[i].at("n_bytes").get<uint64_t>(), tensors[i].data.size());
            EXPECT_EQ(dumped_tensors[i].at("checksum").get<uint64_t>(), checksum64(tensors[i].data)) << tensors[i].name;
        }
        // And twinfer reads its own file as gguf-py does.
        expect_file_matches(File::open(path), dump);
    }
}

// ---------------------------------------------------------------------------------------------
// In-memory round trips, getters, versions, writer checks

std::vector<std::byte> small_image() {
    Writer writer;
    writer.set_string("general.architecture", "llama");
    writer.set_u32("llama.block_count", 5);
    writer.set("llama.context_length", Value{uint64_t{4096}});
    writer.set("llama.neg", Value{int32_t{-3}});
    writer.set_f32("llama.attention.layer_norm_rms_epsilon", 1e-5f);
    writer.set_bool("tokenizer.ggml.add_bos_token", true);
    writer.set_string_array("tokenizer.ggml.tokens", {"<s>", "</s>", "hi"});
    writer.set_f32_array("tokenizer.ggml.scores", {0.0f, -1.5f, 2.0f});
    writer.set_i32_array("tokenizer.ggml.token_type", {3, 3, 1});
    std::vector<std::byte> data(4 * 6 * sizeof(float));
    for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<std::byte>(i);
    writer.add_tensor("a", {6, 4}, GGMLType::F32, data);
    writer.add_tensor("b", {6}, GGMLType::F32, std::span(data).first(24));
    return writer.to_bytes();
}

TEST(GgufTest, RoundTripsInMemory) {
    const auto image = small_image();
    const File file = File::parse(image);
    EXPECT_EQ(file.version(), 3u);
    EXPECT_EQ(file.alignment(), 32u);
    EXPECT_EQ(file.data_offset() % 32, 0u);
    EXPECT_EQ(file.file_size(), image.size());
    EXPECT_EQ(file.architecture(), "llama");
    EXPECT_EQ(file.get_uint("llama.block_count"), 5u);
    EXPECT_EQ(file.get_uint("llama.context_length"), 4096u);
    EXPECT_EQ(file.get_int("llama.neg"), -3);
    EXPECT_FLOAT_EQ(static_cast<float>(file.get_float("llama.attention.layer_norm_rms_epsilon")), 1e-5f);
    EXPECT_EQ(file.get_float("llama.block_count"), 5.0);
    EXPECT_TRUE(file.get_bool("tokenizer.ggml.add_bos_token"));
    EXPECT_EQ(file.get_string_array("tokenizer.ggml.tokens"), (std::vector<std::string>{"<s>", "</s>", "hi"}));
    EXPECT_EQ(file.get_float_array("tokenizer.ggml.scores"), (std::vector<float>{0.0f, -1.5f, 2.0f}));
    EXPECT_EQ(file.get_int_array("tokenizer.ggml.token_type"), (std::vector<int64_t>{3, 3, 1}));
    ASSERT_EQ(file.tensors().size(), 2u);
    const TensorInfo& a = file.tensor("a");
    EXPECT_EQ(a.dims, (std::vector<uint64_t>{6, 4}));
    EXPECT_EQ(a.n_elements, 24u);
    EXPECT_EQ(a.n_bytes, 96u);
    EXPECT_EQ(a.offset, 0u);
    EXPECT_EQ(file.tensor("b").offset, 96u);
    EXPECT_EQ(a.data.data(), image.data() + file.data_offset());
    for (size_t i = 0; i < a.n_bytes; ++i) ASSERT_EQ(a.data[i], static_cast<std::byte>(i));
    EXPECT_EQ(std::memcmp(file.tensor("b").data.data(), a.data.data(), 24), 0);

    // The same through a file and mmap; moving the File keeps its spans valid.
    const fs::path path = scratch_path("small.gguf");
    {
        std::ofstream out(path, std::ios::binary);
        out.write(reinterpret_cast<const char*>(image.data()), static_cast<std::streamsize>(image.size()));
    }
    File opened = File::open(path);
    File moved = std::move(opened);
    EXPECT_EQ(moved.origin(), path.string());
    EXPECT_EQ(moved.metadata().size(), file.metadata().size());
    EXPECT_EQ(std::memcmp(moved.tensor("a").data.data(), a.data.data(), a.n_bytes), 0);
}

template <class F> std::string error_of(F&& f) {
    try {
        f();
    } catch (const FormatError& e) {
        return e.what();
    }
    return "(no error)";
}

#define EXPECT_ERROR_CONTAINS(expr, ...)                                                    \
    do {                                                                                    \
        const std::string message_ = error_of([&] { (void)(expr); });                       \
        for (const std::string& part_ : std::initializer_list<std::string>{__VA_ARGS__})    \
            EXPECT_NE(message_.find(part_), std::string::npos) << "'" << part_ << "' not in: " << message_; \
    } while (0)

// A metadata array of numbers costs about its own bytes: before, every element became a ~48-byte
// Value, so a file of 100 MB holding one uint8 array asked for ~4.8 GB (a hostile file's way to
// exhaust memory). The process's peak resident size may grow by the file's mapping and the packed
// copy (~200 MB), far from the old 4.8 GB.
TEST(GgufTest, NumericArraysCostTheirOwnBytes) {
    constexpr uint64_t kCount = 100'000'000;
    const auto path = test::scratch_dir() / "huge-u8-array.gguf";
    {
        std::ofstream out(path, std::ios::binary);
        auto put = [&](const auto& x) { out.write(reinterpret_cast<const char*>(&x), sizeof x); };
        const std::string key = "test.huge";
        out.write("GGUF", 4);
        put(uint32_t{3});
        put(uint64_t{0});                   // tensors
        put(uint64_t{1});                   // metadata keys
        put(uint64_t{key.size()});
        out.write(key.data(), std::streamsize(key.size()));
        put(uint32_t{9});                   // ARRAY
        put(uint32_t{0});                   // of UINT8
        put(kCount);
        const std::vector<char> chunk(1 << 20, 7);
        for (uint64_t written = 0; written < kCount; written += chunk.size())
            out.write(chunk.data(), std::streamsize(std::min<uint64_t>(chunk.size(), kCount - written)));
    }
    auto peak_bytes = [] {
        rusage usage{};
        getrusage(RUSAGE_SELF, &usage);
        return uint64_t(usage.ru_maxrss) * 1024;
    };
    const uint64_t before = peak_bytes();
    const File file = File::open(path);
    const Array& array = file.get_array("test.huge");
    EXPECT_EQ(array.size(), kCount);
    EXPECT_EQ(std::get<uint8_t>(array.at(kCount - 1).v), 7);
    EXPECT_LT(peak_bytes() - before, uint64_t{1} << 30);
    std::filesystem::remove(path);
}

TEST(GgufTest, GettersNameTheKeyAndTheProblem) {
    const auto image = small_image();
    const File file = File::parse(image, "small.gguf");
    EXPECT_ERROR_CONTAINS(file.get_string("nope"), "small.gguf", "missing metadata key 'nope'");
    EXPECT_ERROR_CONTAINS(file.get_string("llama.block_count"), "'llama.block_count'", "uint32", "expected string");
    EXPECT_ERROR_CONTAINS(file.get_uint("llama.neg"), "'llama.neg'", "int32");
    EXPECT_ERROR_CONTAINS(file.get_uint("general.architecture"), "'general.architecture'", "string");
    EXPECT_ERROR_CONTAINS(file.get_bool("llama.block_count"), "'llama.block_count'", "expected bool");
    EXPECT_ERROR_CONTAINS(file.get_float("general.architecture"), "'general.architecture'", "expected a number");
    EXPECT_ERROR_CONTAINS(file.get_array("llama.block_count"), "'llama.block_count'", "expected array");
    EXPECT_ERROR_CONTAINS(file.get_string_array("tokenizer.ggml.scores"), "'tokenizer.ggml.scores'", "strings");
    EXPECT_ERROR_CONTAINS(file.get_float_array("tokenizer.ggml.tokens"), "'tokenizer.ggml.tokens'", "floats");
    EXPECT_ERROR_CONTAINS(file.get_int_array("tokenizer.ggml.scores"), "'tokenizer.ggml.scores'", "integers");
    EXPECT_ERROR_CONTAINS(file.tensor("missing.weight"), "missing tensor 'missing.weight'");
    EXPECT_EQ(file.find_tensor("missing.weight"), nullptr);
    EXPECT_EQ(file.string_or("nope"), std::nullopt);
    EXPECT_EQ(file.string_or("general.architecture"), "llama");
    EXPECT_EQ(file.uint_or<uint32_t>("nope", 7u), 7u);
    EXPECT_EQ(file.uint_or<uint32_t>("llama.block_count", 7u), 5u);
    EXPECT_EQ(file.float_or("nope", 0.5), 0.5);
    EXPECT_FALSE(file.bool_or("nope", false));
}

void set_version(std::vector<std::byte>& image, uint32_t version) { std::memcpy(image.data() + 4, &version, 4); }

TEST(GgufTest, ReadsVersion2) {
    // v2 differs from v3 only in what v3 added (big-endian files); counts and lengths are u64 in both.
    auto image = small_image();
    set_version(image, 2);
    const File file = File::parse(image);
    EXPECT_EQ(file.version(), 2u);
    EXPECT_EQ(file.tensors().size(), 2u);
    EXPECT_EQ(file.get_string_array("tokenizer.ggml.tokens").size(), 3u);
    EXPECT_EQ(file.tensor("a").n_bytes, 96u);
}

TEST(GgufTest, GgufPyReadsVersion2Patch) {
    REQUIRE_GGUF_PY();
    auto image = small_image();
    set_version(image, 2);
    const fs::path path = scratch_path("v2.gguf");
    {
        std::ofstream out(path, std::ios::binary);
        out.write(reinterpret_cast<const char*>(image.data()), static_cast<std::streamsize>(image.size()));
    }
    expect_file_matches(File::open(path), oracle_dump(path));
}

TEST(GgufTest, RejectsVersions1And4AndLater) {
    for (const uint32_t version : {0u, 1u, 4u, 5u, 0x03000000u, 0xFFFFFFFFu}) {
        auto image = small_image();
        set_version(image, version);
        EXPECT_ERROR_CONTAINS(File::parse(image, "v.gguf"), "v.gguf", "version");
        EXPECT_ERROR_CONTAINS(File::parse(image, "v.gguf"), std::to_string(version));
    }
}

TEST(GgufTest, OpenReportsMissingFilesDirectoriesAndEmptyFiles) {
    EXPECT_THROW((void)File::open(scratch_path("does-not-exist.gguf")), std::system_error);
    const fs::path dir = scratch_path("a-directory.gguf");
    fs::create_directories(dir);
    EXPECT_ERROR_CONTAINS(File::open(dir), "directory");
    const fs::path empty = scratch_path("empty.gguf");
    std::ofstream(empty).close();
    EXPECT_ERROR_CONTAINS(File::open(empty), "empty.gguf", "not a GGUF file");
    const fs::path text = scratch_path("text.gguf");
    std::ofstream(text) << "this is not a gguf file at all\n";
    EXPECT_ERROR_CONTAINS(File::open(text), "text.gguf", "not a GGUF file");
}

TEST(GgufTest, WriterRejectsWhatNoReaderWouldAccept) {
    Writer writer;
    const std::vector<std::byte> bytes(16);
    EXPECT_THROW(writer.add_tensor("t", {4}, GGMLType::F32, std::span(bytes).first(12)), std::invalid_argument);
    EXPECT_THROW(writer.add_tensor("t", {}, GGMLType::F32, {}), std::invalid_argument);
    EXPECT_THROW(writer.add_tensor("t", {1, 1, 1, 1, 4}, GGMLType::F32, bytes), std::invalid_argument);
    EXPECT_THROW(writer.add_tensor("t", {4, 0}, GGMLType::F32, {}), std::invalid_argument);
    EXPECT_THROW(writer.add_tensor("t", {uint64_t{1} << 61, 8}, GGMLType::F32, {}), std::invalid_argument);
    writer.add_tensor("t", {4}, GGMLType::F32, bytes);
    EXPECT_THROW(writer.add_tensor("t", {4}, GGMLType::F32, bytes), std::invalid_argument);
    EXPECT_THROW(writer.set_alignment(0), std::invalid_argument);
    EXPECT_THROW(writer.set_alignment(48), std::invalid_argument);
    EXPECT_THROW(writer.set("general.alignment", Value{uint64_t{64}}), std::invalid_argument);
    EXPECT_THROW(writer.set("general.alignment", Value{uint32_t{3}}), std::invalid_argument);
    // An array of mixed types cannot even be built.
    EXPECT_THROW(array_of(ValueType::INT32, {Value{int32_t{1}}, Value{1.0f}}), std::invalid_argument);
}

TEST(GgufTest, WriterTakesTheAlignmentFromTheKey) {
    Writer writer;
    writer.set("general.alignment", Value{uint32_t{128}});
    const std::vector<std::byte> bytes(8);
    writer.add_tensor("x", {2}, GGMLType::F32, bytes);
    writer.add_tensor("y", {2}, GGMLType::F32, bytes);
    const auto image = writer.to_bytes();
    const File file = File::parse(image);
    EXPECT_EQ(file.alignment(), 128u);
    EXPECT_EQ(file.data_offset() % 128, 0u);
    EXPECT_EQ(file.tensor("y").offset, 128u);
}

TEST(GgufTest, WriterOverwritesKeysInPlace) {
    Writer writer;
    writer.set_u32("a", 1);
    writer.set_string("b", "x");
    writer.set_u32("a", 2);
    const auto image = writer.to_bytes();
    const File file = File::parse(image);
    ASSERT_EQ(file.metadata().size(), 2u);
    EXPECT_EQ(file.metadata()[0].first, "a");
    EXPECT_EQ(file.get_uint("a"), 2u);
}

// ---------------------------------------------------------------------------------------------
// Real files

TEST(GgufRealFileTest, Stories260KMatchesGgufPy) {
    const fs::path path = test::third_party_testdata() / "models" / "stories260K.gguf";
    TWINFER_REQUIRE_FILE(path);
    REQUIRE_GGUF_PY();
    const File file = File::open(path);
    EXPECT_EQ(file.architecture(), "llama");
    EXPECT_EQ(file.get_uint("llama.block_count"), 5u);
    EXPECT_EQ(file.tensors().size(), 48u);
    EXPECT_EQ(file.get_string("tokenizer.ggml.model"), "llama");
    expect_file_matches(file, oracle_dump(path));
}

TEST(GgufRealFileTest, VocabFilesMatchGgufPy) {
    REQUIRE_GGUF_PY();
    for (const char* name : {"ggml-vocab-gpt-2.gguf", "ggml-vocab-llama-bpe.gguf", "ggml-vocab-llama-spm.gguf"}) {
        SCOPED_TRACE(name);
        const fs::path path = test::third_party_testdata() / "tokenizers" / name;
        TWINFER_REQUIRE_FILE(path);
        const File file = File::open(path);
        EXPECT_TRUE(file.tensors().empty());
        EXPECT_GT(file.get_string_array("tokenizer.ggml.tokens").size(), 1000u);
        expect_file_matches(file, oracle_dump(path));
    }
}

TEST(GgufRealFileTest, SmolLM2OpensInUnderASecondAndMatchesGgufPy) {
    const fs::path path = test::smollm2_path();
    TWINFER_REQUIRE_FILE(path);
    REQUIRE_GGUF_PY();
    const auto start = std::chrono::steady_clock::now();
    const File file = File::open(path);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::cout << "[ timing   ] File::open(" << path.filename().string() << "): " << seconds * 1000.0 << " ms, "
              << file.metadata().size() << " keys, " << file.tensors().size() << " tensors\n";
    EXPECT_LT(seconds, 1.0);
    EXPECT_EQ(file.architecture(), "llama");
    EXPECT_GT(file.tensors().size(), 0u);
    expect_file_matches(file, oracle_dump(path));
}

}  // namespace
}  // namespace twinfer::gguf
