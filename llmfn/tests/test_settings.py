"""Settings: strict parsing, errors naming the key, defaults, function defaults."""
import dataclasses

import pytest

from llmfn.settings import (
    ServerSettings,
    Settings,
    SettingsError,
    build,
    check_templates,
    with_defaults,
)
from scripts import config_table  # scripts/config_table.py: every settings class of the project


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


@pytest.mark.parametrize("value", ["minio:9000", "http://", "ftp://minio:9000",
                                   "http://minio:port"])
def test_s3_endpoint_must_be_a_url(value):
    with pytest.raises(SettingsError, match="S3_ENDPOINT_URL"):
        Settings.from_mapping({"S3_ENDPOINT_URL": value})
    for good in ("", "http://127.0.0.1:9000", "https://s3.example.com"):
        assert Settings.from_mapping({"S3_ENDPOINT_URL": good}).storage.s3_endpoint_url == good


def test_unresolved_func_templates_are_named():
    """func.yaml's `{{ secret:... }}` / `{{ env:... }}` reach a host run as text."""
    check_templates({"A": "{{ not a func template }}", "B": "plain", "C": ""})
    with pytest.raises(SettingsError, match=r"^MONGODB_URI is an unresolved func.yaml "
                                            r"template .*-e MONGODB_URI="):
        check_templates({"MONGODB_URI": "{{ secret:llmfn-mongodb:MONGODB_URI }}", "X": "1"})
    with pytest.raises(SettingsError, match=r"^API_KEYS, K are unresolved"):
        check_templates({"K": "{{env:HOME}}", "API_KEYS": "{{ secret:keys }}"})
    # only the template is shown, never the rest of the value (a URI may carry a password)
    with pytest.raises(SettingsError) as err:
        check_templates({"MONGODB_URI": "mongodb://u:hunter2@{{ env:MONGO_HOST }}/db"})
    assert "{{ env:MONGO_HOST }}" in str(err.value) and "hunter2" not in str(err.value)


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


def test_each_key_is_declared_once():
    """One field per environment key across every settings class (SHUTDOWN_GRACE_S and
    LOG_LEVEL were once in both ServerSettings and GunicornSettings, with two defaults)."""
    keys = [f.metadata["key"] for _title, cls in config_table.sections()
            for f in dataclasses.fields(cls)]
    assert sorted(k for k in set(keys) if keys.count(k) > 1) == []


def test_cfg_over_defaults_and_an_unset_value_hides_no_default():
    cfg = {"N_CTX": "512", "QUEUE_SIZE": None, "K_SINK": ""}
    merged = with_defaults(cfg, {"N_CTX": "1024", "QUEUE_SIZE": "8", "SLOTS": "2"})
    assert merged == {"N_CTX": "512", "QUEUE_SIZE": "8", "SLOTS": "2", "K_SINK": ""}
    assert with_defaults({"A": None}) == {}


def test_no_mapping_means_the_process_environment(monkeypatch):
    monkeypatch.setenv("LLMFN_TEST_SETTING", "from-env")
    merged = with_defaults(None, {"LLMFN_TEST_SETTING": "default", "OTHER": "x"})
    assert merged["LLMFN_TEST_SETTING"] == "from-env" and merged["OTHER"] == "x"
