"""A pod's life as Knative runs it, with the real queue-proxy (issue 20, section 2).

Cold start: generate with an empty model cache pulls SmolLM2 from MinIO (reached from the
pod's namespace through a relay on the host side of its veth). The test plays the activator:
it probes with ``User-Agent: kube-probe/...`` and ``K-Network-Probe: queue`` until 200 (each
probe waits inside queue-proxy up to its 10 s cap; it probes again after), holding the user
requests meanwhile, then releases them. In the same start a direct client polls the function's
own readiness every 50 ms (as queue-proxy does) and sends the same request straight to it, so
both figures come from one start (on a shared machine two starts differ by seconds); start to
first token through queue-proxy must be within 0.1 s of the direct one (medians). The first
start has the relay capped (SLOW_BPS) so it outlasts queue-proxy's 10 s probe cap: a probe must
be answered not-ready at the cap and the next one 200. A separate start, capped too, records
what requests sent before readiness get, in order (queue-proxy's 502, our own 503, 200).

Drain: two revisions of generate, each queue-proxy + function in its own network namespace,
run at the same time; >= 400 probes go through a router that sends to the old revision while
its queue-proxy answers the activator's probe 200, else to the new one. The old pod is deleted
as the kubelet deletes it: queue-proxy gets SIGTERM at once; the function's preStop calls
``GET :8022/wait-for-drain`` and the function gets SIGTERM only after that returned. No probe
may fail and every stream must end with [DONE].
"""
from __future__ import annotations

import json
import random
import shutil
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from scripts import (
    knative_pod,
    run,  # scripts/run.py: S3 keys of `make run`
)
from scripts.tcp_throttle import Throttle
from tests.support.models import upload_function_models
from tests.support.queueproxy import REPORT, function_env, record, revision_spec, stream

COLD_RUNS = 1  # starts, each seen direct and through queue-proxy; the first one throttled
# MinIO through the relay at this many bytes/s per connection: SmolLM2's 12 ranges of 8 MiB,
# 8 at a time, take two rounds of ~6.5 s: a start slower than queue-proxy's 10 s probe cap,
# and a worker that answers while the model still downloads
SLOW_BPS = 1.3e6
PROBE_CAP_S = 10  # queue-proxy answers a probe not-ready after retrying this long
COLD_MARGIN_S = 0.1  # issue 20: through queue-proxy at most the direct first token + 0.1 s
USERS = 2  # user requests held during the cold start
PROBES = 420
CONCURRENCY = 6
LONG_STREAMS = 3
POLL_S = 0.02
WAIT_S = 180



# -- cold start -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def s3_pod_env(minio, tmp_path_factory):
    """A network namespace for the cold starts and the env reaching MinIO from inside it."""
    upload_function_models(minio)
    netns = knative_pod.Netns()
    relay = Throttle(upstream=(minio.host, minio.port), host=netns.host_addr).start()
    env = {"MODEL_URI": f"s3://{run.BUCKET}/{run.FUNCTIONS['generate'][2]}",
           "S3_ENDPOINT_URL": relay.url, "AWS_ACCESS_KEY_ID": minio.access_key,
           "AWS_SECRET_ACCESS_KEY": minio.secret_key, "AWS_REGION": "us-east-1"}
    try:
        yield netns, env, relay
    finally:
        relay.close()
        netns.delete()


def _cold_pod(netns, env, tmp: Path, tag: str) -> knative_pod.Pod:
    fn_env = function_env("generate", tmp / tag, model="smollm2", **env)  # empty cache
    return knative_pod.Pod("generate", revision_spec("generate"), fn_env, tmp, netns=netns,
                           revision=f"generate-{tag}")


REQUEST = {"prompt": "Once upon a time", "max_tokens": 2, "temperature": 0}


