// End-to-end: the real `twinfer` binary, as a user runs it.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "common/test_data.hpp"
#include "common/tolerances.hpp"

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

std::filesystem::path stories() { return third_party_testdata() / "models" / "stories260K.gguf"; }

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
    const auto r = twinfer("verify -m " + stories().string() + " -p 'Once upon a time, there was' --path both --json");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const auto j = nlohmann::json::parse(r.out);
    ASSERT_EQ(j["paths"].size(), 2u);
    for (const auto& path : j["paths"]) {
        EXPECT_EQ(path["summary"]["same_top"], path["summary"]["positions"]) << path["path"];
        EXPECT_LE(path["summary"]["worst_relative"].get<double>(), kFloat32Tolerance) << path["path"];
    }
    EXPECT_EQ(j["paths"][0]["path"], "decode");
    EXPECT_EQ(j["paths"][0]["positions"].size(), j["ids"].size());   // every row from the decode step
}

// The worst relative error verify reports for SmolLM2 on `path` with these flags.
double smollm2_verify_error(const std::string& flags, const std::string& path) {
    const auto r = twinfer("verify -m " + smollm2_path().string() + " -t 2 --json --path " + path + " " + flags +
                           " -p 'The history of Rome is a testament to the enduring legacy of'");
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return nlohmann::json::parse(r.out)["paths"][0]["summary"]["worst_relative"].get<double>();
}

// verify's decode path reaches the quantized activations run decodes with (the prompt path,
// float products over many tokens, does not): each scheme's error lands in its own band.
TEST(CliVerify, DecodePathReportsEachActivationSchemesError) {
    TWINFER_REQUIRE_FILE(smollm2_path());
    const double int8 = smollm2_verify_error("--activations int8", "decode");
    EXPECT_GT(int8, 4 * kInt8x2Tolerance);
    EXPECT_LE(int8, kInt8Tolerance);
    const double fallback = smollm2_verify_error("--activations int8", "prompt");
    EXPECT_LE(fallback, kFloat32Tolerance);
    const double by_default = smollm2_verify_error("", "decode");
    EXPECT_GT(by_default, kFloat32Tolerance);
    EXPECT_LE(by_default, kInt8x2Tolerance);
    EXPECT_LE(smollm2_verify_error("--exact-activations", "decode"), kFloat32Tolerance);
}

// Fed run's own output, verify's fast top-1 at every generated position is the id run chose: it
// runs the code run runs (plain int8 included, where both part from the reference).
TEST(CliVerify, FollowsRunsGreedyIds) {
    TWINFER_REQUIRE_FILE(smollm2_path());
    for (const std::string flags : {"", "--activations int8"}) {
        const auto run = twinfer("run -m " + smollm2_path().string() + " -t 2 --json --temp 0 -n 24 " + flags +
                                 " -p 'The old lighthouse keeper climbed the stairs and'");
        ASSERT_EQ(run.exit_code, 0) << run.err;
        const auto file = scratch_dir() / "run.json";
        std::ofstream(file) << run.out;
        const auto r = twinfer("verify -m " + smollm2_path().string() + " -t 2 --json " + flags + " --from-run " + file.string());
        ASSERT_EQ(r.exit_code, 0) << r.err;
        const auto ran = nlohmann::json::parse(run.out), verified = nlohmann::json::parse(r.out);
        const auto& rows = verified["paths"][0]["positions"];
        const auto& ids = ran["ids"];
        ASSERT_EQ(rows.size(), ids.size() + 1) << flags;   // the last prompt position, then each generated one
        for (size_t i = 0; i < ids.size(); ++i) EXPECT_EQ(rows[i]["fast_top1"], ids[i]) << flags << " at generated token " << i;
    }
}

TEST(CliVerify, MaxErrorAndMaxKlGateTheExitCode) {
    TWINFER_REQUIRE_FILE(smollm2_path());
    const std::string base = "verify -m " + smollm2_path().string() + " -t 2 --activations int8 -p 'The capital of France is Paris.'";
    const auto failed = twinfer(base + " --max-error 1e-3");
    EXPECT_EQ(failed.exit_code, 1);
    EXPECT_NE(failed.err.find("exceeds --max-error"), std::string::npos) << failed.err;
    EXPECT_EQ(twinfer(base + " --max-kl 1e-9").exit_code, 1);
    EXPECT_EQ(twinfer(base + " --max-error 0.5 --max-kl 1").exit_code, 0);
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
