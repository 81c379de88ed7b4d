#pragma once
// `twinfer serve` as a real process for the server tests: started on a free port (--port 0, the
// port read from its first line of output), ready once /health answers 200, stopped with SIGTERM
// when destroyed.
#include <gtest/gtest.h>
#include <httplib.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "cli/twinfer_process.hpp"
#include "common/test_data.hpp"

namespace twinfer::test {

class ServerProcess {
public:
    // `twinfer serve -m model --port 0 --no-progress extra...`; `api_key` is what client() sends.
    explicit ServerProcess(const std::vector<std::string>& extra, const std::filesystem::path& model = smollm2_path(),
                           std::string api_key = "")
        : api_key_(std::move(api_key)) {
        int out[2];
        if (pipe(out) != 0) throw std::runtime_error("pipe failed");
        pid_ = fork();
        if (pid_ == 0) {
            dup2(out[1], STDOUT_FILENO);
            close(out[0]);
            close(out[1]);
            std::vector<std::string> args{"serve", "-m", model.string(), "--port", "0", "--no-progress"};
            args.insert(args.end(), extra.begin(), extra.end());
            exec_twinfer(args);
        }
        close(out[1]);
        FILE* stream = fdopen(out[0], "r");
        char line[512] = {};
        if (!fgets(line, sizeof line, stream)) throw std::runtime_error("twinfer serve printed nothing");
        fclose(stream);
        const std::string text = line;
        port_ = std::stoi(text.substr(text.rfind(':') + 1));
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
        while (std::chrono::steady_clock::now() < deadline) {
            if (auto res = client().Get("/health"); res && res->status == 200) return;
            std::this_thread::sleep_for(std::chrono::milliseconds(100));
        }
        throw std::runtime_error("twinfer serve did not become healthy");
    }
    ~ServerProcess() {
        kill(pid_, SIGTERM);
        int status = 0;
        waitpid(pid_, &status, 0);
    }
    httplib::Client client(bool with_key = true) const {
        httplib::Client c("127.0.0.1", port_);
        c.set_read_timeout(120, 0);
        if (with_key && !api_key_.empty()) c.set_default_headers({{"Authorization", "Bearer " + api_key_}});
        return c;
    }
    nlohmann::json post(const std::string& path, const std::string& body, int expected_status) const {
        auto res = client().Post(path, body, "application/json");
        if (!res) throw std::runtime_error("no response from " + path);
        EXPECT_EQ(res->status, expected_status) << path << " " << body << " -> " << res->body;
        return nlohmann::json::parse(res->body);
    }
    int port() const { return port_; }
    // True while the process runs (it has not exited nor been killed by a signal).
    bool running() const { return waitpid(pid_, nullptr, WNOHANG) == 0; }

private:
    std::string api_key_;
    pid_t pid_ = -1;
    int port_ = 0;
};

}  // namespace twinfer::test