def _start(pod) -> dict:
    """One cold start of ``pod``, seen both ways at once. The activator: probe until 200 (again
    after each 10 s cap), hold the users, release them through queue-proxy. A direct client:
    poll the function's own readiness every 50 ms (as queue-proxy does), then send the same
    request straight to it, at the moment the users are released (so the two paths do not
    queue behind each other's prefill; a request sent 16 ms earlier took the first prefill
    step and made the comparison one decode step apart once). Seconds from the start to each
    one's readiness and first token (direct: its readiness + its own time to first token)."""
    released = threading.Event()
    t0 = time.perf_counter()
    firsts: list[float] = []

    def user():
        released.wait(WAIT_S)
        return stream(pod.url, REQUEST,
                      on_first=lambda: firsts.append(time.perf_counter() - t0))

    def direct():
        end = t0 + WAIT_S
        while pod.fn.readiness()[0] != 200 and time.perf_counter() < end:
            time.sleep(0.05)
        ready = time.perf_counter() - t0
        # Its request goes with the users' (released), so neither waits behind the other's
        # prefill: the direct first token is its readiness + its own time to first token.
        released.wait(WAIT_S)
        sent = time.perf_counter() - t0
        first: list[float] = []
        s = stream(pod.direct_url, REQUEST,
                   on_first=lambda: first.append(time.perf_counter() - t0))
        return ready, ready + first[0] - sent if first else None, s

    probes = []
    with ThreadPoolExecutor(USERS + 1) as pool:
        users = [pool.submit(user) for _ in range(USERS)]
        pod.start()
        seen_direct = pool.submit(direct)
        while time.perf_counter() - t0 < WAIT_S:
            t = time.perf_counter()
            status, body = pod.probe()
            probes.append((round(t - t0, 2), round(time.perf_counter() - t0, 2), status,
                           body[:40]))
            if status == 200:
                break
            if status is None:
                time.sleep(0.05)  # queue-proxy not listening yet
        ready = time.perf_counter() - t0
        released.set()
        streams = [u.result(WAIT_S) for u in users]
        direct_ready, direct_first, direct_stream = seen_direct.result(WAIT_S)
    assert all(s.status == 200 and s.done for s in [*streams, direct_stream]), \
        [s.body for s in streams]
    return {"direct": {"ready_s": direct_ready, "first_token_s": direct_first},
            "queue-proxy": {"ready_s": ready, "first_token_s": min(firsts)},
            "probes (sent_s, answered_s, status, body)": probes}


def test_cold_start_as_the_activator_does_it(s3_pod_env, tmp_path):
    netns, env, relay = s3_pod_env
    runs = []
    for i in range(COLD_RUNS):
        relay.rate_bps = SLOW_BPS if i == 0 else 0
        pod = _cold_pod(netns, env, tmp_path, f"cold{i}")
        try:
            runs.append({"throttled": i == 0, **_start(pod)})
        finally:
            pod.stop()
    relay.rate_bps = 0
    med = {p: {k: round(statistics.median(r[p][k] for r in runs), 3)
               for k in ("ready_s", "first_token_s")} for p in ("direct", "queue-proxy")}
    report = {"median": med, "runs": runs}
    record("cold_start", report)
    for r in runs:
        assert r["probes (sent_s, answered_s, status, body)"][-1][2] == 200
    # the throttled start: a probe queue-proxy answered not-ready after its 10 s cap, then the
    # activator probed again and got 200
    probes = runs[0]["probes (sent_s, answered_s, status, body)"]
    capped = [i for i, (sent, answered, status, _) in enumerate(probes)
              if status not in (None, 200) and answered - sent >= PROBE_CAP_S - 0.5]
    assert runs[0]["queue-proxy"]["ready_s"] > PROBE_CAP_S, report
    assert capped and capped[0] < len(probes) - 1, ("no probe past the 10 s cap", probes)
    assert med["queue-proxy"]["first_token_s"] <= med["direct"]["first_token_s"] + COLD_MARGIN_S, \
        report


