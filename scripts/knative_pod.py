"""A Knative revision pod on this machine: a function behind Serving's real queue-proxy.

In a cluster every revision pod holds the user container and the ``queue-proxy`` sidecar in one
network namespace: queue-proxy takes the traffic on 8012, proxies it to the function on
``127.0.0.1:$USER_PORT`` (8080), answers the activator's and kubelet's probes by running the
function's readiness probe, reports concurrency to the autoscaler on 9090 and serves
``/wait-for-drain`` (the function's preStop hook) on 8022. Here a :class:`Pod` is the same: its
own network namespace (``ip netns``, root only) with a veth pair to this host, the function
(gunicorn, as the container runs it) and ``.state/bin/queue`` (installed from
``../shared/knative`` by ``install.sh``) inside it. The host reaches the pod at its address
(``pod_addr``), as the activator reaches a pod IP; the fixed ports 8022 and 9090 never clash
because each pod has its own namespace.

The queue-proxy is configured the way Serving's revision reconciler configures it
(``makeQueueContainer`` in knative/serving ``pkg/reconciler/revision/resources/queue.go``), from
the Knative Service as ``kustomize build deploy`` renders it (:class:`RevisionSpec`):
containerConcurrency, timeoutSeconds, responseStartTimeoutSeconds, idleTimeoutSeconds and the
container's readiness probe as ``SERVING_READINESS_PROBE`` (host 127.0.0.1, the user port,
scheme HTTP, plus the ``K-Kubelet-Probe: queue`` header, as ``applyReadinessProbeDefaults``).
The template's ``features.knative.dev/http-full-duplex`` annotation becomes
``ENABLE_HTTP_FULL_DUPLEX`` as Serving sets it.

Used by tests/test_knative_queue_proxy*.py, bench/bench_queue_proxy.py and ``make run
KNATIVE=1`` (scripts/run.py).
"""
from __future__ import annotations

import fcntl
import http.client
import ipaddress
import json
import os
import signal
import struct
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from scripts import procs

ROOT = procs.REPO_ROOT
BIN = ROOT / ".state" / "bin"
QUEUE = BIN / "queue"
KUSTOMIZE = BIN / "kustomize"
INSTALL_SH = ROOT.parent / "shared" / "knative" / "install.sh"
USER_PORT = 8080  # the container port of deploy/*.yaml
QUEUE_PORT = 8012  # networking.BackendHTTPPort: where the activator and ingress send traffic
ADMIN_PORT = 8022  # networking.QueueAdminPort: /wait-for-drain
METRICS_PORT = 9090  # networking.AutoscalingQueueMetricsPort: the autoscaler's Stat
# What the activator sends to learn that a pod is ready (knative.dev/networking: the
# kube-probe user agent and K-Network-Probe: queue); queue-proxy answers 200 "queue" once the
# function's readiness probe passed.
PROBE_HEADERS = {"User-Agent": "kube-probe/1.31", "K-Network-Probe": "queue"}
NETNS_PREFIX = "llmfn-qp"
# The revision annotation Serving turns into queue-proxy's ENABLE_HTTP_FULL_DUPLEX (value
# "Enabled", case-insensitive). Without it Go's HTTP/1 server drains and closes the request body
# when the response starts, and the transport's last read of that body (its check that nothing
# follows Content-Length) then fails and closes the connection to the function mid-response
# (golang/go#40747): "ReverseProxy read error during body copy: ... use of closed network
# connection", and the client's stream is cut.
FULL_DUPLEX_ANNOTATION = "features.knative.dev/http-full-duplex"
SUBNET = ipaddress.ip_network("10.213.0.0/16")  # one /30 per pod: host side .1, pod side .2


class PodError(procs.ServerError):
    """A pod could not be set up (no root, no ``ip``, no queue binary...)."""


def ensure_queue() -> Path:
    """``.state/bin/queue``, unpacked by ../shared/knative/install.sh if missing (idempotent)."""
    if not os.access(QUEUE, os.X_OK):
        if not INSTALL_SH.exists():
            raise PodError(f"{QUEUE} missing and {INSTALL_SH} not found")
        subprocess.run(["bash", str(INSTALL_SH), str(BIN)], check=True, timeout=300,
                       stdout=subprocess.DEVNULL)
    return QUEUE


# -- the revision as the manifests render it ------------------------------------------------------
def services(objs: list[dict]) -> dict[str, dict]:
    """name -> Knative Service among rendered ``objs``."""
    return {d["metadata"]["name"]: d for d in objs
            if d.get("kind") == "Service"
            and d.get("apiVersion", "").startswith("serving.knative.dev/")}


