// `twinfer chat` driven through a pseudo-terminal, as a person would type into it: readline, the
// slash commands, Ctrl-C during an answer.
#include <gtest/gtest.h>
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <sstream>
#include <nlohmann/json.hpp>

#include "cli/twinfer_process.hpp"
#include "common/test_data.hpp"
#include "engine/backend.hpp"

namespace twinfer::test {
namespace {

class PtySession {
public:
    explicit PtySession(const std::vector<std::string>& args) {
        struct winsize ws {};
        ws.ws_row = 50;
        ws.ws_col = 200;
        pid_ = forkpty(&fd_, nullptr, nullptr, &ws);
        if (pid_ < 0) throw std::runtime_error("forkpty failed");
        if (pid_ == 0) {
            setenv("TERM", "dumb", 1);
            exec_twinfer(args);
        }
    }
    ~PtySession() {
        if (pid_ > 0) {
            kill(pid_, SIGKILL);
            waitpid(pid_, nullptr, 0);
        }
        if (fd_ >= 0) close(fd_);
    }

    void send(const std::string& text) { [[maybe_unused]] auto n = write(fd_, text.data(), text.size()); }

    // Reads until `needle` appears in the output after `from` (default: what is new since the
    // last call); returns the text read since the last call. Fails the test on timeout.
    std::string expect(const std::string& needle, int timeout_seconds = 120) {
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_seconds);
        while (output_.find(needle, consumed_) == std::string::npos) {
            const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()).count();
            if (left <= 0) {
                ADD_FAILURE() << "timed out waiting for '" << needle << "'; output so far:\n" << output_.substr(consumed_);
                return {};
            }
            struct pollfd p {fd_, POLLIN, 0};
            if (poll(&p, 1, static_cast<int>(left)) <= 0) continue;
            char buf[4096];
            const ssize_t n = read(fd_, buf, sizeof buf);
            if (n <= 0) {
                ADD_FAILURE() << "chat exited while waiting for '" << needle << "'; output:\n" << output_.substr(consumed_);
                return {};
            }
            output_.append(buf, n);
        }
        const size_t end = output_.find(needle, consumed_) + needle.size();
        std::string seen = output_.substr(consumed_, end - consumed_);
        consumed_ = end;
        return seen;
    }

    int wait_exit() {
        int status = 0;
        for (int i = 0; i < 200; ++i) {
            if (waitpid(pid_, &status, WNOHANG) == pid_) {
                pid_ = -1;
                return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
            }
            char buf[4096];
            [[maybe_unused]] auto n = read(fd_, buf, sizeof buf);
            usleep(50000);
        }
        return -2;
    }

private:
    pid_t pid_ = -1;
    int fd_ = -1;
    std::string output_;
    size_t consumed_ = 0;
};

const std::string kPrompt = "\n> ";

std::filesystem::path stories() { return third_party_testdata() / "models" / "stories260K.gguf"; }

