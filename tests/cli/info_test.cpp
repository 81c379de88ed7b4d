// `twinfer info`: the real binary, run as a user would, on the real test model and on bad input.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <string>

#include "common/test_data.hpp"
#include "format/gguf.hpp"

namespace twinfer {
namespace {

namespace fs = std::filesystem;

struct RunResult {
    int exit_code = -1;  // -1: did not exit normally (a crash)
    std::string out;
    std::string err;
};

std::string read_text(const fs::path& path) {
    std::ifstream file(path, std::ios::binary);
    return {std::istreambuf_iterator<char>(file), std::istreambuf_iterator<char>()};
}

std::string quoted(const fs::path& path) {
    std::string s(1, '"');  // appended, not "\"" + string: GCC 12 warns falsely (-Wrestrict) on that
    s += path.string();
    s += '"';
    return s;
}

// Runs `twinfer ARGS` with stdout and stderr captured in the scratch folder.
RunResult run_twinfer(const std::string& args) {
    static std::atomic<int> counter{0};
    const int n = counter++;
    const fs::path out = test::scratch_dir() / ("info_" + std::to_string(n) + ".out");
    const fs::path err = test::scratch_dir() / ("info_" + std::to_string(n) + ".err");
    const std::string command = quoted(test::twinfer_binary()) + " " + args + " > " + quoted(out) + " 2> " + quoted(err);
    const int status = std::system(command.c_str());
    RunResult result;
    if (status != -1 && WIFEXITED(status)) result.exit_code = WEXITSTATUS(status);
    result.out = read_text(out);
    result.err = read_text(err);
    return result;
}

class InfoCommandTest : public ::testing::Test {
protected:
    void SetUp() override {
        if (!fs::exists(test::twinfer_binary()))
            FAIL() << "twinfer binary not found at " << test::twinfer_binary() << " (set TWINFER_BIN or build it)";
    }
};

TEST_F(InfoCommandTest, JsonDescribesStories260K) {
    const fs::path model = test::third_party_testdata() / "models" / "stories260K.gguf";
    TWINFER_REQUIRE_FILE(model);
    const RunResult r = run_twinfer("info --json " + quoted(model));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const auto d = nlohmann::json::parse(r.out);
    EXPECT_EQ(d.at("architecture"), "llama");
    EXPECT_EQ(d.at("gguf_version"), 3);
    EXPECT_EQ(d.at("hyperparameters").at("block_count"), 5);
    EXPECT_EQ(d.at("hyperparameters").at("embedding_length"), 64);
    EXPECT_EQ(d.at("tensor_count"), 48);
    EXPECT_EQ(d.at("tensor_types").at("F32"), 48);
    EXPECT_EQ(d.at("tokenizer").at("model"), "llama");
    EXPECT_EQ(d.at("tokenizer").at("vocab_size"), 512);
    EXPECT_EQ(d.at("chat_template"), false);
    EXPECT_EQ(d.at("file_size").get<uint64_t>(), fs::file_size(model));
    // The numbers agree with the reader's.
    const auto file = gguf::File::open(model);
    uint64_t parameters = 0;
    for (const auto& t : file.tensors()) parameters += t.n_elements;
    EXPECT_EQ(d.at("parameters").get<uint64_t>(), parameters);
    EXPECT_EQ(d.at("metadata_count").get<uint64_t>(), file.metadata().size());
}

TEST_F(InfoCommandTest, TextOutputAndTheModelFlag) {
    const fs::path model = test::third_party_testdata() / "models" / "stories260K.gguf";
    TWINFER_REQUIRE_FILE(model);
    const RunResult r = run_twinfer("info -m " + quoted(model));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.out.find("architecture: llama"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("tensors: 48"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("chat template: no"), std::string::npos) << r.out;
}

TEST_F(InfoCommandTest, VocabularyOnlyFile) {
    const fs::path vocab = test::third_party_testdata() / "tokenizers" / "ggml-vocab-gpt-2.gguf";
    TWINFER_REQUIRE_FILE(vocab);
    const RunResult r = run_twinfer("info --json " + quoted(vocab));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const auto d = nlohmann::json::parse(r.out);
    EXPECT_EQ(d.at("tensor_count"), 0);
    EXPECT_EQ(d.at("tokenizer").at("model"), "gpt2");
}

// One line on stderr, naming the file; nothing on stdout.
void expect_one_line_error(const RunResult& r, int exit_code, const std::string& mentions) {
    EXPECT_EQ(r.exit_code, exit_code) << r.err;
    EXPECT_TRUE(r.out.empty()) << r.out;
    ASSERT_FALSE(r.err.empty());
    EXPECT_EQ(r.err.find('\n'), r.err.size() - 1) << "not one line: " << r.err;
    EXPECT_EQ(r.err.rfind("twinfer: error: ", 0), 0u) << r.err;
    EXPECT_NE(r.err.find(mentions), std::string::npos) << r.err;
}

TEST_F(InfoCommandTest, MissingFileIsAUsageError) {
    const fs::path missing = test::scratch_dir() / "no-such-model.gguf";
    expect_one_line_error(run_twinfer("info " + quoted(missing)), 2, "no-such-model.gguf");
}

TEST_F(InfoCommandTest, DirectoryIsRejected) {
    const fs::path dir = test::scratch_dir() / "a-directory.gguf";
    fs::create_directories(dir);
    expect_one_line_error(run_twinfer("info " + quoted(dir)), 1, "directory");
}

TEST_F(InfoCommandTest, NonGgufFileIsRejected) {
    const fs::path text = test::scratch_dir() / "not-a-model.gguf";
    std::ofstream(text) << "just some text, no GGUF here\n";
    expect_one_line_error(run_twinfer("info --json " + quoted(text)), 1, "not a GGUF file");
}

TEST_F(InfoCommandTest, TruncatedModelIsRejected) {
    const fs::path model = test::third_party_testdata() / "models" / "stories260K.gguf";
    TWINFER_REQUIRE_FILE(model);
    const fs::path truncated = test::scratch_dir() / "truncated.gguf";
    fs::copy_file(model, truncated, fs::copy_options::overwrite_existing);
    fs::resize_file(truncated, fs::file_size(model) / 2);
    expect_one_line_error(run_twinfer("info " + quoted(truncated)), 1, "past the end");
}

TEST_F(InfoCommandTest, InvalidUtf8MetadataStillPrints) {
    // Strings in GGUF are bytes; info shows them (replaced) rather than failing on them.
    gguf::Writer writer;
    writer.set_string("general.architecture", "llama");
    writer.set_string("general.name", "bad \xff\xfe name");
    writer.set_string("tokenizer.ggml.model", "\xc3");
    const fs::path path = test::scratch_dir() / "bad-utf8.gguf";
    writer.write(path);
    for (const char* flag : {"--json", ""}) {
        const RunResult r = run_twinfer(std::string("info ") + flag + " " + quoted(path));
        EXPECT_EQ(r.exit_code, 0) << flag << ": " << r.err;
        EXPECT_NE(r.out.find("bad "), std::string::npos) << r.out;
    }
}

TEST_F(InfoCommandTest, NoModelGivenIsAUsageError) {
    const RunResult r = run_twinfer("info");
    EXPECT_EQ(r.exit_code, 2);
    EXPECT_NE(r.err.find("no model given"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace twinfer
