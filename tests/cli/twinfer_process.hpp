#pragma once
// The twinfer binary in a forked child, for the CLI tests that need a process of their own (a
// pseudo-terminal, a signal to send).
#include <unistd.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "common/test_data.hpp"

namespace twinfer::test {

// Replaces the calling (forked) process with `twinfer args`, HOME at the scratch folder so no
// user config file leaks in. Exits with 127 when the binary cannot be started.
[[noreturn]] inline void exec_twinfer(const std::vector<std::string>& args) {
    const std::string home = scratch_dir().string();
    setenv("HOME", home.c_str(), 1);
    unsetenv("XDG_CONFIG_HOME");
    std::vector<char*> argv;
    const std::string binary = twinfer_binary().string();
    argv.push_back(const_cast<char*>(binary.c_str()));
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv(binary.c_str(), argv.data());
    _exit(127);
}

}  // namespace twinfer::test
