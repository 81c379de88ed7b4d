// End-to-end: the real `twinfer` binary, as a user runs it.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "cli/twinfer_process.hpp"
#include "common/test_data.hpp"
#include "common/tolerances.hpp"
#include "compute/context.hpp"

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
        {"run -m " + model + " -p hi --threads -2", "--threads: -2 is not allowed (0 or more; 0 or -1: every core)"},
        {"run -m " + model + " -hf ggml-org/gemma-3-1b-it-GGUF -p hi", "unknown option '-hf'"},
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

TEST(CliConfig, UnknownKeysAreErrorsNamingTheKey) {
    TWINFER_REQUIRE_FILE(stories());
    const auto cfg = scratch_dir() / "typo.toml";
    for (const auto& [text, key] : std::vector<std::pair<std::string, std::string>>{
             {"modle = \"x.gguf\"\n", "'modle'"}, {"[generation]\ntemprature = 0.5\n", "'generation.temprature'"}}) {
        std::ofstream(cfg) << text;
        const auto r = twinfer("run --config " + cfg.string() + " -m " + stories().string() + " -p hi");
        EXPECT_EQ(r.exit_code, 2) << text;
        EXPECT_EQ(line_count(r.err), 1u) << r.err;
        EXPECT_NE(r.err.find("unknown key " + key), std::string::npos) << r.err;
    }
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

// -d: each test after a cache of D tokens, in llama-bench's names; the context is sized for the
// deepest test, so a depth beyond a given --ctx-size is an error.
TEST(CliBench, TestsAtDepth) {
    TWINFER_REQUIRE_FILE(stories());
    const auto r = twinfer("bench -m " + stories().string() + " -p 8 -n 4 -d 0,40 -r 1 -o json");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const auto j = nlohmann::json::parse(r.out);
    ASSERT_EQ(j.size(), 4u);
    EXPECT_EQ(j[0]["test"], "pp8");
    EXPECT_EQ(j[1]["test"], "tg4");
    EXPECT_EQ(j[2]["test"], "pp8 @ d40");
    EXPECT_EQ(j[3]["test"], "tg4 @ d40");
    EXPECT_EQ(j[3]["n_depth"], 40);
    const auto too_deep = twinfer("bench -m " + stories().string() + " -p 8 -n 4 -d 64 -c 32");
    EXPECT_EQ(too_deep.exit_code, 2);
    EXPECT_NE(too_deep.err.find("a test needs 72 tokens but the context holds 32"), std::string::npos) << too_deep.err;
}

// perplexity's decode path scores the same text a token at a time and says which path it scored;
// on stories260K (float weights: no activation quantization on either path) the two agree.
TEST(CliPerplexity, DecodePathScoresWhatThePromptPathScores) {
    TWINFER_REQUIRE_FILE(stories());
    const std::string text = (repo_root() / "bench/agreement/texts/Apache-2.0.txt").string();
    std::map<std::string, double> ppl;
    for (const std::string path : {"prompt", "decode"}) {
        const auto r = twinfer("perplexity -m " + stories().string() + " -f " + text + " -c 128 --chunks 3 --no-progress --path " + path);
        ASSERT_EQ(r.exit_code, 0) << r.err;
        const std::string label = "Final estimate: PPL = ";
        const size_t at = r.out.find(label);
        ASSERT_NE(at, std::string::npos) << r.out;
        EXPECT_NE(r.out.find("(" + path + " path)"), std::string::npos) << r.out;
        ppl[path] = std::stod(r.out.substr(at + label.size()));
    }
    EXPECT_GT(ppl["prompt"], 1.0);
    EXPECT_NEAR(ppl["decode"], ppl["prompt"], 1e-5 * ppl["prompt"]);
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

// The worst relative error verify reports for SmolLM2 on `path` with these flags, on the CPU (whose
// default scheme the bands below describe).
double smollm2_verify_error(const std::string& flags, const std::string& path) {
    const auto r = twinfer("verify -m " + smollm2_path().string() + " --device cpu -t 2 --json --path " + path + " " + flags +
                           " -p 'The history of Rome is a testament to the enduring legacy of'");
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return nlohmann::json::parse(r.out)["paths"][0]["summary"]["worst_relative"].get<double>();
}

// verify reaches the quantized activations on both paths: the decode step's products and a
// prompt's tiled ones (int8 too on AVX-512 VNNI; the float tiles elsewhere, where the prompt path
// is float-exact): each scheme's error lands in its own band.
TEST(CliVerify, EachPathReportsEachActivationSchemesError) {
    TWINFER_REQUIRE_FILE(smollm2_path());
    const double int8 = smollm2_verify_error("--activations int8", "decode");
    EXPECT_GT(int8, 4 * kInt8x2Tolerance);
    EXPECT_LE(int8, kInt8Tolerance);
    const double by_default = smollm2_verify_error("", "decode");
    EXPECT_GT(by_default, kFloat32Tolerance);
    EXPECT_LE(by_default, kInt8x2Tolerance);
    EXPECT_LE(smollm2_verify_error("--exact-activations", "decode"), kFloat32Tolerance);
    const bool int8_prompts = compute::best_cpu_isa() == compute::CpuIsa::AVX512;
    const double int8_prompt = smollm2_verify_error("--activations int8", "prompt");
    EXPECT_LE(int8_prompt, int8_prompts ? kInt8Tolerance : kFloat32Tolerance);
    if (int8_prompts) {
        EXPECT_GT(int8_prompt, 4 * kInt8x2Tolerance);
    }
    EXPECT_LE(smollm2_verify_error("", "prompt"), int8_prompts ? kInt8x2Tolerance : kFloat32Tolerance);
    EXPECT_LE(smollm2_verify_error("--exact-activations", "prompt"), kFloat32Tolerance);
}

// Fed run's own output, verify's fast top-1 at every generated position is the id run chose: it
// runs the code run runs (plain int8 included, where both part from the reference), on the device
// both pick (the GPU where there is one).
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
    const auto r = twinfer("run -m " + smollm2_path().string() + " --device cpu --json --temp 0 -n 8 -p 'The capital of France is'");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const auto j = nlohmann::json::parse(r.out);
    EXPECT_EQ(j["prompt_ids"], (nlohmann::json{504, 3575, 282, 4649, 314}));
    EXPECT_EQ(j["ids"], expected);
    EXPECT_EQ(j["text"], " Paris.\n\nThe answer is:");
}

}  // namespace
}  // namespace twinfer::test

