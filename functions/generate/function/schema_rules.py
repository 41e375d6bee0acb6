"""Which JSON Schema keywords structured outputs enforce, and a 400 for the ones they cannot.

Called on the request thread before a schema is compiled (constraint.py). It walks the
subschemas an instance can reach (from the root, following local ``$ref``) and sorts each
keyword:

- :data:`ENFORCED`: the decoding engine (llguidance) turns it into a constraint; checked on
  JSONSchemaBench by tests/test_structured_conformance.py, not taken from its docs;
- :data:`REFUSED`: a keyword of the JSON Schema vocabularies that asserts something the engine
  does not enforce: 400 naming the keyword and its JSON pointer;
- anything else (annotations, identifiers, ``x-*``, ``_format``, OpenAPI's ``nullable``...)
  is ignored, as the spec says of keywords outside the schema's dialect.

``format`` is enforced only where the engine has the format and jsonschema's
``FORMAT_CHECKER`` of the schema's dialect checks it (the post-decode safety net then really
checks it); any other format is a 400. Draft-04/06/07 and 2019-09/2020-12 spellings are all
read: ``id``/``$id``, ``definitions``/``$defs``, boolean or numeric ``exclusiveMinimum``.
"""
from __future__ import annotations

import json

from llmfn.errors import InvalidRequest

# Assertions and applicators the engine enforces; the values say where subschemas are.
ENFORCED = {
    "type": None, "enum": None, "const": None,
    "minimum": None, "maximum": None, "exclusiveMinimum": None, "exclusiveMaximum": None,
    "multipleOf": None, "minLength": None, "maxLength": None, "pattern": None, "format": None,
    "minItems": None, "maxItems": None, "items": "schema|list", "prefixItems": "list",
    "additionalItems": "schema", "properties": "map", "patternProperties": "map",
    "additionalProperties": "schema", "required": None, "minProperties": None,
    "maxProperties": None, "anyOf": "list", "allOf": "list", "oneOf": "list", "$ref": None,
}
# Assertions (and applicators holding assertions) of drafts 04 to 2020-12 not enforced.
REFUSED = {"not", "if", "then", "else", "dependencies", "dependentRequired",
           "dependentSchemas", "propertyNames", "uniqueItems", "contains", "minContains",
           "maxContains", "unevaluatedProperties", "unevaluatedItems", "$dynamicRef",
           "$recursiveRef", "contentSchema"}
# The formats the engine enforces; each also needs a checker in the dialect's FORMAT_CHECKER.
# (Not hostname: its masks allow labels over 63 characters, which the checker refuses.)
ENGINE_FORMATS = {"date-time", "time", "date", "duration", "email", "ipv4", "ipv6", "uri",
                  "uuid"}
MAX_DEPTH = 64


def validator_for(schema):
    """jsonschema's validator class of ``schema``'s dialect. jsonschema is imported here, on
    the first structured request, not at start: about 100 ms a cold start need not pay."""
    from jsonschema.validators import validator_for as of_dialect

    return of_dialect(schema)


def dialect_formats(schema) -> set[str]:
    """The formats enforced for ``schema``: the engine's that its dialect's checker knows."""
    return ENGINE_FORMATS & set(validator_for(schema).FORMAT_CHECKER.checkers)


def check(schema, param: str) -> None:
    """400 naming ``param``, the keyword and its JSON pointer if ``schema`` asks for what is
    not enforced (or is not a schema)."""
    if not isinstance(schema, (dict, bool)):
        raise InvalidRequest(f"'{param}': the schema must be an object.", param=param)
    from jsonschema.exceptions import SchemaError  # loaded by validator_for

    cls = validator_for(schema)
    try:
        cls.check_schema(schema)
    except SchemaError as err:
        where = "#" + "".join(f"/{_escape(p)}" for p in err.path)
        raise InvalidRequest(f"'{param}': not a valid JSON Schema at {where}: "
                             f"{err.message[:200]}", param=param) from None
    except (RecursionError, ValueError) as err:
        raise InvalidRequest(f"'{param}': not a valid JSON Schema ({err}).", param=param) \
            from None
    _Walk(schema, param, dialect_formats(schema)).visit(schema, "#", 0)


class _Walk:
    def __init__(self, root, param: str, formats: set[str]):
        self.root, self.param, self.formats = root, param, formats
        self.seen: set[str] = set()

    def fail(self, message: str) -> None:
        raise InvalidRequest(f"'{self.param}': {message}", param=self.param)

    def visit(self, schema, path: str, depth: int) -> None:
        if isinstance(schema, bool) or not isinstance(schema, dict):
            return
        if depth > MAX_DEPTH:
            self.fail(f"the schema is nested deeper than {MAX_DEPTH} levels at {path}.")
        for key, value in schema.items():
            where = f"{path}/{_escape(key)}"
            if key in REFUSED:
                self.fail(f"the JSON Schema keyword '{key}' (at {where}) is not enforced by "
                          "structured outputs; remove it or use a schema without it.")
            if key == "format" and value not in self.formats:
                self.fail(f"format '{value}' (at {where}) is not enforced; enforced formats: "
                          f"{sorted(self.formats)}.")
            if key == "$ref" and isinstance(value, str):
                self.follow(value, where, depth)
            shape = ENFORCED.get(key)
            if shape in ("list", "schema|list") and isinstance(value, list):
                for i, sub in enumerate(value):
                    self.visit(sub, f"{where}/{i}", depth + 1)
            elif shape in ("schema", "schema|list"):
                self.visit(value, where, depth + 1)
            elif shape == "map" and isinstance(value, dict):
                for name, sub in value.items():
                    self.visit(sub, f"{where}/{_escape(name)}", depth + 1)

    def follow(self, ref: str, where: str, depth: int) -> None:
        """Walk a local ``$ref`` target once; other references are the engine's to resolve
        (it refuses what it cannot, and refuses unenforced keywords itself)."""
        if not ref.startswith("#/") and ref != "#" or ref in self.seen:
            return
        self.seen.add(ref)
        target = self.root
        for part in ref[2:].split("/") if ref != "#" else []:
            part = part.replace("~1", "/").replace("~0", "~")
            try:
                target = target[int(part) if isinstance(target, list) else part]
            except (KeyError, IndexError, ValueError, TypeError):
                self.fail(f"'$ref' {json.dumps(ref)} (at {where}) points to nothing.")
        self.visit(target, ref, depth + 1)


def _escape(key) -> str:
    return str(key).replace("~", "~0").replace("/", "~1")


def validator(schema):
    """A validator of ``schema``'s own dialect with its format checker: what a 200 answer
    must pass."""
    cls = validator_for(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)
