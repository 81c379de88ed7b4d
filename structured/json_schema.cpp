#include "structured/json_schema.hpp"

#include <algorithm>
#include <set>

namespace twinfer::structured {
namespace {

using nlohmann::json;

const std::set<std::string> annotations = {"title", "description", "default", "examples", "$schema", "$id", "$comment",
                                           "$defs", "definitions", "deprecated", "readOnly", "writeOnly"};
const std::set<std::string> understood = {"type", "properties", "required", "additionalProperties", "items", "minItems",
                                          "maxItems", "minLength", "maxLength", "enum", "const", "anyOf"};
const std::set<std::string> type_names = {"object", "array", "string", "number", "integer", "boolean", "null"};

std::string compact(const json& value) { return value.dump(-1, ' ', false, json::error_handler_t::strict); }

class Compiler {
public:
    explicit Compiler(const CompileOptions& options) : options_(options) {}

    Schema run(const json& schema) {
        Schema out;
        out.root = compile(schema, "", 0);
        out.nodes = std::move(nodes_);
        return out;
    }

private:
    int add(SchemaNode node, const std::string& where) {
        if (nodes_.size() >= schema_limits::nodes)
            throw SchemaError("the schema is too large (more than " + std::to_string(schema_limits::nodes) + " nodes)", where);
        nodes_.push_back(std::move(node));
        return int(nodes_.size() - 1);
    }

    int compile(const json& schema, const std::string& where, size_t depth) {
        if (depth > schema_limits::nesting)
            throw SchemaError("the schema nests deeper than " + std::to_string(schema_limits::nesting) + " levels", where);
        if (schema.is_boolean()) {
            if (schema.get<bool>()) return add({}, where);
            throw SchemaError("the schema 'false' allows no value", where);
        }
        if (!schema.is_object()) throw SchemaError("a schema must be an object, got " + std::string(schema.type_name()), where);
        for (const auto& [key, value] : schema.items())
            if (!annotations.contains(key) && !understood.contains(key))
                throw SchemaError("the JSON Schema keyword '" + key + "' is not supported by this server's structured output",
                                  where + "." + key);
        if (schema.contains("anyOf")) return compile_any_of(schema, where, depth);
        if (schema.contains("enum") || schema.contains("const")) return compile_literals(schema, where);
        const auto type = schema.find("type");
        if (type == schema.end()) {
            if (schema.contains("properties") || schema.contains("required") || schema.contains("additionalProperties"))
                return compile_typed(schema, "object", where, depth);
            if (schema.contains("items") || schema.contains("minItems") || schema.contains("maxItems"))
                return compile_typed(schema, "array", where, depth);
            if (schema.contains("minLength") || schema.contains("maxLength")) return compile_typed(schema, "string", where, depth);
            return add({}, where);   // {}: any value
        }
        if (type->is_string()) return compile_typed(schema, type->get<std::string>(), where, depth);
        if (!type->is_array() || type->empty())
            throw SchemaError("'type' must be a type name or a non-empty array of them", where + ".type");
        // ["string", "null"]: one alternative per type, each with the schema's other keywords.
        SchemaNode any_of{.kind = NodeKind::AnyOf};
        std::set<std::string> seen;
        for (const json& name : *type) {
            if (!name.is_string()) throw SchemaError("'type' must hold type names", where + ".type");
            if (!seen.insert(name.get<std::string>()).second) continue;
            any_of.options.push_back(compile_typed(schema, name.get<std::string>(), where, depth));
        }
        if (any_of.options.size() == 1) return any_of.options.front();
        return add(std::move(any_of), where);
    }

    // Keywords that belong to another type than `type` are refused rather than ignored.
    static void refuse_foreign(const json& schema, const std::string& type, const std::string& where) {
        static const std::vector<std::pair<std::string, std::string>> owner = {
            {"properties", "object"}, {"required", "object"}, {"additionalProperties", "object"},
            {"items", "array"},       {"minItems", "array"},  {"maxItems", "array"},
            {"minLength", "string"},  {"maxLength", "string"}};
        for (const auto& [key, owner_type] : owner)
            if (schema.contains(key) && owner_type != type)
                throw SchemaError("'" + key + "' applies to " + owner_type + ", not to type '" + type + "'", where + "." + key);
    }

