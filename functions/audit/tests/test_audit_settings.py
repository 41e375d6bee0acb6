import pytest
from audit_function.settings import AuditSettings

from llmfn.settings import SettingsError


def test_defaults():
    s = AuditSettings.from_mapping({})
    assert s.mongodb_uri == "mongodb://127.0.0.1:27017/"
    assert (s.database, s.collection, s.deadletter_collection) == (
        "llmfn", "inference_events", "dead_letters")
    assert s.timeout_ms == 2000 and s.retention_days == 0


def test_parse_and_errors_name_the_key():
    s = AuditSettings.from_mapping({"RETENTION_DAYS": "30", "MONGODB_TIMEOUT_MS": "500"})
    assert s.retention_days == 30 and s.timeout_ms == 500
    with pytest.raises(SettingsError, match="RETENTION_DAYS must be >= 0"):
        AuditSettings.from_mapping({"RETENTION_DAYS": "-1"})
    with pytest.raises(SettingsError, match="MONGODB_TIMEOUT_MS must be int"):
        AuditSettings.from_mapping({"MONGODB_TIMEOUT_MS": "fast"})
