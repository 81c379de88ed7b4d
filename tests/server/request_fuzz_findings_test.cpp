// Inputs server_request_fuzz (tests/fuzz, docs/reliability.md) found misparsed, kept as regression
// tests: each request body as the fuzzer fed it, parsed as the server parses it.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "common/test_data.hpp"
#include "engine/engine.hpp"
#include "server/openai_api.hpp"

namespace twinfer::server {
namespace {

constexpr size_t n_ctx = 256;

const InferenceEngine& stories() {
    static const InferenceEngine engine = [] {
        BackendOptions options;
        options.model = test::third_party_testdata() / "models" / "stories260K.gguf";
        options.n_ctx = n_ctx;
        options.n_threads = 1;
        return InferenceEngine::load(options);
    }();
    return engine;
}

GenerationRequest parse_completion(const std::string& body) {
    return parse_completion_request(parse_body(body), ApiContext{stories(), nullptr, n_ctx, 16});
}

// Finding 11 ({"prompt": "x", "seed": 9223372036854775807.0}): an integral float of 2^63 passed
// the range check of an integer field whose upper bound is LLONG_MAX (which as a double rounds up
// to 2^63), and its conversion to long long overflowed (UBSan: outside the range of representable
// values). It is out of range, as 2^63 written as an integer already was.
TEST(ServerRequestFuzzFindings, IntegralFloatsFrom2To63AreOutOfRange) {
    for (const std::string seed : {"9223372036854775807.0", "9223372036854775808.0", "1e19", "1.8446744073709552e19"}) {
        try {
            parse_completion(R"({"prompt": "x", "seed": )" + seed + "}");
            ADD_FAILURE() << "seed " << seed << " was accepted";
        } catch (const ApiError& e) {
            EXPECT_EQ(e.status, 400) << seed;
            EXPECT_EQ(e.param, "seed") << seed;
            EXPECT_NE(std::string(e.what()).find("out of range"), std::string::npos) << e.what();
        }
    }
    // The largest double below 2^63 and the smallest long long are still seeds.
    EXPECT_EQ(parse_completion(R"({"prompt": "x", "seed": 9223372036854774784.0})").choices[0].sampling.seed, 9223372036854774784ull);
    EXPECT_EQ(parse_completion(R"({"prompt": "x", "seed": -9223372036854775808.0})").choices[0].sampling.seed, 9223372036854775808ull);
}

// Finding 12 ({"prompt": "x", "seed": 18446744073709551616, "max_tokens": 2e308, ...}, a seed
// input mutated): nlohmann's parser throws json::out_of_range (406, number overflow) for a number
// beyond double; parse_body caught only json::parse_error, so the server answered 500 "internal
// error" instead of 400. Any JSON exception is now the client's bad body.
TEST(ServerRequestFuzzFindings, ANumberBeyondDoubleIsInvalidJson) {
    for (const std::string& number : std::vector<std::string>{"2e308", "-1e400", "1" + std::string(400, '0')}) {
        try {
            parse_body(R"({"prompt": "x", "max_tokens": )" + number + "}");
            ADD_FAILURE() << number << " was accepted";
        } catch (const ApiError& e) {
            EXPECT_EQ(e.status, 400);
            EXPECT_EQ(e.code, "invalid_json");
            EXPECT_NE(std::string(e.what()).find("number overflow"), std::string::npos) << e.what();
        }
    }
}

}  // namespace
}  // namespace twinfer::server