    int compile_typed(const json& schema, const std::string& type, const std::string& where, size_t depth) {
        if (!type_names.contains(type)) throw SchemaError("unknown type '" + type + "'", where + ".type");
        refuse_foreign(schema, type, where);
        if (type == "object") return compile_object(schema, where, depth);
        if (type == "array") return compile_array(schema, where, depth);
        if (type == "string") {
            SchemaNode node{.kind = NodeKind::String};
            if (schema.contains("minLength")) node.min_length = count_field(schema, "minLength", where);
            if (schema.contains("maxLength")) node.max_length = count_field(schema, "maxLength", where);
            if (node.min_length > node.max_length) throw SchemaError("'minLength' is larger than 'maxLength'", where + ".minLength");
            return add(std::move(node), where);
        }
        if (type == "number") return add({.kind = NodeKind::Number}, where);
        if (type == "integer") return add({.kind = NodeKind::Integer}, where);
        if (type == "boolean") return add({.kind = NodeKind::Literals, .literals = {"false", "true"}}, where);
        return add({.kind = NodeKind::Literals, .literals = {"null"}}, where);
    }

    int compile_object(const json& schema, const std::string& where, size_t depth) {
        SchemaNode node{.kind = NodeKind::Object};
        std::vector<std::pair<std::string, const json*>> properties;
        if (const auto p = schema.find("properties"); p != schema.end()) {
            if (!p->is_object()) throw SchemaError("'properties' must be an object", where + ".properties");
            if (p->size() > schema_limits::properties)
                throw SchemaError("more than " + std::to_string(schema_limits::properties) + " properties in one object",
                                  where + ".properties");
            for (const auto& [name, sub] : p->items()) properties.emplace_back(name, &sub);
        }
        // Sorted by the name as written in JSON, so the names matching a key's prefix are a range.
        const auto written = [](const std::string& name) {
            const std::string quoted = compact(json(name));
            return quoted.substr(1, quoted.size() - 2);
        };
        std::sort(properties.begin(), properties.end(),
                  [&](const auto& a, const auto& b) { return written(a.first) < written(b.first); });
        for (const auto& [name, sub] : properties)
            node.properties.push_back({written(name), compile(*sub, where + ".properties." + name, depth + 1)});
        if (const auto r = schema.find("required"); r != schema.end()) {
            if (!r->is_array()) throw SchemaError("'required' must be an array of property names", where + ".required");
            for (const json& name : *r) {
                if (!name.is_string()) throw SchemaError("'required' must hold property names", where + ".required");
                const auto it = std::find_if(properties.begin(), properties.end(), [&](const auto& p) { return p.first == name.get<std::string>(); });
                if (it == properties.end())
                    throw SchemaError("the required property '" + name.get<std::string>() + "' is not in 'properties'", where + ".required");
                node.required |= uint64_t{1} << (it - properties.begin());
            }
        }
        const auto additional = schema.find("additionalProperties");
        if (additional == schema.end()) {
            if (!options_.strict) node.additional = add({}, where);
        } else if (additional->is_boolean()) {
            if (additional->get<bool>()) node.additional = add({}, where);
        } else {
            node.additional = compile(*additional, where + ".additionalProperties", depth + 1);
        }
        return add(std::move(node), where);
    }

    static size_t count_field(const json& schema, const char* name, const std::string& where) {
        const json& v = schema[name];
        if (!v.is_number_unsigned() && !(v.is_number_integer() && v.get<long long>() >= 0))
            throw SchemaError("'" + std::string(name) + "' must be a non-negative integer", where + "." + name);
        return v.get<size_t>();
    }

