"""ModelHost: background fetch + load, readiness reasons, failure for good, cold-start flag."""
import threading

from llmfn.host import ModelHost, model_id
from llmfn.metrics import Metrics
from llmfn.settings import Settings
from llmfn.weights import sha256_file

WAIT_S = 30


def settings(uri, **env):
    return Settings.from_mapping({"MODEL_URI": uri, **env})


def test_start_returns_at_once_and_ready_after_load(tmp_path):
    weights = tmp_path / "m.gguf"
    weights.write_bytes(b"GGUF fake weights")
    gate = threading.Event()

    def loader(path, model_settings):
        gate.wait(WAIT_S)  # loading is slow; start() must not wait for it
        return ("model", path)

    metrics = Metrics()
    host = ModelHost(settings(f"file://{weights}"), loader, metrics=metrics)
    assert host.ready() == (False, "not started")
    host.start()
    ready, reason = host.ready()
    assert not ready and reason in ("starting", "downloading", "loading")
    assert host.alive()[0]
    gate.set()
    assert host.wait(WAIT_S)
    assert host.ready() == (True, "ready")
    assert host.model == ("model", str(weights))
    assert host.sha256 == sha256_file(weights)
    assert set(host.cold_start_s) == {"download", "verify", "load"}
    text = metrics.render()[0].decode()
    assert "llmfn_model_ready 1.0" in text


def test_failure_is_for_good(tmp_path):
    host = ModelHost(settings(f"file://{tmp_path}/missing.gguf"), lambda p, m: None)
    host.start()
    assert not host.wait(WAIT_S)
    ready, reason = host.ready()
    assert not ready and reason.startswith("failed:") and "not found" in reason
    alive, why = host.alive()
    assert not alive and "not found" in why


def test_loader_error_is_reported_without_traceback(tmp_path):
    weights = tmp_path / "m.gguf"
    weights.write_bytes(b"x")

    def loader(path, model_settings):
        raise ValueError("failed to load model from file\nmore detail")

    host = ModelHost(settings(f"file://{weights}"), loader)
    host.start()
    host.wait(WAIT_S)
    assert host.alive() == (False, "model load failed: failed to load model from file")


def test_missing_uri_fails_clearly():
    host = ModelHost(Settings.from_mapping({}), lambda p, m: None)
    host.start()
    host.wait(WAIT_S)
    assert host.ready() == (False, "failed: MODEL_URI is missing")


def test_cold_start_flag_is_taken_once():
    host = ModelHost(settings("s3://b/k.gguf"), lambda p, m: None)
    assert [host.take_cold_start() for _ in range(3)] == [True, False, False]


def test_model_id():
    assert model_id(settings("s3://models/SmolLM2.Q4.gguf")) == "SmolLM2.Q4"
    assert model_id(settings("s3://models/x.gguf", MODEL_NAME="smol")) == "smol"