def render_services(kdir: Path = ROOT / "deploy") -> dict[str, dict]:
    """name -> Knative Service of ``kustomize build kdir`` (the real binary, ``make services``)."""
    import yaml  # the venv's PyYAML: only the renderer needs it

    proc = subprocess.run([str(KUSTOMIZE), "build", str(kdir)], capture_output=True, text=True,
                          timeout=120)
    if proc.returncode != 0:
        raise PodError(f"kustomize build {kdir} exited {proc.returncode}:\n{proc.stderr}")
    return services([d for d in yaml.safe_load_all(proc.stdout) if d])


def revision_specs(kdir: Path = ROOT / "deploy") -> dict[str, RevisionSpec]:
    """name -> :class:`RevisionSpec` of each Knative Service ``kustomize build kdir`` renders:
    what every pod here (tests, benchmark, ``make run KNATIVE=1``) configures queue-proxy from."""
    return {name: RevisionSpec.from_service(svc) for name, svc in render_services(kdir).items()}


@dataclass(frozen=True)
class RevisionSpec:
    """What Serving takes from a Service's revision template to configure queue-proxy."""
    service: str
    container_concurrency: int
    timeout_s: int
    response_start_timeout_s: int | None
    idle_timeout_s: int | None
    readiness_probe: dict
    container_env: dict  # the literal env values of the user container (valueFrom left out)
    full_duplex: bool = False  # features.knative.dev/http-full-duplex: Enabled on the template

    @classmethod
    def from_service(cls, svc: dict) -> RevisionSpec:
        spec = svc["spec"]["template"]["spec"]
        annotations = svc["spec"]["template"].get("metadata", {}).get("annotations", {})
        (container,) = spec["containers"]
        return cls(service=svc["metadata"]["name"],
                   container_concurrency=int(spec.get("containerConcurrency", 0)),
                   timeout_s=int(spec.get("timeoutSeconds", 0)),
                   response_start_timeout_s=spec.get("responseStartTimeoutSeconds"),
                   idle_timeout_s=spec.get("idleTimeoutSeconds"),
                   readiness_probe=container.get("readinessProbe") or {},
                   container_env={e["name"]: str(e["value"]) for e in container.get("env", [])
                                  if "value" in e},
                   full_duplex=str(annotations.get(FULL_DUPLEX_ANNOTATION, "")).lower()
                   == "enabled")

    def probe_json(self, user_port: int = USER_PORT) -> str:
        """``SERVING_READINESS_PROBE``: the container's probe with Serving's defaults applied
        (``applyReadinessProbeDefaults``)."""
        probe = json.loads(json.dumps(self.readiness_probe))
        if "httpGet" in probe:
            get = probe["httpGet"]
            get.update(host="127.0.0.1", port=user_port)
            get.setdefault("scheme", "HTTP")
            get["httpHeaders"] = [*get.get("httpHeaders", []),
                                  {"name": "K-Kubelet-Probe", "value": "queue"}]
        elif "tcpSocket" in probe:
            probe["tcpSocket"].update(host="127.0.0.1", port=user_port)
        probe.setdefault("successThreshold", 1)  # the webhook's default
        if probe.get("periodSeconds", 0) > 0 and probe.get("timeoutSeconds", 0) < 1:
            probe["timeoutSeconds"] = 1
        return json.dumps(probe)

    def queue_env(self, *, revision: str, pod_ip: str, user_port: int = USER_PORT,
                  namespace: str = "llmfn", **override) -> dict[str, str]:
        """The queue-proxy's environment as Serving sets it; ``override`` replaces entries
        (a test shortening REVISION_RESPONSE_START_TIMEOUT_SECONDS)."""
        env = {"SERVING_NAMESPACE": namespace, "SERVING_SERVICE": self.service,
               "SERVING_CONFIGURATION": self.service, "SERVING_REVISION": revision,
               "SERVING_POD": f"{revision}-deployment-0", "SERVING_POD_IP": pod_ip,
               "QUEUE_SERVING_PORT": str(QUEUE_PORT), "QUEUE_SERVING_TLS_PORT": "8112",
               "USER_PORT": str(user_port),
               "CONTAINER_CONCURRENCY": str(self.container_concurrency),
               "REVISION_TIMEOUT_SECONDS": str(self.timeout_s),
               "SERVING_LOGGING_CONFIG": "", "SERVING_LOGGING_LEVEL": "",
               "ENABLE_HTTP_FULL_DUPLEX": str(self.full_duplex).lower(),
               "SERVING_READINESS_PROBE": self.probe_json(user_port)}
        if self.response_start_timeout_s is not None:
            env["REVISION_RESPONSE_START_TIMEOUT_SECONDS"] = str(self.response_start_timeout_s)
        if self.idle_timeout_s is not None:
            env["REVISION_IDLE_TIMEOUT_SECONDS"] = str(self.idle_timeout_s)
        env.update({k: str(v) for k, v in override.items()})
        return env


