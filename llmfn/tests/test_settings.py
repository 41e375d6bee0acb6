"""Settings: strict parsing, errors naming the key, defaults, function defaults."""
import dataclasses

import pytest

import config_table  # scripts/config_table.py: every settings class of the project
from llmfn.settings import ServerSettings, Settings, SettingsError, build


def test_defaults_and_overrides():
    s = Settings.from_mapping({"N_CTX": "512", "QUEUE_SIZE": "0"}, FUNCTION_NAME="generate",
                              N_CTX="1024")
    assert s.model.n_ctx == 512  # the mapping wins over the function's default
    assert s.server.queue_size == 0
    assert s.server.function == "generate"
    assert s.events.sink == ""


@pytest.mark.parametrize("env,message", [
    ({"N_THREADS": "-1"}, "N_THREADS must be >= 0"),
    ({"N_CTX": "lots"}, "N_CTX must be int"),
    ({"SSE_HEARTBEAT_S": "0"}, "SSE_HEARTBEAT_S must be >= 0.05"),
    ({"FLASH_ATTN": "maybe"}, "FLASH_ATTN must be bool"),
    ({"S3_MAX_CONCURRENCY": "65"}, "S3_MAX_CONCURRENCY must be <= 64"),
])
def test_errors_name_the_key(env, message):
    with pytest.raises(SettingsError, match=message):
        Settings.from_mapping(env)


def test_require_model():
    with pytest.raises(SettingsError, match="MODEL_URI is missing"):
        Settings.from_mapping({}).require_model()
    with pytest.raises(SettingsError, match="s3:// or file://"):
        Settings.from_mapping({"MODEL_URI": "http://x/y"}).require_model()
    Settings.from_mapping({"MODEL_URI": "s3://b/k"}).require_model()


def test_settings_are_frozen():
    s = build(ServerSettings, {})
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.queue_size = 3


def test_every_field_is_a_described_setting_with_its_unit():
    """Every field of every settings class is declared with setting(): an upper-case key and a
    description; a field whose name carries a unit (_s, _ms, _bytes) says it in the text."""
    units = {"_s": ", s", "_ms": "ms", "_bytes": "bytes"}
    for _title, cls in config_table.sections():
        for f in dataclasses.fields(cls):
            key, doc = f.metadata.get("key"), f.metadata.get("doc")
            assert key and key.isupper() and doc, f"{cls.__name__}.{f.name}"
            for suffix, word in units.items():
                if f.name.endswith(suffix):
                    assert word in doc, f"{key}: the description does not give the unit"
