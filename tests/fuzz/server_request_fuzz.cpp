// The server's request parsing: the input is an HTTP request body, read as `twinfer serve` reads
// it (parse_body), then validated as a chat completion and as a completion (openai_api) against
// stories260K's vocabulary and the Llama 2 chat template, with the server's defaults (16 choices)
// and a context of 256. Only ApiError, the server's answer to a bad request (HTTP 4xx), may
// escape; a request that passes must be one the scheduler can run, which is checked here too.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <optional>
#include <stdexcept>
#include <sstream>
#include <string>

#include "engine/engine.hpp"
#include "server/openai_api.hpp"
#include "tests/fuzz/fuzz_data.hpp"

using namespace twinfer;
using namespace twinfer::server;

namespace {

constexpr size_t n_ctx = 256;
constexpr size_t max_choices = 16;   // twinfer serve's --max-choices default

struct Server {
    InferenceEngine engine;
    ChatTemplate chat_template;
};

std::optional<Server>& loaded_server() {
    static std::optional<Server> loaded;
    return loaded;
}

ChatTemplate read_template(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    std::ostringstream text;
    text << in.rdbuf();
    return ChatTemplate(text.str());
}

// What the scheduler relies on of a request that parsed: aborting here makes a violation a finding.
void check_runnable(const GenerationRequest& request, const InferenceEngine& engine) {
    const auto fail = [](const char* what) {
        std::cerr << "server_request_fuzz: a request passed validation but " << what << "\n";
        std::abort();
    };
    if (request.choices.empty() || request.choices.size() > max_choices) fail("has no choices or too many");
    if (request.n == 0 || request.choices.size() % request.n != 0) fail("has choices that are not prompts x n");
    if (request.top_logprobs > 20) fail("asks for more than 20 top logprobs");
    const long long n_vocab = engine.config().n_vocab;
    for (const SequenceParams& s : request.choices) {
        if (s.prompt.empty() || s.prompt.size() >= n_ctx) fail("has an empty prompt or one that fills the context");
        if (s.max_tokens == 0 || s.prompt.size() + s.max_tokens > n_ctx) fail("asks for more tokens than the context leaves");
        for (Token id : s.prompt)
            if (id < 0 || id >= n_vocab) fail("has a token id outside the vocabulary");
        const SamplingParams& p = s.sampling;
        try {
            p.validate();   // what the scheduler's SamplerChain checks
        } catch (const std::invalid_argument&) {
            fail("has sampling parameters the sampler refuses");
        }
        if (!(p.temperature <= 2) || p.top_k > n_vocab) fail("has a temperature or top_k out of range");
        for (const auto& [id, bias] : p.logit_bias)
            if (id < 0 || id >= n_vocab || !(bias >= -100 && bias <= 100))
                fail("has a logit bias outside the vocabulary or range");
    }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    BackendOptions options;
    options.model = fuzz::repo_root() / "tests/data/third_party/models/stories260K.gguf";
    options.n_ctx = n_ctx;
    options.n_threads = 1;
    try {
        loaded_server().emplace(Server{InferenceEngine::load(options), read_template(fuzz::repo_root() / "tests/tokenizer/templates/llama2.jinja")});
    } catch (const std::exception& e) {
        std::cerr << "server_request_fuzz: " << e.what() << " (set TWINFER_REPO)\n";
        std::abort();
    }
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const Server& s = *loaded_server();
    const ApiContext context{s.engine, &s.chat_template, n_ctx, max_choices};
    json body;
    try {
        body = parse_body(std::string(reinterpret_cast<const char*>(data), size));
    } catch (const ApiError&) {
        return 0;
    }
    try {
        check_runnable(parse_chat_request(body, context), s.engine);
    } catch (const ApiError&) {
    }
    try {
        check_runnable(parse_completion_request(body, context), s.engine);
    } catch (const ApiError&) {
    }
    return 0;
}