# -- the pod's network namespace ------------------------------------------------------------------
def _ip(*args: str) -> str:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise PodError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


_alloc_lock = threading.Lock()  # this process's threads; the flock below: other processes
ALLOC_LOCK = ROOT / ".state" / "knative" / "netns.lock"


class Netns:
    """A network namespace with loopback up and a veth pair to this host (/30: host .1, pod
    .2), like a pod's. Names carry this process's id; namespaces left by a process that died
    are removed when the next one is made."""
    _count = 0

    def __init__(self):
        if os.geteuid() != 0:
            raise PodError("a pod's network namespace needs root (ip netns)")
        ALLOC_LOCK.parent.mkdir(parents=True, exist_ok=True)
        with _alloc_lock, open(ALLOC_LOCK, "a") as lock:
            # another process (a second test run, `make run KNATIVE=1`) may be choosing an
            # address at the same moment: choose and claim it (addr add below) under the lock
            fcntl.flock(lock, fcntl.LOCK_EX)
            _sweep()
            Netns._count += 1
            self.name = f"{NETNS_PREFIX}-{os.getpid()}-{Netns._count}"
            self.host_if = f"lq{os.getpid() % 100000}h{Netns._count}"[:15]
            pod_if = f"lq{os.getpid() % 100000}p{Netns._count}"[:15]
            used = _ip("-o", "-4", "addr", "show")
            free = [(str(net[1]), str(net[2])) for net in SUBNET.subnets(new_prefix=30)
                    if f" {net[1]}/" not in used and f" {net[2]}/" not in used]
            if not free:
                raise PodError(f"no free /30 left in {SUBNET} for a pod's veth pair")
            self.host_addr, self.pod_addr = host, pod = free[0]
            _ip("netns", "add", self.name)
            try:
                _ip("link", "add", self.host_if, "type", "veth", "peer", "name", pod_if,
                    "netns", self.name)
                _ip("addr", "add", f"{host}/30", "dev", self.host_if)
                _ip("link", "set", self.host_if, "up")
                _ip("-n", self.name, "addr", "add", f"{pod}/30", "dev", pod_if)
                _ip("-n", self.name, "link", "set", pod_if, "up")
                _ip("-n", self.name, "link", "set", "lo", "up")
            except PodError:
                self.delete()
                raise

    def exec_prefix(self) -> list[str]:
        """Run a command inside: ``[*exec_prefix(), cmd...]``."""
        return ["ip", "netns", "exec", self.name]

    def delete(self) -> None:
        """Remove the veth pair and the namespace. Safe to call again."""
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True, timeout=30)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=30)


