#pragma once
// Model files that change under their mapping (format/mapped_file.hpp). The CPU models read their
// weights from the mapping for as long as they live, so the file matters after loading too.
// Replaced by a rename (`mv new.gguf model.gguf`), the mapping keeps the old file's pages: nothing
// changes for this process. Rewritten in place, the pages read what was written. Truncated, a page
// past the new end raises SIGBUS when it is read, which kills the process.
//
// `twinfer` calls guard_mapped_files() once, for every command (apps/main.cpp): such a page then
// reads as zeros instead and the mapping is marked damaged; mapped_files_problem(), asked after
// each use of the weights (engine/engine.cpp; before it too in server/batched_model.cpp), tells
// whether any mapped file was truncated, rewritten or damaged.
#include <string>

namespace twinfer {

// Installs the SIGBUS handler that turns a read past the end of a truncated mapped file into zeros
// (marking the mapping damaged); a SIGBUS anywhere else goes on to the handler there was before,
// or ends the process as it would have. Idempotent. The first 256 live mappings are watched.
void guard_mapped_files();

// Empty while every watched mapping reads its file as it was when mapped; else one line naming the
// first file that changed: truncated or grown, modified (its modification time), or read past its
// end under guard_mapped_files(). An fstat(2) per mapping.
std::string mapped_files_problem();

}  // namespace twinfer
