"""schema_rules and constraint: what is a 400 (keyword and JSON pointer named), what is
ignored, the spellings of every draft, and compiles (cache, time limit)."""
from __future__ import annotations

import pytest

from function import constraint, schema_rules
from llmfn.errors import InvalidRequest


def refusal(schema) -> str:
    with pytest.raises(InvalidRequest) as err:
        schema_rules.check(schema, "response_format")
    assert err.value.param == "response_format"
    return err.value.message


@pytest.mark.parametrize("schema,keyword,pointer", [
    ({"type": "object", "properties": {"a": {"not": {"type": "string"}}}}, "not",
     "#/properties/a/not"),
    ({"allOf": [{"if": {"type": "integer"}, "then": {"minimum": 1}}]}, "if", "#/allOf/0/if"),
    ({"type": "array", "items": {"uniqueItems": True}}, "uniqueItems", "#/items/uniqueItems"),
    ({"$ref": "#/$defs/x", "$defs": {"x": {"propertyNames": {"maxLength": 3}}}},
     "propertyNames", "#/$defs/x/propertyNames"),
    ({"type": "object", "dependencies": {"a": ["b"]}}, "dependencies", "#/dependencies"),
    ({"properties": {"a/b": {"contains": {}}}}, "contains", "#/properties/a~1b/contains"),
])
def test_unenforced_keywords_are_a_400_naming_keyword_and_pointer(schema, keyword, pointer):
    message = refusal(schema)
    assert f"'{keyword}'" in message and pointer in message, message


def test_formats_without_a_checker_or_engine_support_are_a_400():
    assert "format 'regex'" in refusal({"type": "string", "format": "regex"})
    assert "format 'int32'" in refusal({"type": "integer", "format": "int32"})
    # draft-04's FORMAT_CHECKER has no "date": refused there, enforced in 2020-12
    assert "format 'date'" in refusal({"$schema": "http://json-schema.org/draft-04/schema#",
                                       "type": "string", "format": "date"})
    schema_rules.check({"type": "string", "format": "date"}, "response_format")


def test_annotations_identifiers_and_foreign_keywords_are_ignored():
    schema_rules.check({
        "id": "http://example.com/a", "$id": "http://example.com/b", "title": "t",
        "x-kubernetes-group-version-kind": [{"kind": "Pod"}], "_format": "x", "self": {},
        "nullable": True, "type": "object", "definitions": {"n": {"type": "integer",
                                                                  "minimum": 0}},
        "properties": {"n": {"$ref": "#/definitions/n"}}}, "response_format")


def test_draft04_boolean_and_numeric_exclusive_bounds():
    schema_rules.check({"$schema": "http://json-schema.org/draft-04/schema#",
                        "type": "number", "minimum": 0, "exclusiveMinimum": True},
                       "response_format")
    schema_rules.check({"type": "number", "exclusiveMinimum": 0}, "response_format")


def test_an_unreachable_definition_does_not_refuse_the_schema():
    schema_rules.check({"type": "integer", "$defs": {"unused": {"not": {}}}},
                       "response_format")


def test_a_ref_to_nothing_and_a_non_schema_are_a_400():
    assert "points to nothing" in refusal({"$ref": "#/$defs/missing"})
    assert "not a valid JSON Schema" in refusal({"type": 12})


def test_overlapping_one_of_is_a_400_and_disjoint_one_of_is_exact(smol_tokenizer):
    compiler = constraint.Compiler(smol_tokenizer)
    with pytest.raises(InvalidRequest) as err:
        compiler.compile({"oneOf": [{"type": "integer"}, {"type": "number"}]}, "tools[0]")
    assert "oneOf" in err.value.message and "#/oneOf" in err.value.message
    assert err.value.param == "tools[0]"
    shapes = {"type": "object", "oneOf": [{"required": ["radius"]},
                                          {"required": ["length", "width"]}]}
    grammar = compiler.compile(shapes, "response_format")
    from tests.support.jsonschemabench import accepts
    assert accepts(smol_tokenizer, grammar.matcher(), '{"radius":1}')[0]
    assert accepts(smol_tokenizer, grammar.matcher(), '{"length":1,"width":2}')[0]
    # matches both branches: oneOf says invalid, and the engine refuses it
    assert not accepts(smol_tokenizer, grammar.matcher(), '{"radius":1,"length":1,"width":2}')[0]
    assert grammar.violation('{"radius":1,"length":1,"width":2}') is not None


def test_compiles_are_cached_by_schema_and_bounded(smol_tokenizer):
    compiler = constraint.Compiler(smol_tokenizer, cache_size=2)
    schemas = [{"type": "integer", "maximum": n} for n in range(3)]
    first = compiler.compile(schemas[0], "response_format")
    assert compiler.compile({"maximum": 0, "type": "integer"}, "x") is first  # same schema
    compiler.compile(schemas[1], "x")
    compiler.compile(schemas[2], "x")  # evicts schemas[0]
    assert compiler.compiles == 3
    assert compiler.compile(schemas[0], "x") is not first and compiler.compiles == 4


def test_a_compile_past_the_time_limit_is_a_400(smol_tokenizer):
    compiler = constraint.Compiler(smol_tokenizer, timeout_s=0.0)
    wide = {"type": "object", "properties": {
        f"p{i}": {"type": "string", "pattern": f"^[a-z]{{{i},{i + 40}}}x[0-9]+$"}
        for i in range(40)}}
    with pytest.raises(InvalidRequest) as err:
        compiler.compile(wide, "response_format")
    assert "longer than" in err.value.message
    compiler.close()
