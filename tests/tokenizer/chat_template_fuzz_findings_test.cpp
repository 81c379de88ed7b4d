// Inputs chat_template_fuzz (tests/fuzz, docs/reliability.md) found crashing the template engine,
// kept as regression tests. Expected values are jinja2's (Python 3.11, jinja2 3.1).
#include "tokenizer/chat_template.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace twinfer {
namespace {

std::string render(const std::string& source) {
    const std::vector<ChatMessage> no_messages;
    return ChatTemplate(source).apply(no_messages, false, "", "");
}

// A float literal beyond double's range made std::stod throw std::out_of_range out of the parser
// (the crashing input below). Python's float() gives inf, or 0.0 below the range; so now do the
// literals and the float/int filters, which had the same std::stod.
TEST(ChatTemplateFuzzFindings, FloatsBeyondDoubleRangeAreInfOrZeroAsInPython) {
    EXPECT_EQ(render("{{444-44-4-4>1442e1444414421444421444}}44"), "False44");
    EXPECT_EQ(render("{{ 1442e1444414421444421444 }} {{ -1e999 }} {{ 1e-999 }}"), "inf -inf 0.0");
    EXPECT_EQ(render("{{ '1e999'|float }} {{ '-1e999'|float }} {{ '1e-999'|float }} {{ '1e999'|int(7) }}"), "inf -inf 0.0 7");
}

}  // namespace
}  // namespace twinfer
