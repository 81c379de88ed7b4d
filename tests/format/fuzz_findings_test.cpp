// Inputs the fuzz targets (tests/fuzz, docs/reliability.md) found crashing the format readers,
// kept as regression tests: each now fails with a FormatError that says what is wrong.
#include "format/safetensors.hpp"

#include <gtest/gtest.h>

#include <span>
#include <string>

namespace twinfer {
namespace {

// safetensors_fuzz: a number in the JSON header beyond double's range made nlohmann throw
// json::out_of_range, which the reader did not catch (only json::parse_error), so it escaped as
// an unrelated exception type. The crashing input: header length 9, header "777E7777q\xa5\tY".
TEST(SafetensorsFuzzFindings, NumberBeyondDoubleInHeaderIsAFormatError) {
    const unsigned char image[] = {0x09, 0, 0, 0, 0, 0, 0, 0, '7', '7', '7', 'E', '7', '7', '7', '7', 'q', 0xa5, '\t', 'Y'};
    try {
        safetensors::File::parse(std::as_bytes(std::span(image)), "finding.safetensors");
        FAIL() << "parsed without error";
    } catch (const safetensors::FormatError& e) {
        EXPECT_EQ(std::string(e.what()),
                  "finding.safetensors: header is not valid JSON: [json.exception.out_of_range.406] number overflow parsing '777E7777'");
    }
}

}  // namespace
}  // namespace twinfer
