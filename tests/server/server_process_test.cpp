// `twinfer serve` as a real process on a free port, against the default model: the routes, every
// kind of bad input (each a 4xx with an OpenAI error object, the server still answering), the
// queue limit, cancellation by a client that goes away, and concurrent greedy streams that each
// equal the same request sent alone.
#include <gtest/gtest.h>
#include <httplib.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "common/test_data.hpp"
#include "server/server_process.hpp"

namespace twinfer {
namespace {

using nlohmann::json;
constexpr const char* api_key = "test-key-123";

using test::ServerProcess;

// One server for the whole suite (loading it takes a second or two).
class ServerProcessTest : public ::testing::Test {
protected:
    static void SetUpTestSuite() {
        server_ = new ServerProcess({"--parallel", "8", "--max-queue", "8", "-c", "512", "--api-key", api_key, "--max-body", "16",
                                     "--timeout", "120"},
                                    test::smollm2_path(), api_key);
    }
    static void TearDownTestSuite() {
        delete server_;
        server_ = nullptr;
    }
    static ServerProcess* server_;

    // An OpenAI error object with this status, code and param.
    static void expect_error(const std::string& path, const std::string& body, int status, const std::string& param = "") {
        const json e = server_->post(path, body, status);
        ASSERT_TRUE(e.contains("error")) << e.dump();
        EXPECT_TRUE(e["error"]["message"].is_string() && !e["error"]["message"].get<std::string>().empty()) << e.dump();
        EXPECT_TRUE(e["error"]["type"].is_string()) << e.dump();
        EXPECT_TRUE(e["error"].contains("code") && e["error"].contains("param")) << e.dump();
        if (!param.empty()) {
            EXPECT_EQ(e["error"]["param"], param) << body;
        }
    }
};
ServerProcess* ServerProcessTest::server_ = nullptr;

std::string completion_body(const std::string& prompt, int max_tokens, bool stream) {
    return json{{"prompt", prompt}, {"max_tokens", max_tokens}, {"temperature", 0}, {"stream", stream}, {"logprobs", 0}}.dump();
}

// The token strings of a completion (non-streamed: logprobs.tokens; streamed: each chunk's).
std::vector<std::string> tokens_of(const json& response) {
    return response["choices"][0]["logprobs"]["tokens"].get<std::vector<std::string>>();
}

std::vector<std::string> streamed_tokens(const std::string& sse, bool& saw_done) {
    std::vector<std::string> tokens;
    saw_done = false;
    size_t at = 0;
    while ((at = sse.find("data: ", at)) != std::string::npos) {
        const size_t end = sse.find("\n\n", at);
        const std::string data = sse.substr(at + 6, end - at - 6);
        at = end;
        if (data == "[DONE]") {
            saw_done = true;
            continue;
        }
        const json chunk = json::parse(data);
        for (const json& choice : chunk["choices"])
            if (!choice["logprobs"].is_null())
                for (const json& t : choice["logprobs"]["tokens"]) tokens.push_back(t.get<std::string>());
    }
    return tokens;
}

TEST_F(ServerProcessTest, HealthModelsTokenizeMetrics) {
    auto open = server_->client(false);
    auto health = open.Get("/health");
    ASSERT_TRUE(health);
    EXPECT_EQ(health->status, 200);
    EXPECT_EQ(json::parse(health->body)["status"], "ok");
    auto models = server_->client().Get("/v1/models");
    ASSERT_TRUE(models);
    ASSERT_EQ(models->status, 200);
    EXPECT_EQ(json::parse(models->body)["data"][0]["id"], "SmolLM2-135M-Instruct.Q4_1.gguf");
    const json tokens = server_->post("/tokenize", R"({"content": "Hello world"})", 200);
    ASSERT_FALSE(tokens["tokens"].empty());
    const json text = server_->post("/detokenize", json{{"tokens", tokens["tokens"]}}.dump(), 200);
    EXPECT_EQ(text["content"], "Hello world");
    auto metrics = server_->client().Get("/metrics");
    ASSERT_TRUE(metrics);
    for (const char* name : {"twinfer_requests_total", "twinfer_generated_tokens_total", "twinfer_generated_tokens_per_second",
                             "twinfer_queue_depth", "twinfer_kv_positions_used"})
        EXPECT_NE(metrics->body.find(name), std::string::npos) << name;
}

TEST_F(ServerProcessTest, ApiKeyIsRequired) {
    auto none = server_->client(false).Post("/v1/completions", completion_body("Hi", 1, false), "application/json");
    ASSERT_TRUE(none);
    EXPECT_EQ(none->status, 401);
    EXPECT_EQ(json::parse(none->body)["error"]["code"], "invalid_api_key");
    auto wrong = server_->client(false);
    wrong.set_default_headers({{"Authorization", "Bearer test-key-124"}});
    auto res = wrong.Post("/v1/completions", completion_body("Hi", 1, false), "application/json");
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 401);
}

// A refused request's body is read before the refusal: left on a kept-alive connection, it would
// be parsed as the client's next request (that request got a 400 meant for the leftover bytes).
TEST_F(ServerProcessTest, ARefusedRequestLeavesItsKeptAliveConnectionClean) {
    auto client = server_->client(false);
    client.set_keep_alive(true);
    client.set_default_headers({{"Authorization", "Bearer test-key-124"}});
    for (int i = 0; i < 3; ++i) {
        auto res = client.Post("/v1/completions", completion_body("Hi", 1, false), "application/json");
        ASSERT_TRUE(res);
        EXPECT_EQ(res->status, 401) << "request " << i << ": " << res->body;
    }
    auto health = client.Get("/health");
    ASSERT_TRUE(health);
    EXPECT_EQ(health->status, 200) << health->body;
}

TEST_F(ServerProcessTest, BadJsonAndWrongTypesAre400) {
    expect_error("/v1/chat/completions", "{not json", 400);
    expect_error("/v1/chat/completions", "[1, 2]", 400);
    expect_error("/v1/chat/completions", R"({"messages": "hi"})", 400, "messages");
    expect_error("/v1/chat/completions", R"({"messages": []})", 400, "messages");
    expect_error("/v1/chat/completions", R"({"messages": [{"role": "user", "content": 5}]})", 400, "messages[0].content");
    expect_error("/v1/chat/completions", R"({"messages": [{"role": "wizard", "content": "x"}]})", 400, "messages[0].role");
    expect_error("/v1/chat/completions", R"({"messages": [{"role": "user", "content": "x"}], "temperature": "hot"})", 400, "temperature");
    expect_error("/v1/completions", R"({"prompt": "x", "max_tokens": "5"})", 400, "max_tokens");
    expect_error("/v1/completions", R"({"prompt": "x", "n": 1.5})", 400, "n");
    expect_error("/v1/completions", R"({"prompt": "x", "stream": 1})", 400, "stream");
    expect_error("/v1/completions", R"({"prompt": "x", "stop": [1]})", 400, "stop");
    expect_error("/v1/completions", R"({"prompt": {"a": 1}})", 400, "prompt");
    expect_error("/v1/completions", R"({"max_tokens": 3})", 400, "prompt");
    expect_error("/v1/completions", R"({"prompt": "x", "response_format": {"type": "yaml"}})", 400, "response_format.type");
    expect_error("/v1/chat/completions", R"({"messages": [{"role": "user", "content": "x"}], "tools": []})", 400, "tools");
    expect_error("/tokenize", R"({"content": 3})", 400, "content");
    expect_error("/detokenize", R"({"tokens": [1, "a"]})", 400, "tokens");
    expect_error("/v1/nothing", "{}", 404);
    // The server still answers.
    EXPECT_EQ(server_->post("/v1/completions", completion_body("Hi", 2, false), 200)["usage"]["completion_tokens"], 2);
}

TEST_F(ServerProcessTest, NegativeAndHugeNumbersAre400) {
    const std::string chat = R"({"messages": [{"role": "user", "content": "x"}], )";
    for (const char* field : {R"("max_tokens": -1)", R"("max_tokens": 0)", R"("max_tokens": 1000000000000)",
                              R"("max_completion_tokens": 99999999999999999999)", R"("temperature": -0.5)", R"("temperature": 1e308)",
                              R"("top_p": 2)", R"("top_k": -5)", R"("top_k": 4294967296)", R"("min_p": -1)", R"("n": 0)",
                              R"("n": 1000000)", R"("presence_penalty": 3)", R"("frequency_penalty": -1e9)", R"("seed": 1e30)",
                              R"("logit_bias": {"-1": 5})", R"("logit_bias": {"999999999": 1})", R"("logit_bias": {"5": 1e9})",
                              R"("logprobs": true, "top_logprobs": 100)", R"("top_logprobs": -1)", R"("repeat_last_n": -2)"})
        expect_error("/v1/chat/completions", chat + field + "}", 400);
    expect_error("/v1/completions", R"({"prompt": [-1, 5]})", 400, "prompt");
    expect_error("/v1/completions", R"({"prompt": [1, 99999999]})", 400, "prompt");
    expect_error("/v1/completions", R"({"prompt": "x", "logprobs": 21})", 400, "logprobs");
    expect_error("/detokenize", R"({"tokens": [-7]})", 400, "tokens");
    EXPECT_EQ(server_->post("/v1/completions", completion_body("Hi", 1, false), 200)["choices"][0]["finish_reason"], "length");
}

TEST_F(ServerProcessTest, OversizedBodyAndTooLongPrompt) {
    const std::string big = json{{"prompt", std::string(20 * 1024, 'a')}, {"max_tokens", 1}}.dump();   // --max-body 16 KiB
    expect_error("/v1/completions", big, 413);
    // 600 tokens against a 512-token context: 400 naming both numbers.
    std::vector<int> ids(600, 1000);
    const json e = server_->post("/v1/completions", json{{"prompt", ids}}.dump(), 400);
    EXPECT_EQ(e["error"]["code"], "context_length_exceeded");
    const std::string message = e["error"]["message"];
    EXPECT_NE(message.find("512"), std::string::npos) << message;
    EXPECT_NE(message.find("600"), std::string::npos) << message;
    // max_tokens past what the context leaves.
    const json e2 = server_->post("/v1/completions", json{{"prompt", std::vector<int>(500, 1000)}, {"max_tokens", 100}}.dump(), 400);
    EXPECT_EQ(e2["error"]["code"], "context_length_exceeded");
}

// More requests at once than slots plus queue: the excess get 503 queue_full at once, the others
// complete, and the server answers the next request.
TEST_F(ServerProcessTest, BurstOverTheQueueGets503AndTheServerRecovers) {
    constexpr int n_requests = 40;
    std::atomic<int> ok = 0, full = 0, other = 0;
    std::vector<std::thread> clients;
    for (int i = 0; i < n_requests; ++i)
        clients.emplace_back([&, i] {
            auto res = server_->client().Post("/v1/completions", completion_body("Count: " + std::to_string(i), 24, false), "application/json");
            if (res && res->status == 200) ++ok;
            else if (res && res->status == 503 && json::parse(res->body)["error"]["code"] == "queue_full") ++full;
            else {
                ++other;
                ADD_FAILURE() << "request " << i << ": " << (res ? std::to_string(res->status) + " " + res->body : httplib::to_string(res.error()));
            }
        });
    for (auto& t : clients) t.join();
    EXPECT_EQ(other, 0);
    EXPECT_GE(ok, 8);     // at least the slots' worth
    EXPECT_GE(full, 1);   // 40 at once cannot fit 8 slots + 8 queued
    EXPECT_EQ(ok + full, n_requests);
    EXPECT_EQ(server_->post("/v1/completions", completion_body("After the burst", 4, false), 200)["usage"]["completion_tokens"], 4);
}

// Eight greedy streams at once, different prompts: each stream's tokens equal the same request
// sent alone (non-streamed, nothing else running).
TEST_F(ServerProcessTest, EightConcurrentGreedyStreamsEqualEachAlone) {
    std::vector<std::string> prompts;
    for (int i = 0; i < 8; ++i) prompts.push_back("Story " + std::to_string(i) + ": once upon a time, in a land of " + std::to_string(i * 7));
    std::vector<std::vector<std::string>> alone;
    for (const auto& p : prompts) alone.push_back(tokens_of(server_->post("/v1/completions", completion_body(p, 32, false), 200)));
    std::vector<std::vector<std::string>> together(prompts.size());
    std::vector<int> done(prompts.size(), 0);
    std::vector<std::thread> clients;
    for (size_t i = 0; i < prompts.size(); ++i)
        clients.emplace_back([&, i] {
            auto res = server_->client().Post("/v1/completions", completion_body(prompts[i], 32, true), "application/json");
            if (!res || res->status != 200) return;
            bool saw_done = false;
            together[i] = streamed_tokens(res->body, saw_done);
            done[i] = saw_done;
        });
    for (auto& t : clients) t.join();
    for (size_t i = 0; i < prompts.size(); ++i) {
        EXPECT_EQ(alone[i].size(), 32u);
        EXPECT_EQ(together[i], alone[i]) << "stream " << i;
        EXPECT_TRUE(done[i]) << "stream " << i << " did not end with data: [DONE]";
    }
}

double metric(const ServerProcess& server, const std::string& name) {
    auto res = server.client().Get("/metrics");
    if (!res) return -1;
    const size_t at = res->body.find("\n" + name + " ");
    return at == std::string::npos ? -1 : std::stod(res->body.substr(at + name.size() + 2));
}

// A client that reads the first event and hangs up: its sequence is cancelled at once, long
// before its 400 tokens, and the server answers the next request.
TEST_F(ServerProcessTest, DisconnectedStreamIsCancelled) {
    const double cancelled_before = metric(*server_, "twinfer_sequences_cancelled_total");
    const double generated_before = metric(*server_, "twinfer_generated_tokens_total");
    auto c = server_->client();
    int chunks = 0;
    httplib::Request req;
    req.method = "POST";
    req.path = "/v1/completions";
    req.headers = {{"Content-Type", "application/json"}, {"Authorization", std::string("Bearer ") + api_key}};
    req.body = json{{"prompt", "Write a long story."}, {"max_tokens", 400}, {"stream", true}, {"ignore_eos", true}}.dump();
    req.content_receiver = [&](const char*, size_t, uint64_t, uint64_t) { return ++chunks < 2; };   // false: hang up
    httplib::Response res;
    httplib::Error error = httplib::Error::Success;
    c.send(req, res, error);
    EXPECT_EQ(chunks, 2);
    double cancelled = cancelled_before;
    for (int i = 0; i < 100 && cancelled == cancelled_before; ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
        cancelled = metric(*server_, "twinfer_sequences_cancelled_total");
    }
    EXPECT_EQ(cancelled, cancelled_before + 1);
    EXPECT_LT(metric(*server_, "twinfer_generated_tokens_total") - generated_before, 200);
    EXPECT_EQ(server_->post("/v1/completions", completion_body("Next", 3, false), 200)["usage"]["completion_tokens"], 3);
}

// A shared prefix is reused from a free slot and reported.
// The data of a stream's chunks, in order.
std::vector<json> stream_chunks(const std::string& sse) {
    std::vector<json> chunks;
    size_t at = 0;
    while ((at = sse.find("data: ", at)) != std::string::npos) {
        const size_t end = sse.find("\n\n", at);
        const std::string data = sse.substr(at + 6, end - at - 6);
        at = end;
        if (data != "[DONE]") chunks.push_back(json::parse(data));
    }
    return chunks;
}

// Completions' echo, as lm-evaluation-harness uses it to score a text: the prompt comes back as
// the text's start, its tokens first in logprobs (the first without a logprob), with max_tokens 0
// nothing else.
TEST_F(ServerProcessTest, EchoReturnsThePromptAndItsTokensLogprobs) {
    const std::string prompt = "The capital of France is";
    const auto body = [&](int max_tokens, bool stream) {
        return json{{"prompt", prompt}, {"max_tokens", max_tokens}, {"echo", true}, {"logprobs", 2}, {"temperature", 0}, {"stream", stream}}.dump();
    };
    const json scored = server_->post("/v1/completions", body(0, false), 200);
    const json& choice = scored["choices"][0];
    EXPECT_EQ(choice["text"], prompt);
    EXPECT_EQ(choice["finish_reason"], "length");
    EXPECT_EQ(scored["usage"]["completion_tokens"], 0);
    const json& lp = choice["logprobs"];
    const size_t n = scored["usage"]["prompt_tokens"].get<size_t>();
    ASSERT_GT(n, 3u);
    ASSERT_EQ(lp["tokens"].size(), n);
    ASSERT_EQ(lp["token_logprobs"].size(), n);
    ASSERT_EQ(lp["text_offset"].size(), n);
    EXPECT_TRUE(lp["token_logprobs"][0].is_null());
    EXPECT_TRUE(lp["top_logprobs"][0].is_null());
    std::string joined;
    for (size_t i = 0; i < n; ++i) {
        EXPECT_EQ(lp["text_offset"][i], joined.size()) << i;
        joined += lp["tokens"][i].get<std::string>();
        if (i == 0) continue;
        EXPECT_LE(lp["token_logprobs"][i].get<double>(), 0.0) << i;
        EXPECT_EQ(lp["top_logprobs"][i].size(), 2u) << i;
    }
    EXPECT_EQ(joined, prompt);

    // With tokens asked: the same prompt scores, then the greedy completion a plain request gets.
    const json both = server_->post("/v1/completions", body(4, false), 200);
    const json plain = server_->post("/v1/completions", completion_body(prompt, 4, false), 200);
    const json& blp = both["choices"][0]["logprobs"];
    ASSERT_EQ(blp["tokens"].size(), n + 4);
    for (size_t i = 1; i < n; ++i) EXPECT_EQ(blp["token_logprobs"][i], lp["token_logprobs"][i]) << i;
    EXPECT_EQ(both["choices"][0]["text"], prompt + plain["choices"][0]["text"].get<std::string>());
    EXPECT_EQ(blp["text_offset"][n], prompt.size());
    for (size_t i = 0; i < 4; ++i) EXPECT_EQ(blp["token_logprobs"][n + i], plain["choices"][0]["logprobs"]["token_logprobs"][i]) << i;

    // Streamed: the prompt and its logprobs in the first chunk, then the tokens.
    auto res = server_->client().Post("/v1/completions", body(4, true), "application/json");
    ASSERT_TRUE(res);
    ASSERT_EQ(res->status, 200);
    const std::vector<json> chunks = stream_chunks(res->body);
    ASSERT_GE(chunks.size(), 2u);
    EXPECT_EQ(chunks[0]["choices"][0]["text"], prompt);
    EXPECT_EQ(chunks[0]["choices"][0]["logprobs"]["tokens"].size(), n);
    std::string text;
    for (const json& chunk : chunks) text += chunk["choices"][0]["text"].get<std::string>();
    EXPECT_EQ(text, both["choices"][0]["text"].get<std::string>());
    // Streamed offsets count from the choice's start, as the whole answer's do (with echo and
    // without).
    const auto streamed_offsets = [](const std::vector<json>& of) {
        json offsets = json::array();
        for (const json& chunk : of)
            if (const json& l = chunk["choices"][0]["logprobs"]; l.is_object())
                for (const json& o : l["text_offset"]) offsets.push_back(o);
        return offsets;
    };
    EXPECT_EQ(streamed_offsets(chunks), blp["text_offset"]);
    auto plain_streamed = server_->client().Post("/v1/completions", completion_body(prompt, 4, true), "application/json");
    ASSERT_TRUE(plain_streamed);
    ASSERT_EQ(plain_streamed->status, 200);
    EXPECT_EQ(streamed_offsets(stream_chunks(plain_streamed->body)), plain["choices"][0]["logprobs"]["text_offset"]);

    // Token ids led by a control token (<|im_start|>): it takes no room in the text, as in
    // generated text, and every offset points at its token's text.
    const json ids = server_->post("/tokenize", json{{"content", "<|im_start|>The sky is"}}.dump(), 200)["tokens"];
    ASSERT_EQ(ids.size(), 4u);
    const json by_ids = server_->post("/v1/completions", json{{"prompt", ids}, {"max_tokens", 0}, {"echo", true}, {"logprobs", 0}}.dump(), 200);
    const std::string echoed = by_ids["choices"][0]["text"];
    EXPECT_EQ(echoed, "The sky is");
    const json& ilp = by_ids["choices"][0]["logprobs"];
    EXPECT_EQ(ilp["tokens"][0], "<|im_start|>");
    for (size_t i = 1; i < 4; ++i) {
        const std::string token = ilp["tokens"][i];
        EXPECT_EQ(echoed.substr(ilp["text_offset"][i].get<size_t>(), token.size()), token) << i;
    }

    // Without echo no tokens is no completion at all.
    expect_error("/v1/completions", json{{"prompt", prompt}, {"max_tokens", 0}}.dump(), 400, "max_tokens");
}

TEST_F(ServerProcessTest, SharedPrefixShowsInCachedTokens) {
    const std::string system = "You are a helpful assistant who answers briefly and precisely, always in English.";
    const auto chat = [&](const std::string& question) {
        return json{{"messages", {{{"role", "system"}, {"content", system}}, {{"role", "user"}, {"content", question}}}},
                    {"max_tokens", 4}, {"temperature", 0}}.dump();
    };
    server_->post("/v1/chat/completions", chat("What is two plus two?"), 200);
    const json second = server_->post("/v1/chat/completions", chat("Name a color."), 200);
    EXPECT_GE(second["usage"]["prompt_tokens_details"]["cached_tokens"].get<int>(), 15);
    EXPECT_LT(second["usage"]["prompt_tokens_details"]["cached_tokens"].get<int>(), second["usage"]["prompt_tokens"].get<int>());
}

// `serve --tensor-parallel 3`: SmolLM2's 9 heads over 3 KV heads split over three CPU ranks, one
// server process driving them. Four concurrent greedy streams each equal the same request sent
// alone to this server, and alone to the one-device server above (the split adds in another
// order: on greedy ids of 24 tokens, no near-tie moved).
TEST_F(ServerProcessTest, TensorParallelServerBatchesAsOneDevice) {
    ServerProcess split({"--parallel", "4", "-c", "512", "--tensor-parallel", "3"}, test::smollm2_path());
    std::vector<std::string> prompts;
    for (int i = 0; i < 4; ++i) prompts.push_back("Recipe " + std::to_string(i) + ": take " + std::to_string(i + 2) + " eggs and");
    std::vector<std::vector<std::string>> alone;
    for (const auto& p : prompts) {
        alone.push_back(tokens_of(split.post("/v1/completions", completion_body(p, 24, false), 200)));
        EXPECT_EQ(alone.back(), tokens_of(server_->post("/v1/completions", completion_body(p, 24, false), 200))) << p;
    }
    std::vector<std::vector<std::string>> together(prompts.size());
    std::vector<std::thread> clients;
    for (size_t i = 0; i < prompts.size(); ++i)
        clients.emplace_back([&, i] {
            auto res = split.client().Post("/v1/completions", completion_body(prompts[i], 24, true), "application/json");
            bool saw_done = false;
            if (res && res->status == 200) together[i] = streamed_tokens(res->body, saw_done);
        });
    for (auto& t : clients) t.join();
    for (size_t i = 0; i < prompts.size(); ++i) {
        EXPECT_EQ(alone[i].size(), 24u);
        EXPECT_EQ(together[i], alone[i]) << "stream " << i;
    }
}

}  // namespace
}  // namespace twinfer
