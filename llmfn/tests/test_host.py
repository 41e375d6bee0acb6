"""ModelHost: background fetch + load, readiness reasons, failure for good, cold-start flag."""
import functools
import threading
import time

from llmfn.host import ModelHost, model_id, prefetch, preload, same_loader, start_model_early
from llmfn.metrics import Metrics
from llmfn.settings import Settings
from llmfn.weights import sha256_file
from scripts import upload_model

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


# -- the early fetch and load (prefetch/preload, called by a function's module at import) --------
class FakeModel:
    def __init__(self, path, model_settings, tag):
        self.path, self.n_ctx, self.tag = path, model_settings.n_ctx, tag
        self.closed = False

    def close(self):
        self.closed = True


def counting_loader(calls: list, tag: str = "a"):
    def load(path, model_settings):
        calls.append(path)
        return FakeModel(path, model_settings, tag)
    return load


def test_preload_is_adopted_by_a_host_with_the_same_settings(tmp_path):
    weights = tmp_path / "m.gguf"
    weights.write_bytes(b"GGUF fake weights")
    env = {"MODEL_URI": f"file://{weights}", "N_CTX": "512"}
    calls: list = []
    loader = counting_loader(calls)
    pre = preload(lambda cfg: loader, env)
    assert pre is not None
    metrics = Metrics()
    host = ModelHost(Settings.from_mapping(env), loader, metrics=metrics)
    host.start()
    assert host.wait(WAIT_S)
    assert calls == [str(weights)]  # loaded once, early
    assert host.model is pre.model and not host.model.closed
    assert host.sha256 == sha256_file(weights)
    text = metrics.render()[0].decode()
    assert 'llmfn_cold_start_seconds{phase="load_wait"}' in text


def test_preload_with_other_settings_is_freed_and_the_host_loads_its_own(tmp_path):
    weights = tmp_path / "m.gguf"
    weights.write_bytes(b"GGUF fake weights")
    calls: list = []
    loader = counting_loader(calls)
    pre = preload(lambda cfg: loader, {"MODEL_URI": f"file://{weights}", "N_CTX": "512"})
    pre.take()
    early = pre.model
    host = ModelHost(settings(f"file://{weights}", N_CTX="1024"), loader)
    host.start()
    assert host.wait(WAIT_S)
    assert len(calls) == 2 and early.closed
    assert host.model is not early and host.model.n_ctx == 1024


def test_preload_is_not_adopted_by_a_host_with_another_loader(tmp_path):
    weights = tmp_path / "m.gguf"
    weights.write_bytes(b"GGUF fake weights")
    env = {"MODEL_URI": f"file://{weights}"}

    def load(path, model_settings, *, tag):
        return FakeModel(path, model_settings, tag)

    pre = preload(lambda cfg: functools.partial(load, tag="early"), env)
    assert pre is not None
    host = ModelHost(Settings.from_mapping(env), functools.partial(load, tag="host"))
    host.start()
    assert host.wait(WAIT_S)
    assert host.model.tag == "host" and pre.model is None


def test_same_loader():
    def f(path, model, *, gen):
        return None

    assert same_loader(functools.partial(f, gen=1), functools.partial(f, gen=1))
    assert not same_loader(functools.partial(f, gen=1), functools.partial(f, gen=2))
    assert same_loader(f, f) and not same_loader(f, lambda p, m: None)


def test_preload_never_loads_a_file_that_failed_verification(tmp_path):
    weights = tmp_path / "m.gguf"
    weights.write_bytes(b"GGUF fake weights")
    env = {"MODEL_URI": f"file://{weights}", "MODEL_SHA256": "0" * 64}
    calls: list = []
    loader = counting_loader(calls)
    pre = preload(lambda cfg: loader, env)
    pre.take()
    host = ModelHost(Settings.from_mapping(env), loader)
    host.start()
    assert not host.wait(WAIT_S)
    assert calls == []
    ready, reason = host.ready()
    assert not ready and "sha256 mismatch" in reason


def test_preload_without_a_model_uri_does_nothing():
    assert preload(lambda cfg: (lambda p, m: None), {}) is None
    assert prefetch({}) is None


def test_prefetch_lets_a_cold_s3_fetch_set_up_first(tmp_path, s3, bucket, s3_env):
    """With nothing cached, prefetch returns once the fetch's set-up is over (its bytes flow or
    it ended); a host built later adopts the same fetch, so the object is fetched once."""
    payload = b"GGUF" + bytes(range(256)) * 4096
    (tmp_path / "m.gguf").write_bytes(payload)
    digest = upload_model.upload(s3, str(tmp_path / "m.gguf"), bucket, "m.gguf")
    env = {"MODEL_URI": f"s3://{bucket}/m.gguf", "MODEL_SHA256": digest,
           "MODEL_CACHE_DIR": str(tmp_path / "cache"), **s3_env}
    fetcher = prefetch(env, wait_s=WAIT_S)
    assert fetcher is not None and fetcher.past_setup.is_set()
    host = ModelHost(Settings.from_mapping(env), lambda path, m: open(path, "rb").read())
    host.start()
    assert host.wait(WAIT_S)
    assert host.model == payload and host._fetcher is None
    assert host.cold_start_s["download"] > 0  # the early fetch downloaded it, nobody else


def test_start_model_early_fetches_before_the_loader_imports(tmp_path):
    """A function's early.py: the fetch is already running when ``make_loader`` is called (its
    heavy imports overlap the download), the model loads as soon as the file is there, and a
    host with the same settings adopts both."""
    weights = tmp_path / "m.gguf"
    weights.write_bytes(b"GGUF fake weights")
    defaults = {"MODEL_URI": f"file://{weights}", "N_CTX": "512",
                "MODEL_CACHE_DIR": str(tmp_path / "cache")}
    calls: list = []
    loader = counting_loader(calls)
    asked_at: list = []

    def make_loader(cfg):
        asked_at.append(time.monotonic())
        return loader

    pre = start_model_early(make_loader, defaults)
    assert pre is not None and len(asked_at) == 1
    assert 0 < pre.fetcher.t_start <= asked_at[0]  # the fetch began first
    host = ModelHost(Settings.from_mapping(defaults), loader)
    host.start()
    assert host.wait(WAIT_S)
    assert calls == [str(weights)] and host.model is pre.model  # loaded once, early
