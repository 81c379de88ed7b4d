// The model file changing under a running `twinfer serve`. The CPU models read their weights from
// the file's mapping, so a truncated file used to end the server with SIGBUS at the next request.
// Now (format/mapped_file_guard.hpp): truncated or rewritten in place, every request gets a 500
// naming the file and /health a 503, and the process keeps answering; replaced by a rename, it
// goes on serving the file it loaded.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "common/test_data.hpp"
#include "server/server_process.hpp"

namespace twinfer::test {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

fs::path stories() { return third_party_testdata() / "models" / "stories260K.gguf"; }

// A copy of stories260K for one server to load: the original must not change.
fs::path served_copy(const std::string& name) {
    const fs::path copy = scratch_dir() / name;
    fs::copy_file(stories(), copy, fs::copy_options::overwrite_existing);
    return copy;
}

const std::string kCompletion = json{{"prompt", "Once upon a time"}, {"max_tokens", 8}, {"temperature", 0}}.dump();

std::string completion_text(const ServerProcess& server) {
    return server.post("/v1/completions", kCompletion, 200)["choices"][0]["text"].get<std::string>();
}

// After the file changed: each request is a 500 naming the problem, /health a 503 saying the
// same, several times over, and the process is still there.
void expect_refusing_and_alive(const ServerProcess& server, const fs::path& model, const std::string& problem) {
    for (int i = 0; i < 3; ++i) {
        auto res = server.client().Post("/v1/completions", kCompletion, "application/json");
        ASSERT_TRUE(res) << "no answer: the server died";
        EXPECT_EQ(res->status, 500) << res->body;
        const std::string message = json::parse(res->body)["error"]["message"].get<std::string>();
        EXPECT_NE(message.find(model.string() + " was " + problem), std::string::npos) << message;
        EXPECT_NE(message.find("restart the server"), std::string::npos) << message;

        auto health = server.client().Get("/health");
        ASSERT_TRUE(health) << "no answer from /health: the server died";
        EXPECT_EQ(health->status, 503) << health->body;
        EXPECT_EQ(json::parse(health->body)["error"]["code"], "model_file_changed") << health->body;
    }
    auto models = server.client().Get("/v1/models");
    ASSERT_TRUE(models);
    EXPECT_EQ(models->status, 200);
    EXPECT_TRUE(server.running());
}

// Cut to nothing (every page of the mapping past the end), and cut in the tensor data.
TEST(ServerModelFile, ATruncatedModelFailsRequestsNotTheServer) {
    TWINFER_REQUIRE_FILE(stories());
    for (const uintmax_t length : {uintmax_t{0}, fs::file_size(stories()) / 2}) {
        const fs::path model = served_copy("truncated.gguf");
        const ServerProcess server({"--parallel", "2"}, model);
        EXPECT_FALSE(completion_text(server).empty());
        fs::resize_file(model, length);
        expect_refusing_and_alive(server, model, "truncated from " + std::to_string(fs::file_size(stories())) + " to " +
                                                     std::to_string(length) + " bytes");
        // A tokenizer route reads no weights, and still answers.
        auto tokens = server.client().Post("/tokenize", R"({"content": "Once"})", "application/json");
        ASSERT_TRUE(tokens);
        EXPECT_EQ(tokens->status, 200);
    }
}

// Rewritten in place (as `cp other.gguf model.gguf` does, byte for byte into the same file): the
// mapping would read the new bytes as weights.
TEST(ServerModelFile, AModelRewrittenInPlaceFailsRequestsNotTheServer) {
    TWINFER_REQUIRE_FILE(stories());
    const fs::path model = served_copy("rewritten.gguf");
    const ServerProcess server({}, model);
    EXPECT_FALSE(completion_text(server).empty());
    {
        std::fstream rewrite(model, std::ios::binary | std::ios::in | std::ios::out);
        rewrite.seekp(static_cast<std::streamoff>(fs::file_size(model) - 100));
        rewrite << std::string(50, '\x7f');
    }
    expect_refusing_and_alive(server, model, "modified");
}

// Replaced by a rename (how a deployment should swap a model file): the server keeps the file it
// mapped and answers as before, until it is restarted on the new one.
TEST(ServerModelFile, AModelReplacedByARenameKeepsServingTheLoadedOne) {
    TWINFER_REQUIRE_FILE(stories());
    const fs::path model = served_copy("renamed.gguf");
    const ServerProcess server({}, model);
    const std::string before = completion_text(server);
    const fs::path other = scratch_dir() / "other.gguf";
    std::ofstream(other, std::ios::binary) << "not a model";
    fs::rename(other, model);
    EXPECT_EQ(completion_text(server), before);
    auto health = server.client().Get("/health");
    ASSERT_TRUE(health);
    EXPECT_EQ(health->status, 200) << health->body;
}

}  // namespace
}  // namespace twinfer::test