def test_requests_before_readiness(s3_pod_env, tmp_path):
    """What a request sent through queue-proxy before the pod is ready gets, in order."""
    netns, env, relay = s3_pod_env
    relay.rate_bps = SLOW_BPS  # the worker answers while the model still downloads
    pod = _cold_pod(netns, env, tmp_path, "early")
    seen: list[tuple[float, float, int | None, str]] = []
    try:
        t0 = time.perf_counter()
        pod.start()
        while time.perf_counter() - t0 < WAIT_S:
            t = time.perf_counter() - t0
            try:
                r = requests.post(f"{pod.url}/v1/completions", json=REQUEST, timeout=30)
                status, text = r.status_code, r.text.strip()
            except requests.RequestException as err:
                status, text = None, type(err).__name__
            if not seen or (seen[-1][2], seen[-1][3][:60]) != (status, text[:60]):
                seen.append((round(t, 2), round(time.perf_counter() - t0, 2), status,
                             text[:400]))
            if status == 200:
                break
            time.sleep(0.05)
    finally:
        pod.stop()
        relay.rate_bps = 0
    record("before_readiness (sent_s, answered_s, status, body)", seen)
    statuses = [s for _, _, s, _ in seen]
    assert statuses[-1] == 200, seen
    # in order: nothing listens on 8012 yet; queue-proxy's 502 while the function does not
    # listen; our own 503 in the OpenAI shape while the model downloads; the answer
    order = [s for i, s in enumerate(statuses) if i == 0 or statuses[i - 1] != s]
    assert [s for s in order if s is not None] == [502, 503, 200], seen
    ours = [body for _, _, s, body in seen if s == 503]
    assert all(json.loads(b)["error"]["code"] == "model_not_ready" for b in ours), seen


# -- streams cut by queue-proxy ------------------------------------------------------------------
SHORT_THREADS = 6
SHORT_PER_THREAD = 200  # ~0.2 % of streams were cut without full duplex: ~2 expected in 1200


@pytest.mark.parametrize("function", ["generate", "embed", "audit"])
def test_queue_proxy_runs_full_duplex_as_deployed(function):
    """Every revision asks Serving for queue-proxy's full-duplex HTTP/1 (what
    test_short_streams_are_never_cut needs), and the pods here get it as Serving sets it."""
    spec = revision_spec(function)
    assert spec.full_duplex, f"{function}: {knative_pod.FULL_DUPLEX_ANNOTATION} is not Enabled"
    assert spec.queue_env(revision="r", pod_ip="10.0.0.2")["ENABLE_HTTP_FULL_DUPLEX"] == "true"


def test_short_streams_are_never_cut(tmp_path):
    """Many short streams through one pod, keep-alive sessions on several threads: none may be
    cut. Without full duplex Go's server closes the request body when the response starts and
    the transport's last read of it then closes the connection to the function mid-stream
    (``ReverseProxy read error during body copy: ... use of closed network connection``)."""
    pod = knative_pod.Pod("generate", revision_spec("generate"),
                          function_env("generate", tmp_path / "fn"), tmp_path,
                          revision="generate-short")
    results: list[tuple[bool, int | str, dict]] = []
    lock = threading.Lock()

    def client(k: int) -> None:
        session = requests.Session()
        for j in range(SHORT_PER_THREAD):
            seen: dict = {}
            try:
                ok, status = _stream(pod.url, {"prompt": f"{j} Once upon a time", "seed": j,
                                               "max_tokens": 32, "temperature": 0.8},
                                     session, None, seen)
            except requests.RequestException as err:
                ok, status = False, type(err).__name__
                seen["error"] = f"{type(err).__name__}: {err}"[:300]
            with lock:
                results.append((ok, status, seen))

    try:
        pod.start()
        pod.wait_ready(WAIT_S)
        with ThreadPoolExecutor(SHORT_THREADS) as pool:
            for f in [pool.submit(client, k) for k in range(SHORT_THREADS)]:
                f.result(WAIT_S)
    finally:
        pod.stop()
    failed = [(status, seen) for ok, status, seen in results if not ok]
    assert len(results) == SHORT_THREADS * SHORT_PER_THREAD
    if failed:
        paths = _save_logs(tmp_path, [pod])
        for status, seen in failed:
            print("failed:", status, json.dumps(seen, default=str)[:2000])
        errors = [line for path in paths if "queue" in path.name
                  for line in path.read_text(errors="replace").splitlines()
                  if "error" in line.lower()]
        assert not failed, {"failed": len(failed), "first": failed[:3],
                            "proxy_errors": errors[:10], "logs": [str(p) for p in paths]}