TEST(CliChat, TwoTurnsWithCommandsThroughAPseudoTerminal) {
    const auto model = smollm2_path();
    TWINFER_REQUIRE_FILE(model);
    const auto history = scratch_dir() / "chat-history.json";
    PtySession chat({"chat", "-m", model.string(), "--temp", "0", "-n", "24", "-t", "2", "--device", "cpu"});
    chat.expect("/help for commands");
    chat.expect("> ");

    chat.send("/system You are a concise assistant.\r");
    chat.expect("system prompt set");
    chat.expect(kPrompt);

    chat.send("What is the capital of France?\r");
    const std::string first = chat.expect(kPrompt);
    EXPECT_NE(first.find("Paris"), std::string::npos) << first;

    chat.send("/stats\r");
    const std::string stats = chat.expect(kPrompt);
    EXPECT_NE(stats.find("turns: 1"), std::string::npos) << stats;
    EXPECT_NE(stats.find("tok/s"), std::string::npos) << stats;

    chat.send("/save " + history.string() + "\r");
    chat.expect("saved 2 messages");
    chat.expect(kPrompt);

    chat.send("And the capital of Germany?\r");
    const std::string second = chat.expect(kPrompt);
    EXPECT_NE(second.find("Berlin"), std::string::npos) << second;
    chat.send("/stats\r");
    const std::string stats2 = chat.expect(kPrompt);
    EXPECT_NE(stats2.find("turns: 2"), std::string::npos) << stats2;
    EXPECT_EQ(stats2.find("(0 reused)"), std::string::npos) << "the second turn should reuse the cache\n" << stats2;

    // /load replaces the conversation, and the next turn follows the loaded one.
    chat.send("/load " + history.string() + "\r");
    chat.expect("loaded 2 messages");
    chat.expect(kPrompt);
    chat.send("And the capital of Italy?\r");
    EXPECT_NE(chat.expect(kPrompt).find("Rome"), std::string::npos);
    chat.send("/stats\r");
    EXPECT_NE(chat.expect(kPrompt).find("turns: 2"), std::string::npos);

    chat.send("/precision f64\r");
    EXPECT_NE(chat.expect(kPrompt).find("now: GPTModel (f64, cpu)"), std::string::npos);
    chat.send("/precision f32\r");
    EXPECT_NE(chat.expect(kPrompt).find("now: F32LlamaModel (f32, cpu"), std::string::npos);

    chat.send("/config\r");
    const std::string config = chat.expect(kPrompt);
    EXPECT_NE(config.find("model = '" + model.string() + "'"), std::string::npos) << config;
    EXPECT_NE(config.find("temperature = 0.0"), std::string::npos) << config;
    EXPECT_NE(config.find("system_prompt = 'You are a concise assistant.'"), std::string::npos) << config;

    // /model loads another file: a copy of the model at another path, then one that has no chat
    // template (refused, the copy stays) and one that does not exist.
    const auto copy = scratch_dir() / "smollm2-copy.gguf";
    std::filesystem::copy_file(model, copy, std::filesystem::copy_options::overwrite_existing);
    chat.send("/model " + copy.string() + "\r");
    EXPECT_NE(chat.expect(kPrompt).find("now: F32LlamaModel (f32, cpu"), std::string::npos);
    chat.send("/model " + stories().string() + "\r");
    EXPECT_NE(chat.expect(kPrompt).find("error: " + stories().string() + " has no chat template"), std::string::npos);
    chat.send("/model /nonexistent.gguf\r");
    EXPECT_NE(chat.expect(kPrompt).find("error: model file not found: /nonexistent.gguf"), std::string::npos);
    chat.send("/stats\r");
    EXPECT_NE(chat.expect(kPrompt).find("model: " + copy.string() + " (loaded in"), std::string::npos);

    chat.send("/exit\r");
    EXPECT_EQ(chat.wait_exit(), 0);

    std::ifstream in(history);
    const auto saved = nlohmann::json::parse(in);
    ASSERT_EQ(saved["messages"].size(), 2u);
    EXPECT_EQ(saved["messages"][0]["content"], "What is the capital of France?");
    EXPECT_EQ(saved["system_prompt"], "You are a concise assistant.");
}

// Without a GPU (CI, the CPU-only machines) /backend cuda is an error and the CPU model stays.
// Where a GPU is present the command would switch instead, so the test is skipped there.
TEST(CliChat, BackendCudaWithoutAGpuIsAnErrorAndTheCpuModelStays) {
    if (cuda_device_available()) GTEST_SKIP() << "a GPU is present: /backend cuda would switch";
    const auto model = smollm2_path();
    TWINFER_REQUIRE_FILE(model);
    PtySession chat({"chat", "-m", model.string(), "--temp", "0", "-n", "8", "-t", "2", "--device", "cpu"});
    chat.expect("> ");
    chat.send("/backend cuda\r");
    const std::string backend = chat.expect(kPrompt);
    EXPECT_NE(backend.find("error: "), std::string::npos) << backend;
    EXPECT_EQ(backend.find("now: "), std::string::npos) << backend;
    chat.send("/stats\r");
    EXPECT_NE(chat.expect(kPrompt).find("backend: F32LlamaModel (f32, cpu"), std::string::npos);
    chat.send("/backend cpu\r");
    EXPECT_NE(chat.expect(kPrompt).find("now: F32LlamaModel (f32, cpu"), std::string::npos);
    chat.send("/exit\r");
    EXPECT_EQ(chat.wait_exit(), 0);
}

TEST(CliChat, CtrlCStopsTheAnswerNotTheProgram) {
    const auto model = smollm2_path();
    TWINFER_REQUIRE_FILE(model);
    PtySession chat({"chat", "-m", model.string(), "--temp", "0", "-n", "2000", "--ignore-eos", "-t", "2", "--device", "cpu"});
    chat.expect("> ");
    chat.send("Write a very long story about a dragon.\r");
    chat.expect("dragon", 60);  // the echo of the line
    usleep(1500 * 1000);        // let it generate for a while
    chat.send("\x03");
    chat.expect("[stopped]", 60);
    chat.expect(kPrompt);
    chat.send("/exit\r");
    EXPECT_EQ(chat.wait_exit(), 0);
}

struct PipedChat {
    int exit_code;
    std::string out;
    std::string err;
};

