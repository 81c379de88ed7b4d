#include "tokenizer/utf8.hpp"

namespace twinfer::tokenizer_detail {

namespace {
bool is_continuation(std::string_view s, size_t i) {
    return i < s.size() && (static_cast<uint8_t>(s[i]) & 0xC0) == 0x80;
}
}  // namespace

std::vector<uint32_t> lenient_code_points(std::string_view text) {
    std::vector<uint32_t> out;
    out.reserve(text.size());
    size_t i = 0;
    while (i < text.size()) {
        const uint8_t b = static_cast<uint8_t>(text[i]);
        auto cont = [&](size_t k) { return static_cast<uint32_t>(static_cast<uint8_t>(text[i + k]) & 0x3F); };
        if (b < 0x80) {
            out.push_back(b);
            i += 1;
        } else if ((b & 0xE0) == 0xC0 && is_continuation(text, i + 1)) {
            out.push_back(((b & 0x1Fu) << 6) | cont(1));
            i += 2;
        } else if ((b & 0xF0) == 0xE0 && is_continuation(text, i + 1) && is_continuation(text, i + 2)) {
            out.push_back(((b & 0x0Fu) << 12) | (cont(1) << 6) | cont(2));
            i += 3;
        } else if ((b & 0xF8) == 0xF0 && is_continuation(text, i + 1) && is_continuation(text, i + 2) &&
                   is_continuation(text, i + 3)) {
            out.push_back(((b & 0x07u) << 18) | (cont(1) << 12) | (cont(2) << 6) | cont(3));
            i += 4;
        } else {
            out.push_back(0xFFFD);
            i += 1;
        }
    }
    return out;
}

void append_utf8(std::string& out, uint32_t cp) {
    if (cp > 0x10FFFF) cp = 0xFFFD;  // llama.cpp throws here; a replacement character is kinder
    if (cp < 0x80) {
        out.push_back(static_cast<char>(cp));
    } else if (cp < 0x800) {
        out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
        out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else if (cp < 0x10000) {
        out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
        out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
        out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else {
        out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
        out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
        out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
        out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
}

size_t append_valid_utf8(std::string_view in, std::string& out, bool final) {
    static constexpr std::string_view replacement = "\xEF\xBF\xBD";
    size_t i = 0;
    while (i < in.size()) {
        const uint8_t b = static_cast<uint8_t>(in[i]);
        if (b < 0x80) {
            out.push_back(static_cast<char>(b));
            ++i;
            continue;
        }
        size_t need = 0;
        uint8_t lo = 0x80, hi = 0xBF;  // the allowed range of the second byte (Unicode table 3-7)
        if (b >= 0xC2 && b <= 0xDF) need = 1;
        else if (b == 0xE0) { need = 2; lo = 0xA0; }
        else if (b >= 0xE1 && b <= 0xEC) need = 2;
        else if (b == 0xED) { need = 2; hi = 0x9F; }
        else if (b >= 0xEE && b <= 0xEF) need = 2;
        else if (b == 0xF0) { need = 3; lo = 0x90; }
        else if (b >= 0xF1 && b <= 0xF3) need = 3;
        else if (b == 0xF4) { need = 3; hi = 0x8F; }
        if (need == 0) {
            out += replacement;
            ++i;
            continue;
        }
        size_t got = 0;  // continuation bytes that fit so far
        while (got < need && i + 1 + got < in.size()) {
            const uint8_t c = static_cast<uint8_t>(in[i + 1 + got]);
            const bool ok = got == 0 ? (c >= lo && c <= hi) : (c & 0xC0) == 0x80;
            if (!ok) break;
            ++got;
        }
        if (got == need) {
            out.append(in.substr(i, need + 1));
            i += need + 1;
        } else if (i + 1 + got == in.size() && !final) {
            return i;  // may still complete
        } else {
            out += replacement;  // the maximal subpart: lead byte plus the continuations that fit
            i += 1 + got;
        }
    }
    return i;
}

const std::array<std::string, 256>& byte_to_unicode() {
    static const std::array<std::string, 256> table = [] {
        std::array<std::string, 256> t;
        uint32_t next = 256;
        for (uint32_t b = 0; b < 256; ++b) {
            const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
            append_utf8(t[b], printable ? b : next++);
        }
        return t;
    }();
    return table;
}

std::optional<uint8_t> unicode_to_byte(uint32_t cp) {
    static const std::array<int16_t, 324> table = [] {
        std::array<int16_t, 324> t;
        t.fill(-1);
        uint32_t next = 256;
        for (uint32_t b = 0; b < 256; ++b) {
            const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
            t[printable ? b : next++] = static_cast<int16_t>(b);
        }
        return t;
    }();
    if (cp >= table.size() || table[cp] < 0) return std::nullopt;
    return static_cast<uint8_t>(table[cp]);
}

}  // namespace twinfer::tokenizer_detail