# -- drain ----------------------------------------------------------------------------------------
class Router:
    """The activator's view: the old revision while its queue-proxy answers the probe 200."""

    def __init__(self, old: knative_pod.Pod, new: knative_pod.Pod):
        self.old, self.new = old, new
        self.old_ready = True
        self.flip_s: float | None = None
        self.flip_answer: tuple[int | None, str] | None = None  # the first non-200 probe
        self.t_sigterm: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(20)

    def _watch(self):
        while not self._stop.is_set():
            status, body = self.old.probe(timeout_s=2)
            self.old_ready = status == 200
            if not self.old_ready and self.t_sigterm is not None and self.flip_s is None:
                self.flip_s = time.monotonic() - self.t_sigterm
                self.flip_answer = (status, body.strip()[:100])
            time.sleep(POLL_S)

    def pick(self) -> tuple[str, knative_pod.Pod]:
        return ("old", self.old) if self.old_ready else ("new", self.new)


def _probe(kind: str, i: int, router: Router, session: requests.Session,
           started: threading.Event | None = None) -> dict:
    backend, pod = router.pick()
    t = time.monotonic()
    seen: dict = {}
    try:
        if kind in ("stream", "long"):
            ok, status = _stream(pod.url, {"prompt": f"{i} Once upon a time", "seed": i,
                                           "max_tokens": 600 if kind == "long" else 32,
                                           "temperature": 0.8}, session,
                                 started.set if started else None, seen)
        else:
            r = session.post(f"{pod.url}/v1/completions", timeout=(3, 60),
                             json={"prompt": f"{i} The answer is", "max_tokens": 8,
                                   "temperature": 0.8, "seed": i})
            ok, status = r.status_code == 200 and len(r.json()["choices"]) == 1, r.status_code
    except requests.RequestException as err:
        ok, status = False, type(err).__name__
        seen["error"] = f"{type(err).__name__}: {err}"[:300]
    finally:
        if started is not None:
            started.set()
    out = {"kind": kind, "backend": backend, "ok": ok, "status": status, "t_send": t,
           "t_end": time.monotonic()}
    if not ok:
        out["seen"] = seen  # what arrived before the failure
    return out


def _stream(url: str, body: dict, session: requests.Session, on_first, seen: dict
            ) -> tuple[bool, int]:
    """POST a streamed request and read it to [DONE], recording into ``seen`` what arrived
    (status, headers, each line with its time after sending) for the report of a failure."""
    t0 = time.monotonic()
    resp = session.post(f"{url}/v1/completions", json={**body, "stream": True}, stream=True,
                        timeout=(5, 120))
    seen.update(status=resp.status_code, headers=dict(resp.headers), lines=[])
    if resp.status_code != 200:
        seen["body"] = resp.text[:400]
        return False, resp.status_code
    last = b""
    for line in resp.iter_lines(chunk_size=None):
        if not line:
            continue
        seen["lines"].append((round(time.monotonic() - t0, 3), line[:100].decode(errors="replace")))
        if line.startswith(b"data: ") and on_first is not None:
            on_first()
            on_first = None
        last = line
    resp.close()
    return last == b"data: [DONE]", resp.status_code


def _save_logs(tmp_path: Path, pods) -> list[Path]:
    """Copy every process log of ``pods`` beside the test's files and to .state/knative/ (pytest
    truncates an assertion message, so logs in it go unread); the paths."""
    paths = []
    for pod in pods:
        for proc in (pod.queue, pod.fn):
            src = Path(proc.log_path)
            if not src.exists():
                continue
            for dst_dir in (tmp_path / "logs", REPORT.parent / "lifecycle-logs"):
                dst_dir.mkdir(parents=True, exist_ok=True)
                dst = dst_dir / src.name
                shutil.copyfile(src, dst)
                paths.append(dst)
    print("process logs:", *map(str, paths), sep="\n  ")
    return paths