std::string slurp(const std::filesystem::path& path) {
    std::ifstream in(path);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// `twinfer chat` on SmolLM2 (CPU) with `flags`, `lines` on its stdin (a pipe: no terminal) and
// HOME at `home`.
PipedChat piped_chat(const std::string& lines, const std::string& flags, const std::filesystem::path& home = scratch_dir()) {
    static int counter = 0;
    const auto id = std::to_string(counter++);
    const auto in = scratch_dir() / ("chat" + id + ".in"), out = scratch_dir() / ("chat" + id + ".out"),
               err = scratch_dir() / ("chat" + id + ".err");
    std::ofstream(in) << lines;
    const std::string cmd = "HOME=" + home.string() + " XDG_CONFIG_HOME= " + twinfer_binary().string() + " chat -m " + smollm2_path().string() +
                            " --device cpu " + flags + " <" +
                            in.string() + " >" + out.string() + " 2>" + err.string();
    const int status = std::system(cmd.c_str());
    return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, slurp(out), slurp(err)};
}

TEST(CliChat, PipedStdinNeverWaitsForAKeyboard) {
    TWINFER_REQUIRE_FILE(smollm2_path());
    const auto r = piped_chat("Hello\n/stats\n", "--temp 0 -n 8");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.out.find("turns: 1"), std::string::npos) << r.out;
}

// The question the Trust issue opened with (int8 activations, as llama.cpp's default, answer it
// with French words): the CPU's default answers it as the float64 reference does.
TEST(CliChat, TheDefaultAnswersAsTheReference) {
    TWINFER_REQUIRE_FILE(smollm2_path());
    const std::string question = "What is the capital of France?\n";
    const auto by_default = piped_chat(question, "-t 2 --temp 0 -n 12");
    ASSERT_EQ(by_default.exit_code, 0) << by_default.err;
    EXPECT_EQ(by_default.out.substr(0, by_default.out.find('\n')), "The capital of France is Paris.");
    const auto reference = piped_chat(question, "--precision f64 --temp 0 -n 12");
    ASSERT_EQ(reference.exit_code, 0) << reference.err;
    EXPECT_EQ(reference.out.substr(0, reference.out.find('\n')), "The capital of France is Paris.");
}

TEST(CliChat, ErrorsGoToStderr) {
    TWINFER_REQUIRE_FILE(smollm2_path());
    const auto r = piped_chat("/model /nonexistent.gguf\n/frobnicate\n/precision f16\n", "");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(r.out.find("error"), std::string::npos) << r.out;
    EXPECT_NE(r.err.find("error: model file not found: /nonexistent.gguf\n"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("error: unknown command /frobnicate (/help lists them)\n"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("error: /precision f32 or /precision f64\n"), std::string::npos) << r.err;
}

// /config save keeps preferences (temperature, the system prompt), not what one run asked for
// (-n, --seed).
TEST(CliChat, ConfigSaveWritesSettingsNotOneOffValues) {
    TWINFER_REQUIRE_FILE(smollm2_path());
    const auto home = scratch_dir() / "config-save-home";
    std::filesystem::create_directories(home);
    const auto r = piped_chat("/config save\n", "--temp 0.25 -n 7 --seed 5 --system-prompt Brief", home);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const std::string saved = slurp(home / ".config" / "twinfer" / "config.toml");
    EXPECT_NE(saved.find("temperature = 0.25"), std::string::npos) << saved;
    EXPECT_NE(saved.find("system_prompt = 'Brief'"), std::string::npos) << saved;
    EXPECT_EQ(saved.find("max_tokens"), std::string::npos) << saved;
    EXPECT_EQ(saved.find("seed"), std::string::npos) << saved;
}

// A context of 160 tokens holds a few turns of SmolLM2's template (its default system prompt
// included): later turns drop the oldest ones, say so once each, and keep the cache for the
// system prompt the prompts still share.
TEST(CliChat, LongChatsDropTheOldestTurnsAndKeepAnswering) {
    TWINFER_REQUIRE_FILE(smollm2_path());
    const auto r = piped_chat("Tell me about cats.\nTell me about dogs.\nTell me about birds.\nTell me about fish.\n"
                              "Tell me about horses.\nTell me about cows.\n/stats\n",
                              "--temp 0 -n 24 -c 160 --log-level warn");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const std::string notice = "twinfer: warn: dropped the ", notice_end = " oldest turn(s) to fit the context of 160 tokens";
    int notices = 0, dropped = 0;
    std::istringstream lines(r.err);
    for (std::string line; std::getline(lines, line);) {
        ASSERT_TRUE(line.starts_with(notice) && line.ends_with(notice_end)) << line;
        ++notices;
        dropped += std::stoi(line.substr(notice.size()));
    }
    EXPECT_GE(notices, 2) << r.err;
    const size_t turns_at = r.out.find("turns: ");
    ASSERT_NE(turns_at, std::string::npos) << r.out;
    EXPECT_EQ(std::stoi(r.out.substr(turns_at + 7)), 6 - dropped) << r.out;
    EXPECT_EQ(r.out.find("(0 reused)"), std::string::npos) << r.out;
}

}  // namespace
}  // namespace twinfer::test
