#pragma once
// A JSON Schema compiled into the nodes the matcher walks (structured/json_matcher.hpp).
//
// The supported subset: type (a name or a list of names), object with properties, required and
// additionalProperties (a boolean or a schema), array with items, minItems and maxItems, string,
// minLength and maxLength (in characters, an escape counting as one), number, integer, boolean,
// null, enum, const, anyOf, and the empty schema (any value).
// Annotations (title, description, default, examples, $schema, $id, $comment, $defs,
// definitions) are ignored. Every other keyword (pattern, format, $ref, oneOf, allOf, minimum,
// minLength, ...) is refused with a SchemaError naming it and where it is: a constraint the
// matcher cannot enforce must never become output that silently breaks it.
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace twinfer::structured {

// An unsupported or malformed schema. where: the JSON path of the offending keyword below the
// schema's root, e.g. ".properties.zip.pattern" ("" for the root itself).
struct SchemaError : std::runtime_error {
    SchemaError(const std::string& message, std::string where) : std::runtime_error(message), where(std::move(where)) {}
    std::string where;
};

// Limits that keep a hostile schema cheap: each far above what a real response schema needs.
namespace schema_limits {
constexpr size_t nesting = 32;         // nested schemas (objects, arrays, anyOf)
constexpr size_t properties = 64;      // properties of one object (a 64-bit mask tracks them)
constexpr size_t any_of = 16;          // alternatives of one anyOf
constexpr size_t nodes = 4096;         // nodes of one compiled schema
}  // namespace schema_limits

enum class NodeKind : uint8_t {
    AnyValue,   // any JSON value
    Object,
    Array,
    String,
    Number,     // -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
    Integer,    // -?(0|[1-9][0-9]*)
    Literals,   // exactly one of `literals` (enum, const, boolean, null)
    AnyOf,      // one of `options` (never themselves AnyOf: nested ones are flattened)
};

struct Property {
    std::string name;   // as it is written between the quotes (JSON-escaped)
    int node = -1;
};

struct SchemaNode {
    NodeKind kind = NodeKind::AnyValue;
    // Object: properties sorted by name; required as a mask over their indices; the schema of
    // other keys' values, -1 where no other key is allowed.
    std::vector<Property> properties = {};
    uint64_t required = 0;
    int additional = -1;
    // Array.
    int items = -1;
    size_t min_items = 0, max_items = SIZE_MAX;
    // String: bounds on its characters.
    size_t min_length = 0, max_length = SIZE_MAX;
    // Literals: the compact JSON text of each value, sorted bytewise, no duplicates.
    std::vector<std::string> literals = {};
    // AnyOf.
    std::vector<int> options = {};
};

struct Schema {
    std::vector<SchemaNode> nodes;
    int root = -1;
};

struct CompileOptions {
    // OpenAI's strict mode: an object without additionalProperties allows no other keys (plain
    // JSON Schema allows any).
    bool strict = false;
};

// Throws SchemaError for a construct outside the subset or a malformed schema.
Schema compile_json_schema(const nlohmann::json& schema, const CompileOptions& options = {});

// response_format json_object: any JSON object.
Schema any_json_object();

}  // namespace twinfer::structured
