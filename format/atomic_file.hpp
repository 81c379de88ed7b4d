#pragma once
// Writing a file so that nobody ever finds it half-written: not a reader, not the next start after
// a crash, a kill or a full disk. The contents go to a new temporary file in the same folder, are
// flushed to the disk, and the temporary is renamed over the file (rename(2) replaces it in one
// step). When anything fails the temporary is removed and the old file, if there was one, is left
// exactly as it was.
#include <filesystem>
#include <string_view>

namespace twinfer {

// Writes `contents` to `path` as above. An existing file keeps its permissions; a new one gets
// 0666 less the umask, as std::ofstream would give it. A symbolic link is followed: its target
// is replaced, the link stays. Throws std::system_error naming `path` and the cause ("No space
// left on device", "File too large", "Permission denied").
void write_file_atomically(const std::filesystem::path& path, std::string_view contents);

}  // namespace twinfer