def _sweep() -> None:
    """Delete this module's namespaces whose process is gone."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                         timeout=30).stdout
    for line in out.splitlines():
        name = line.split()[0] if line.strip() else ""
        parts = name.split("-")
        if name.startswith(NETNS_PREFIX + "-") and len(parts) == 4 and parts[2].isdigit():
            if int(parts[2]) != os.getpid() and not os.path.exists(f"/proc/{parts[2]}"):
                subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


# -- HTTP to a pod --------------------------------------------------------------------------------

def parse_stat(data: bytes) -> dict:
    """The autoscaler's ``Stat`` protobuf (knative/serving pkg/autoscaler/metrics/stat.proto):
    pod_name (1), average_concurrent_requests (2), average_proxied_concurrent_requests (3),
    request_count (4), proxied_request_count (5), process_uptime (6)."""
    names = {2: "average_concurrent_requests", 3: "average_proxied_concurrent_requests",
             4: "request_count", 5: "proxied_request_count", 6: "process_uptime"}
    out: dict = {name: 0.0 for name in names.values()}
    i = 0
    while i < len(data):
        key, i = _varint(data, i)
        field, wire = key >> 3, key & 7
        if wire == 1:
            (out[names.get(field, f"f{field}")],) = struct.unpack_from("<d", data, i)
            i += 8
        elif wire == 2:
            n, i = _varint(data, i)
            if field == 1:
                out["pod_name"] = data[i:i + n].decode()
            i += n
        elif wire == 0:
            _, i = _varint(data, i)
        else:
            raise ValueError(f"unexpected wire type {wire}")
    return out


def _varint(data: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        b = data[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, i


# -- the pod --------------------------------------------------------------------------------------
class QueueProxy(procs.ServerProcess):
    """Serving's queue-proxy inside a pod; ready when the activator's probe answers 200."""
    name = "queue-proxy"
    stop_grace_s = 5.0

    def readiness(self) -> tuple[int | None, str]:
        return procs.http_status(self.host, self.port, "/", 15.0, PROBE_HEADERS)

    def stop(self, grace_s: float | None = None) -> int | None:
        """SIGTERM, then a second one: queue-proxy exits at once instead of after its 30 s
        drain (tests that are not about draining)."""
        if self.proc is not None and self.proc.poll() is None:
            self._signal_group(signal.SIGTERM)
            time.sleep(0.05)
            self._signal_group(signal.SIGTERM)
        return super().stop(grace_s)


class Pod:
    """One revision pod: ``function`` under gunicorn and a queue-proxy configured from ``spec``,
    in their own network namespace. ``env`` is the function's environment (on top of the
    manifest's literal env values, which it overrides); ``queue_override`` replaces queue-proxy
    settings. ``url`` goes through the queue-proxy, ``direct_url`` straight to the function."""

    def __init__(self, function: str, spec: RevisionSpec, env: dict[str, str], log_dir: Path,
                 *, revision: str | None = None, queue_override: dict | None = None,
                 netns: Netns | None = None):
        ensure_queue()
        self.function, self.spec = function, spec
        self.revision = revision or f"{spec.service}-00001"
        self.netns = netns or Netns()
        self._own_netns = netns is None
        addr = self.netns.pod_addr
        fn_env = {**spec.container_env, "PYTHONUNBUFFERED": "1", **env}
        cmd = [*self.netns.exec_prefix(),
               *procs.gunicorn_cmd(function, USER_PORT, host="0.0.0.0")]
        # die_with_parent: no pod outlives a killed test or runner (start it from the main thread)
        self.fn = procs.ServerProcess(cmd, port=USER_PORT, host=addr, env=fn_env,
                                      cwd=ROOT, log_path=log_dir / f"{self.revision}-fn.log",
                                      name=f"{self.revision}-function", die_with_parent=True)
        self.queue = QueueProxy([*self.netns.exec_prefix(), str(QUEUE)], port=QUEUE_PORT,
                                host=addr, log_path=log_dir / f"{self.revision}-queue.log",
                                env=spec.queue_env(revision=self.revision, pod_ip=addr,
                                                   **(queue_override or {})),
                                name=f"{self.revision}-queue-proxy", poll_s=0.05,
                                die_with_parent=True)

    @property
    def url(self) -> str:
        return self.queue.url

    @property
    def direct_url(self) -> str:
        return self.fn.url

    def start(self) -> Pod:
        """Start both containers together (as the kubelet does); returns at once."""
        self.queue.start()
        self.fn.start()
        return self

    def wait_ready(self, deadline_s: float = 180) -> float:
        """Probe as the activator does until 200 (each probe waits up to queue-proxy's 10 s
        cap; probe again after it); seconds from start."""
        return self.queue.wait_ready(deadline_s)

    def probe(self, timeout_s: float = 15.0) -> tuple[int | None, str]:
        """One activator probe: queue-proxy runs the function's readiness probe (every 50 ms,
        up to 10 s) and answers 200 ``queue`` or 503."""
        return procs.http_status(self.netns.pod_addr, QUEUE_PORT, "/", timeout_s, PROBE_HEADERS)

    def stat(self) -> dict:
        """The autoscaler's view of this pod (GET :9090/metrics, as the autoscaler scrapes)."""
        conn = http.client.HTTPConnection(self.netns.pod_addr, METRICS_PORT, timeout=5)
        try:
            conn.request("GET", "/metrics")
            return parse_stat(conn.getresponse().read())
        finally:
            conn.close()

    def wait_for_drain(self, timeout_s: float = 120) -> tuple[int | None, str]:
        """The function container's preStop hook: GET :8022/wait-for-drain, returns once
        queue-proxy has drained."""
        return procs.http_status(self.netns.pod_addr, ADMIN_PORT, "/wait-for-drain", timeout_s)

    def terminate(self, fn_grace_s: float = 60, queue_grace_s: float = 60) -> dict:
        """Pod deletion as the kubelet does it: SIGTERM to queue-proxy at once; the function's
        preStop (``/wait-for-drain``) first, its SIGTERM only after that returns. Timings (s from
        the queue-proxy's SIGTERM, which is ``t0``, a ``time.monotonic()``) and exit codes."""
        t0 = time.monotonic()
        self.queue._signal_group(signal.SIGTERM)
        t_prestop = time.monotonic() - t0
        status, _ = self.wait_for_drain()
        t_drained = time.monotonic() - t0
        t_fn_sigterm = time.monotonic() - t0
        fn_rc = self.fn.stop(fn_grace_s)
        t_fn = time.monotonic() - t0
        try:
            self.queue.proc.wait(queue_grace_s)
        except subprocess.TimeoutExpired:
            pass
        queue_rc = self.queue.proc.poll()
        return {"t0": t0, "queue_sigterm_s": 0.0, "prestop_sent_s": t_prestop,
                "wait_for_drain": status, "drained_s": round(t_drained, 2),
                "function_sigterm_s": round(t_fn_sigterm, 2),
                "function_exit_s": round(t_fn, 2), "function_rc": fn_rc,
                "queue_exit_s": round(time.monotonic() - t0, 2), "queue_rc": queue_rc}

    def stop(self) -> None:
        """Stop both now (queue-proxy with a second signal) and remove the namespace."""
        try:
            self.queue.stop()
            self.fn.stop(30)
        finally:
            if self._own_netns:
                self.netns.delete()

    def __enter__(self) -> Pod:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


