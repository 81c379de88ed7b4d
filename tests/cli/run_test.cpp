// End-to-end: the real `twinfer` binary, as a user runs it.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "common/test_data.hpp"

namespace twinfer::test {
namespace {

struct CommandResult {
    int exit_code;
    std::string out;
    std::string err;
};

std::string slurp(const std::filesystem::path& p) {
    std::ifstream in(p, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

// Runs the binary with `args` (shell-quoted by the caller), stdin from /dev/null unless given.
CommandResult twinfer(const std::string& args, const std::string& stdin_text = {}) {
    static int counter = 0;
    const auto dir = scratch_dir();
    const auto id = std::to_string(counter++);
    const auto out = dir / ("run" + id + ".out"), err = dir / ("run" + id + ".err"), in = dir / ("run" + id + ".in");
    std::ofstream(in) << stdin_text;
    // HOME points at an empty folder so no user config file leaks into the test.
    const std::string cmd = "HOME=" + dir.string() + " XDG_CONFIG_HOME= " + twinfer_binary().string() + " " + args + " <" + in.string() +
                            " >" + out.string() + " 2>" + err.string();
    const int status = std::system(cmd.c_str());
    return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, slurp(out), slurp(err)};
}

std::filesystem::path stories() { return shared_testdata() / "models" / "stories260K.gguf"; }

size_t line_count(const std::string& s) { return std::count(s.begin(), s.end(), '\n'); }

TEST(CliErrors, BadInputIsAOneLineErrorWithExitCode2) {
    const auto dir = scratch_dir();
    std::ofstream(dir / "not-a-model.gguf") << "hello, I am not a GGUF file";
    const std::string model = stories().string();
    const std::vector<std::pair<std::string, std::string>> cases = {
        {"run -m /nonexistent/model.gguf -p hi", "model file not found"},
        {"run -m " + dir.string() + " -p hi", "directory"},
        {"run -m " + model + " -p hi --top-p 2", "top-p"},
        {"run -m " + model + " -p hi -n -5", "max-tokens"},
        {"run -m " + model + " -p hi --threads -1", "threads"},
        {"frobnicate", "frobnicate"},
        {"run -m " + model + " --tokens 1,x", "--tokens"},
        {"run -m " + model + " --tokens 1,99999", "--tokens"},
        {"run -m " + model + " -p hi --device tpu", "device"},
        {"run --config /nonexistent.toml -m " + model + " -p hi", "config file not found"},
    };
    for (const auto& [args, needle] : cases) {
        const auto r = twinfer(args);
        EXPECT_EQ(r.exit_code, 2) << args << "\n" << r.err;
        EXPECT_EQ(line_count(r.err), 1u) << args << "\n" << r.err;
        EXPECT_NE(r.err.find(needle), std::string::npos) << args << "\n" << r.err;
        EXPECT_EQ(r.err.find("terminate"), std::string::npos) << args;
    }
}

TEST(CliErrors, NonGgufFileIsAnErrorNotACrash) {
    const auto path = scratch_dir() / "garbage.gguf";
    std::ofstream(path) << "GGUF\x03\x00\x00\x00 truncated";
    const auto r = twinfer("run -m " + path.string() + " -p hi");
    EXPECT_EQ(r.exit_code, 1) << r.err;
    EXPECT_EQ(line_count(r.err), 1u) << r.err;
    EXPECT_NE(r.err.find("garbage.gguf"), std::string::npos) << r.err;
}

TEST(CliRun, GreedyOnStoriesIsTheModelsOwnGreedyText) {
    TWINFER_REQUIRE_FILE(stories());
    const auto r = twinfer("run -m " + stories().string() + " --json --temp 0 -n 24 -p 'Once upon a time'");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const auto j = nlohmann::json::parse(r.out);
    EXPECT_EQ(j["ids"].size(), 24u);
    EXPECT_NE(j["text"].get<std::string>().find("there was a little"), std::string::npos) << j["text"];
    // The same run twice gives the same ids; the f64 reference agrees with the f32 model.
    const auto again = nlohmann::json::parse(twinfer("run -m " + stories().string() + " --json --temp 0 -n 24 -p 'Once upon a time'").out);
    EXPECT_EQ(j["ids"], again["ids"]);
    const auto ref = twinfer("run -m " + stories().string() + " --precision f64 --json --temp 0 -n 24 -p 'Once upon a time'");
    ASSERT_EQ(ref.exit_code, 0) << ref.err;
    EXPECT_EQ(j["ids"], nlohmann::json::parse(ref.out)["ids"]);
}

TEST(CliRun, StreamsTextAndReportsSpeedOnStderr) {
    TWINFER_REQUIRE_FILE(stories());
    const auto r = twinfer("run -m " + stories().string() + " --temp 0 -n 16 -p 'Once upon a time'");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_FALSE(r.out.empty());
    EXPECT_NE(r.err.find("tok/s"), std::string::npos) << r.err;
}

TEST(CliRun, PromptFromStdinAndFromFileAndSeededSamplingIsReproducible) {
    TWINFER_REQUIRE_FILE(stories());
    const auto file = scratch_dir() / "prompt.txt";
    std::ofstream(file) << "Once upon a time";
    const std::string common = "run -m " + stories().string() + " --json -n 16 --seed 7 --temp 1.0";
    const auto a = twinfer(common + " -f " + file.string());
    const auto b = twinfer(common, "Once upon a time");
    ASSERT_EQ(a.exit_code, 0) << a.err;
    ASSERT_EQ(b.exit_code, 0) << b.err;
    EXPECT_EQ(nlohmann::json::parse(a.out)["ids"], nlohmann::json::parse(b.out)["ids"]);
}

TEST(CliRun, StopStringEndsGenerationAndIsNotPrinted) {
    TWINFER_REQUIRE_FILE(stories());
    const auto r = twinfer("run -m " + stories().string() + " --json --temp 0 -n 64 --stop Lily -p 'Once upon a time'");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const auto j = nlohmann::json::parse(r.out);
    EXPECT_EQ(j["stop_reason"], "stop string");
    EXPECT_EQ(j["text"].get<std::string>().find("Lily"), std::string::npos);
}

TEST(CliConfig, CommandLineOverridesConfigFile) {
    TWINFER_REQUIRE_FILE(stories());
    const auto cfg = scratch_dir() / "twinfer.toml";
    std::ofstream(cfg) << "model = \"" << stories().string() << "\"\n[generation]\nmax_tokens = 5\ntemperature = 0.0\n";
    const auto from_config = twinfer("run --config " + cfg.string() + " --json -p 'Once upon a time'");
    ASSERT_EQ(from_config.exit_code, 0) << from_config.err;
    EXPECT_EQ(nlohmann::json::parse(from_config.out)["ids"].size(), 5u);
    const auto overridden = twinfer("run --config " + cfg.string() + " --json -n 9 -p 'Once upon a time'");
    ASSERT_EQ(overridden.exit_code, 0) << overridden.err;
    EXPECT_EQ(nlohmann::json::parse(overridden.out)["ids"].size(), 9u);
    std::ofstream(cfg) << "model = 3\n";
    const auto bad = twinfer("run --config " + cfg.string() + " -p hi");
    EXPECT_EQ(bad.exit_code, 2);
    EXPECT_NE(bad.err.find("model"), std::string::npos) << bad.err;
}

TEST(CliRun, PromptLongerThanContextIsAnError) {
    TWINFER_REQUIRE_FILE(stories());
    const auto r = twinfer("run -m " + stories().string() + " -c 8 -p 'Once upon a time there was a little girl named Lily who'");
    EXPECT_NE(r.exit_code, 0);
    EXPECT_NE(r.err.find("context"), std::string::npos) << r.err;
}

TEST(CliHelp, EveryCommandHasHelp) {
    for (const char* cmd : {"run", "chat", "bench", "perplexity", "verify", "info", "tokenize", "detokenize"}) {
        const auto r = twinfer(std::string(cmd) + " --help");
        EXPECT_EQ(r.exit_code, 0) << cmd << r.err;
        EXPECT_NE(r.out.find("Usage"), std::string::npos) << cmd;
    }
}

TEST(CliBench, ReportsPromptAndGenerationSpeed) {
    TWINFER_REQUIRE_FILE(stories());
    const auto r = twinfer("bench -m " + stories().string() + " -p 16 -n 8 -r 2 -o json");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const auto j = nlohmann::json::parse(r.out);
    ASSERT_EQ(j.size(), 2u);
    EXPECT_EQ(j[0]["test"], "pp16");
    EXPECT_EQ(j[1]["test"], "tg8");
    EXPECT_GT(j[1]["avg_ts"].get<double>(), 0.0);
}

TEST(CliVerify, ReferenceAndFastModelAgreeOnStories) {
    TWINFER_REQUIRE_FILE(stories());
    const auto r = twinfer("verify -m " + stories().string() + " -p 'Once upon a time, there was'");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.out.find("top-1 agreement"), std::string::npos);
    EXPECT_EQ(r.out.find("NO ("), std::string::npos) << r.out;
}

}  // namespace
}  // namespace twinfer::test

namespace twinfer::test {
namespace {

TEST(CliRun, SmolLM2GreedyMatchesTheReferenceIds) {
    TWINFER_REQUIRE_FILE(smollm2_path());
    // GPTModel's greedy continuation (tests/models/gpt_model_test.cpp), which transformers'
    // own greedy decoding of this GGUF also gives: " Paris.\n\nThe answer is:".
    const nlohmann::json expected = {7042, 30, 198, 198, 504, 2988, 314, 42};
    const auto r = twinfer("run -m " + smollm2_path().string() + " --json --temp 0 -n 8 -p 'The capital of France is'");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const auto j = nlohmann::json::parse(r.out);
    EXPECT_EQ(j["prompt_ids"], (nlohmann::json{504, 3575, 282, 4649, 314}));
    EXPECT_EQ(j["ids"], expected);
    EXPECT_EQ(j["text"], " Paris.\n\nThe answer is:");
}

}  // namespace
}  // namespace twinfer::test
