"""generate's parameter tables cover the official openai SDK's own request types, and
docs/generate.md's table says what happens to each parameter."""
from __future__ import annotations

from openai.types import completion_create_params as completion_params
from openai.types.chat import completion_create_params as chat_params

from scripts import params_table
from scripts.procs import REPO_ROOT

SCHEMA = params_table._schema()


def sdk_keys(module) -> set[str]:
    keys = set()
    for name in dir(module):
        cls = getattr(module, name)
        if name.startswith("CompletionCreateParams") and hasattr(cls, "__annotations__"):
            keys |= set(cls.__annotations__)
    return keys


def test_every_sdk_parameter_has_a_status():
    for module, table in ((chat_params, SCHEMA.CHAT_PARAMETERS),
                          (completion_params, SCHEMA.COMPLETION_PARAMETERS)):
        keys = sdk_keys(module)
        assert "stream" in keys and "model" in keys  # the streaming variants are read too
        missing = sorted(keys - set(table))
        assert not missing, f"parameters with no status in schema.py: {missing}"


def test_docs_list_every_parameter_as_the_tables_say():
    page = (REPO_ROOT / "docs" / "generate.md").read_text()
    assert params_table.table() in page, "docs/generate.md's parameter table is stale: " \
        "run scripts/params_table.py"
    for key in sdk_keys(chat_params) | sdk_keys(completion_params):
        assert f"| `{key}` |" in page, key