namespace twinfer::test {
namespace {

TEST(CliErrors, RangeErrorsSayWhatIsAllowed) {
    TWINFER_REQUIRE_FILE(stories());
    const std::string run = "run -m " + stories().string() + " -p hi ";
    const std::vector<std::pair<std::string, std::string>> cases = {
        {"-t -5", "--threads: -5 is not allowed (0 or more; 0 or -1: every core)"},
        {"-c -1", "--ctx-size: -1 is not allowed (0 or more; 0: the model's trained length)"},
        {"-n -5", "--max-tokens: -5 is not allowed (-1 or more; -1: no limit)"},
        {"--top-k -1", "--top-k: -1 is not allowed (0 or more; 0: off)"},
        {"--temp 200", "--temp: 200 is not allowed (0 to 100)"},
        {"--seed -2", "--seed: -2 is not allowed (-1 to 4294967294; -1: random)"},
        {"--repeat-last-n -3", "--repeat-last-n: -3 is not allowed (-1 or more; -1: all, 0: off)"},
        {"--tensor-parallel 0", "--tensor-parallel: 0 is not allowed (1 to 64)"},
    };
    for (const auto& [flags, message] : cases) {
        const auto r = twinfer(run + flags);
        EXPECT_EQ(r.exit_code, 2) << flags << "\n" << r.err;
        EXPECT_EQ(r.err, "twinfer: error: " + message + "\n") << flags;
    }
    const auto bench = twinfer("bench -m " + stories().string() + " -r 0");
    EXPECT_EQ(bench.err, "twinfer: error: --repetitions: 0 is not allowed (1 to 1000)\n");
}

// CLI11 alone reads "-hf" as "-h -f" and prints the help with exit code 0.
TEST(CliErrors, LlamaCppFlagsTwinferLacksAreUnknownOptions) {
    TWINFER_REQUIRE_FILE(stories());
    for (const std::string args : {"run -hf ggml-org/gemma-3-1b-it-GGUF", "chat -hf x/y", "-hf x/y", "info -hfr x/y"}) {
        const auto r = twinfer(args);
        EXPECT_EQ(r.exit_code, 2) << args << "\n" << r.out;
        EXPECT_NE(r.err.find("unknown option '-hf"), std::string::npos) << args << "\n" << r.err;
        EXPECT_EQ(r.out.find("Usage"), std::string::npos) << args;
    }
    // Values attached to short options still work.
    const auto attached = twinfer("run -m " + stories().string() + " --json --temp 0 --ignore-eos -n7 -phello");
    ASSERT_EQ(attached.exit_code, 0) << attached.err;
    EXPECT_EQ(nlohmann::json::parse(attached.out)["ids"].size(), 7u);
}

TEST(CliRun, ThreadsMinusOneIsEveryCoreAndMoreThanTheCoresWarns) {
    TWINFER_REQUIRE_FILE(stories());
    const std::string run = "run -m " + stories().string() + " --json --temp 0 -n 4 -p 'Once upon a time' ";
    const auto every_core = twinfer(run + "-t -1");
    ASSERT_EQ(every_core.exit_code, 0) << every_core.err;
    EXPECT_EQ(every_core.err.find("warn"), std::string::npos) << every_core.err;
    const unsigned cores = std::thread::hardware_concurrency();
    const std::string more = std::to_string(cores + 1);
    const auto too_many = twinfer(run + "-t " + more);
    ASSERT_EQ(too_many.exit_code, 0) << too_many.err;
    EXPECT_NE(too_many.err.find("twinfer: warn: --threads " + more + " is more than the " + std::to_string(cores) + " cores of this machine"),
              std::string::npos)
        << too_many.err;
    EXPECT_EQ(nlohmann::json::parse(too_many.out)["ids"], nlohmann::json::parse(every_core.out)["ids"]);
}

// SmolLM2: 30 layers x 2 x 10^7 positions x 192 (3 KV heads of 64) x 4 bytes = 429.2 GiB.
TEST(CliErrors, AContextTooLargeForMemorySaysWhatItNeeds) {
    TWINFER_REQUIRE_FILE(smollm2_path());
    const auto r = twinfer("run -m " + smollm2_path().string() + " --device cpu -c 10000000 -p hi");
    EXPECT_EQ(r.exit_code, 1) << r.err;
    EXPECT_EQ(line_count(r.err), 1u) << r.err;
    EXPECT_NE(r.err.find("needs 429.2 GiB (30 layers x 2 x 10000000 positions x 192 x 4 bytes)"), std::string::npos) << r.err;
    EXPECT_EQ(r.err.find("bad_alloc"), std::string::npos) << r.err;
}

// docs/user-guide.md: 2 for a mistake the user can fix, 1 for a failure while running, 0 for success.
TEST(CliExitCodes, EveryCommandFollowsOneRule) {
    TWINFER_REQUIRE_FILE(stories());
    const std::string model = stories().string();
    const auto garbage = scratch_dir() / "broken.gguf";
    std::ofstream(garbage) << "GGUF\x03\x00\x00\x00 truncated";
    const auto typo = scratch_dir() / "typo-key.toml";
    std::ofstream(typo) << "temprature = 1\n";
    const std::vector<std::pair<std::string, int>> cases = {
        {"info " + model, 0},
        {"tokenize -m " + model + " --ids hello", 0},
        {"run -m " + model + " -n 2 -p hi", 0},
        {"frobnicate", 2},
        {"run -hf x/y", 2},
        {"run -m " + model + " -p hi --top-p 2", 2},
        {"run -m " + model + " -c 8 -p 'Once upon a time there was a little girl named Lily who'", 2},
        {"run --config " + typo.string() + " -m " + model + " -p hi", 2},
        {"info /nonexistent.gguf", 2},
        {"tokenize -m /nonexistent.gguf hi", 2},
        {"chat -m /nonexistent.gguf", 2},
        {"chat -m " + model, 2},   // no chat template
        {"bench -m " + model + " -p -1", 2},
        {"bench -m " + model + " -d -5", 2},
        {"perplexity -m " + model + " -f /nonexistent.txt", 2},
        {"verify -m " + model + " --precision f64", 2},
        {"run -m " + garbage.string() + " -p hi", 1},
        {"info " + garbage.string(), 1},
        {"verify -m " + model + " -p 'Once upon a time' --max-error 1e-30", 1},
    };
    for (const auto& [args, code] : cases) {
        const auto r = twinfer(args);
        EXPECT_EQ(r.exit_code, code) << args << "\n" << r.err;
        if (code != 0) {
            EXPECT_EQ(line_count(r.err), 1u) << args << "\n" << r.err;
        }
    }
}

// Greedy on stories260K ends its first story with <s> (id 1, a control token) and starts another.
TEST(CliRun, ControlTokensArePrintedOnlyWithSpecial) {
    TWINFER_REQUIRE_FILE(stories());
    const std::string run = "run -m " + stories().string() + " --temp 0 -n 400 -p 'Once upon a time'";
    const auto plain = twinfer(run + " --json");
    ASSERT_EQ(plain.exit_code, 0) << plain.err;
    const auto j = nlohmann::json::parse(plain.out);
    ASSERT_NE(std::find(j["ids"].begin(), j["ids"].end(), 1), j["ids"].end()) << "no <s> (id 1) in 400 greedy tokens";
    EXPECT_EQ(j["text"].get<std::string>().find("<s>"), std::string::npos);
    const auto special = twinfer(run + " --json --special");
    ASSERT_EQ(special.exit_code, 0) << special.err;
    EXPECT_NE(nlohmann::json::parse(special.out)["text"].get<std::string>().find("<s>"), std::string::npos);
    EXPECT_EQ(twinfer(run).out.find("<s>"), std::string::npos);
    EXPECT_NE(twinfer(run + " --special").out.find("<s>"), std::string::npos);
}

// Starts `twinfer args`, sends it SIGINT once it has written to stdout (streaming) or after a
// second (--json writes only at the end), and collects what it printed.
CommandResult interrupted(const std::vector<std::string>& args, bool wait_for_output) {
    const auto out = scratch_dir() / "sigint.out", err = scratch_dir() / "sigint.err";
    const pid_t pid = fork();
    if (pid == 0) {
        if (!freopen(out.c_str(), "w", stdout) || !freopen(err.c_str(), "w", stderr)) _exit(127);
        exec_twinfer(args);
    }
    const auto has_output = [&] {
        std::error_code ec;
        const auto size = std::filesystem::file_size(out, ec);
        return !ec && size > 0;
    };
    for (int i = 0; i < 300 && wait_for_output && !has_output(); ++i) usleep(100 * 1000);
    usleep(1000 * 1000);
    kill(pid, SIGINT);
    int status = 0;
    for (int i = 0; i < 300 && waitpid(pid, &status, WNOHANG) == 0; ++i) usleep(100 * 1000);
    if (waitpid(pid, &status, WNOHANG) == 0) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
        ADD_FAILURE() << "twinfer did not stop within 30 s of SIGINT";
    }
    return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, slurp(out), slurp(err)};
}

TEST(CliRun, CtrlCStopsGenerationWithTheSummaryOrTheJson) {
    TWINFER_REQUIRE_FILE(stories());
    const std::vector<std::string> args = {"run", "-m", stories().string(), "-c", "100000", "-n", "100000", "--ignore-eos", "--temp", "0",
                                           "-p", "Once upon a time"};
    const auto streamed = interrupted(args, true);
    EXPECT_EQ(streamed.exit_code, 130) << streamed.err;
    EXPECT_FALSE(streamed.out.empty());
    EXPECT_EQ(line_count(streamed.err), 1u) << streamed.err;
    EXPECT_NE(streamed.err.find("stop: cancelled"), std::string::npos) << streamed.err;

    auto json_args = args;
    json_args.push_back("--json");
    const auto json = interrupted(json_args, false);
    EXPECT_EQ(json.exit_code, 130) << json.err;
    const auto j = nlohmann::json::parse(json.out);
    EXPECT_EQ(j["stop_reason"], "cancelled");
    EXPECT_GT(j["ids"].size(), 0u);
    EXPECT_LT(j["ids"].size(), 100000u);
}

}  // namespace
}  // namespace twinfer::test
