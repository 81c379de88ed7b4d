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
#include <nlohmann/json.hpp>

#include "common/test_data.hpp"

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
            const std::string home = scratch_dir().string();
            setenv("HOME", home.c_str(), 1);
            unsetenv("XDG_CONFIG_HOME");
            setenv("TERM", "dumb", 1);
            std::vector<char*> argv;
            const std::string binary = twinfer_binary().string();
            argv.push_back(const_cast<char*>(binary.c_str()));
            for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
            argv.push_back(nullptr);
            execv(binary.c_str(), argv.data());
            _exit(127);
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

    chat.send("/load " + history.string() + "\r");
    chat.expect("loaded 2 messages");
    chat.expect(kPrompt);

    // /backend really switches: to CUDA where a GPU exists, else a clear error and the CPU model stays.
    chat.send("/backend cuda\r");
    const std::string backend = chat.expect(kPrompt);
    EXPECT_TRUE(backend.find("now: ") != std::string::npos || backend.find("error: ") != std::string::npos) << backend;
    chat.send("/backend cpu\r");
    EXPECT_NE(chat.expect(kPrompt).find("now: "), std::string::npos);

    chat.send("/precision f64\r");
    EXPECT_NE(chat.expect(kPrompt).find("GPTModel"), std::string::npos);
    chat.send("/precision f32\r");
    chat.expect(kPrompt);

    chat.send("/model " + model.string() + "\r");
    EXPECT_NE(chat.expect(kPrompt).find("now: "), std::string::npos);
    chat.send("/model /nonexistent.gguf\r");
    EXPECT_NE(chat.expect(kPrompt).find("error: "), std::string::npos);

    chat.send("/exit\r");
    EXPECT_EQ(chat.wait_exit(), 0);

    std::ifstream in(history);
    const auto saved = nlohmann::json::parse(in);
    ASSERT_EQ(saved["messages"].size(), 2u);
    EXPECT_EQ(saved["messages"][0]["content"], "What is the capital of France?");
    EXPECT_EQ(saved["system_prompt"], "You are a concise assistant.");
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

TEST(CliChat, PipedStdinNeverWaitsForAKeyboard) {
    const auto model = smollm2_path();
    TWINFER_REQUIRE_FILE(model);
    const auto out = scratch_dir() / "piped-chat.out";
    const std::string cmd = "printf 'Hello\\n/stats\\n' | HOME=" + scratch_dir().string() + " " + twinfer_binary().string() + " chat -m " +
                            model.string() + " --temp 0 -n 8 --device cpu > " + out.string() + " 2>&1";
    ASSERT_EQ(std::system(cmd.c_str()), 0);
    std::ifstream in(out);
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    EXPECT_NE(text.find("turns: 1"), std::string::npos) << text;
}

}  // namespace
}  // namespace twinfer::test