def test_rolling_restart_drains_like_a_cluster(tmp_path):
    """The function's environment is the manifest's (containerConcurrency, SLOTS, QUEUE_SIZE as
    deployed) plus the local model file."""
    spec = revision_spec("generate")
    results: list[dict] = []
    lock = threading.Lock()
    local = threading.local()
    pods: list[knative_pod.Pod] = []
    try:
        for n in (1, 2):
            pods.append(knative_pod.Pod("generate", spec,
                                        function_env("generate", tmp_path / str(n)), tmp_path,
                                        revision=f"generate-0000{n}"))
        old, new = pods
        for pod in (old, new):
            pod.start()
        for pod in (old, new):
            pod.wait_ready(WAIT_S)
        assert old.netns.name != new.netns.name
        kinds = random.Random(3).choices(["stream", "json"], weights=[0.6, 0.4], k=PROBES)

        def one(i, kind, started=None):
            local.session = getattr(local, "session", None) or requests.Session()
            out = _probe(kind, i, router, local.session, started)
            with lock:
                results.append(out)

        with Router(old, new) as router, ThreadPoolExecutor(CONCURRENCY + LONG_STREAMS) as pool:
            half = PROBES // 2
            futures = [pool.submit(one, i, k) for i, k in enumerate(kinds[:half])]
            for f in futures[:half - 2 * CONCURRENCY]:
                f.result(WAIT_S)
            started = [threading.Event() for _ in range(LONG_STREAMS)]
            futures += [pool.submit(one, PROBES + j, "long", started[j])
                        for j in range(LONG_STREAMS)]
            for ev in started:
                assert ev.wait(60)
            futures += [pool.submit(one, half + i, k) for i, k in enumerate(kinds[half:])]
            router.t_sigterm = time.monotonic()
            termination = old.terminate()  # SIGTERM queue-proxy; preStop; SIGTERM function
            for f in futures:
                f.result(WAIT_S)
            flip_s, flip_answer = router.flip_s, router.flip_answer
    finally:
        for pod in pods:
            pod.stop()
    fn_log = old.fn.log_tail(20000)
    failed = [r for r in results if not r["ok"]]
    by = {}
    for r in results:
        key = f"{r['kind']}->{r['backend']}"
        by[key] = by.get(key, 0) + 1
    t0 = termination["t0"]  # the queue-proxy's SIGTERM (time.monotonic())
    long_ends = sorted(round(r["t_end"] - t0, 2) for r in results if r["kind"] == "long")
    old_last_end = max(r["t_end"] for r in results if r["backend"] == "old") - t0
    report = {"probes": len(results), "by_kind_and_revision": by, "failed": failed[:10],
              "old_probe_not_ready_after_s": None if flip_s is None else round(flip_s, 3),
              "old_probe_first_not_ready_answer": flip_answer,
              "long_streams_end_after_sigterm_s": long_ends,
              "last_request_to_old_ended_s": round(old_last_end, 2),
              "termination": {k: v for k, v in termination.items() if k != "t0"}}
    record("drain", report)
    assert len(results) >= 400 + LONG_STREAMS
    if failed:
        log_paths = _save_logs(tmp_path, (old, new))
        for r in failed:
            print("failed:", json.dumps({k: (round(v - t0, 3) if k.startswith("t_") else v)
                                         for k, v in r.items()}, default=str))
        proxy_errors = [line for path in log_paths if "queue" in path.name
                        for line in path.read_text(errors="replace").splitlines()
                        if "error" in line.lower()]
        assert not failed, ({"failed": len(failed), "proxy_errors": proxy_errors[:10],
                             "logs": [str(p) for p in log_paths]}, report)
    assert all(r["backend"] == "old" for r in results if r["kind"] == "long")
    assert any(k.endswith("->new") for k in by) and any(k.endswith("->old") for k in by), by
    # the kubelet's order: queue-proxy's SIGTERM first (t = 0), its probe answers not-ready
    # before its drain ends; the preStop's /wait-for-drain returns; only then the function's
    # SIGTERM, after the last request the router sent the old revision had ended (the long
    # streams ran across the start of the drain)
    assert termination["queue_sigterm_s"] == 0 < termination["prestop_sent_s"], report
    assert flip_s is not None and flip_s < termination["drained_s"], report
    assert flip_answer is not None and flip_answer[0] == 503, report
    assert flip_answer[1] == "shutting down", report  # what docs/deploy.md says
    assert termination["wait_for_drain"] == 200, report
    assert min(long_ends) > 0, ("a long stream ended before the drain began", report)
    assert old_last_end < termination["drained_s"] <= termination["function_sigterm_s"], report
    assert termination["function_rc"] == 0, (report, fn_log[-3000:])
    assert termination["queue_rc"] == 0, (report, old.queue.log_tail(3000))
    assert "shutting_down" not in fn_log, "the function refused a request while stopping"