# -- `make run KNATIVE=1` -------------------------------------------------------------------------
class LocalService:
    """A function as ``make run KNATIVE=1`` serves it: a :class:`Pod`, its queue-proxy published
    on ``host:port`` (the usual local port) by a relay, and relays on the host side of the pod's
    veth to the local services the function calls (MinIO, FerretDB, the broker), which listen
    on loopback only. :meth:`reach` makes one and says where the pod finds it."""

    def __init__(self, function: str, spec: RevisionSpec, *, host: str, port: int,
                 log_dir: Path):
        from scripts.tcp_throttle import (
            Throttle,  # scripts/tcp_throttle.py: a plain relay at rate 0
        )

        self._relay = Throttle
        self.function, self.spec, self.host, self.port = function, spec, host, port
        self.log_dir = log_dir
        self.netns = Netns()
        self.relays: list = []
        self.pod: Pod | None = None
        self.name = function

    def reach(self, host: str, port: int) -> tuple[str, int]:
        """(host, port) inside the pod for ``host:port`` on this machine's loopback."""
        relay = self._relay(upstream=(host, port), host=self.netns.host_addr).start()
        self.relays.append(relay)
        return relay.host, relay.port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.pod.fn.log_path

    @property
    def running(self) -> bool:
        return self.pod is not None and self.pod.fn.running and self.pod.queue.running

    def log_tail(self, n_bytes: int = 4000) -> str:
        return (f"{self.pod.fn.log_tail(n_bytes)}\n--- queue-proxy\n"
                f"{self.pod.queue.log_tail(n_bytes // 2)}")

    def start(self, env: dict[str, str]) -> LocalService:
        """Start the pod with the function's ``env`` and publish its queue-proxy."""
        try:
            relay = self._relay(upstream=(self.netns.pod_addr, QUEUE_PORT), host=self.host,
                                port=self.port).start()
        except OSError as err:
            raise PodError(f"{self.function}: cannot listen on {self.host}:{self.port} "
                           f"({err})") from None
        self.relays.append(relay)
        self.pod = Pod(self.function, self.spec, env, self.log_dir, netns=self.netns,
                       revision=f"{self.function}-local").start()
        return self

    def wait_ready(self, deadline_s: float) -> float:
        return self.pod.wait_ready(deadline_s)

    def stop(self, grace_s: float | None = None) -> None:
        """Stop the pod (queue-proxy first, without its 30 s drain), the relays, the netns."""
        try:
            if self.pod is not None:
                self.pod.queue.stop()
                self.pod.fn.stop(grace_s)
        finally:
            for relay in self.relays:
                relay.close()
            self.netns.delete()