    int compile_array(const json& schema, const std::string& where, size_t depth) {
        SchemaNode node{.kind = NodeKind::Array};
        if (schema.contains("minItems")) node.min_items = count_field(schema, "minItems", where);
        if (schema.contains("maxItems")) node.max_items = count_field(schema, "maxItems", where);
        if (node.min_items > node.max_items) throw SchemaError("'minItems' is larger than 'maxItems'", where + ".minItems");
        const auto items = schema.find("items");
        if (items != schema.end() && items->is_array())
            throw SchemaError("'items' as an array (tuple validation) is not supported", where + ".items");
        node.items = items == schema.end() ? add({}, where) : compile(*items, where + ".items", depth + 1);
        return add(std::move(node), where);
    }

    int compile_literals(const json& schema, const std::string& where) {
        for (const char* other : {"properties", "required", "additionalProperties", "items", "minItems", "maxItems", "minLength", "maxLength"})
            if (schema.contains(other))
                throw SchemaError("'" + std::string(other) + "' beside enum/const is not supported", where + "." + other);
        SchemaNode node{.kind = NodeKind::Literals};
        if (schema.contains("enum") && schema.contains("const"))
            throw SchemaError("both 'enum' and 'const' in one schema", where + ".const");
        if (const auto c = schema.find("const"); c != schema.end()) node.literals.push_back(compact(*c));
        if (const auto e = schema.find("enum"); e != schema.end()) {
            if (!e->is_array() || e->empty()) throw SchemaError("'enum' must be a non-empty array", where + ".enum");
            for (const json& value : *e) node.literals.push_back(compact(value));
        }
        std::sort(node.literals.begin(), node.literals.end());
        node.literals.erase(std::unique(node.literals.begin(), node.literals.end()), node.literals.end());
        return add(std::move(node), where);
    }

    int compile_any_of(const json& schema, const std::string& where, size_t depth) {
        for (const auto& [key, value] : schema.items())
            if (key != "anyOf" && understood.contains(key))
                throw SchemaError("'" + key + "' beside 'anyOf' is not supported (put it inside each alternative)", where + "." + key);
        const json& options = schema["anyOf"];
        if (!options.is_array() || options.empty()) throw SchemaError("'anyOf' must be a non-empty array of schemas", where + ".anyOf");
        if (options.size() > schema_limits::any_of)
            throw SchemaError("more than " + std::to_string(schema_limits::any_of) + " alternatives in 'anyOf'", where + ".anyOf");
        SchemaNode node{.kind = NodeKind::AnyOf};
        for (size_t i = 0; i < options.size(); ++i) {
            const int option = compile(options[i], where + ".anyOf[" + std::to_string(i) + "]", depth + 1);
            // Nested alternatives flattened: the matcher forks once per choice.
            if (nodes_[size_t(option)].kind == NodeKind::AnyOf) {
                const std::vector<int> inner = nodes_[size_t(option)].options;
                node.options.insert(node.options.end(), inner.begin(), inner.end());
            } else {
                node.options.push_back(option);
            }
        }
        if (node.options.size() > schema_limits::any_of * 4)
            throw SchemaError("too many alternatives once nested 'anyOf' are flattened", where + ".anyOf");
        return add(std::move(node), where);
    }

    CompileOptions options_;
    std::vector<SchemaNode> nodes_;
};

}  // namespace

Schema compile_json_schema(const nlohmann::json& schema, const CompileOptions& options) {
    try {
        return Compiler(options).run(schema);
    } catch (const nlohmann::json::exception& e) {
        // A value that cannot be written back as JSON (an enum string of invalid UTF-8).
        throw SchemaError(std::string("the schema holds a value that is not valid JSON text: ") + e.what(), "");
    }
}

Schema any_json_object() {
    Schema schema;
    schema.nodes.push_back({});                                                    // 0: any value
    schema.nodes.push_back({.kind = NodeKind::Object, .additional = 0});           // 1: any object
    schema.root = 1;
    return schema;
}

}  // namespace twinfer::structured
