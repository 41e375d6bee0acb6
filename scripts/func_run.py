#!/usr/bin/env python3
"""`make func-run-generate|embed|audit`: one function run by the real Knative Functions CLI,
``func run --builder=host``, as a user runs it, against the local stack (MinIO and FerretDB of
scripts/services.py, the models uploaded as `make run` does). Ctrl-C stops it.

func's host builder writes its scaffolding to ``functions/<f>/.func/runs/<port>/`` (git-ignored),
makes a fresh venv there and ``pip install``s the scaffold and the function on every run. That
pip runs offline (``PIP_NO_INDEX=1``) from ``.state/wheelhouse`` (``PIP_FIND_LINKS``), built
once by :func:`ensure_wheelhouse` from what `make venv` already has, so a run neither downloads
nor compiles anything: llama-cpp-python's wheel is the one pip built for `make venv` (its wheel
cache). ``PIP_CONSTRAINT`` is the function's constraints.txt, as in func's s2i build.
func also leaves a ``.gitignore`` (``/.func``, committed) and, for the setuptools projects,
``build/`` and ``function.egg-info/`` (git-ignored) in the function's folder: :func:`tidy` removes
the last two after a run, so no stale copy of a module is packaged by a later build.

func.yaml's ``{{ secret:... }}`` values are not resolved in a host run (the process would get the
template text): the local values go in with ``-e NAME=VALUE``. Tests
(tests/test_knative_func_cli.py) use the same functions.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from scripts import (
    procs,
    run,  # the local values and the model upload of `make run`
    services,
)

ROOT = services.REPO_ROOT
STATE = ROOT / ".state"
FUNC = STATE / "bin" / "func"
VENV_BIN = ROOT / ".venv" / "bin"
WHEELHOUSE = STATE / "wheelhouse"
FUNCTIONS = tuple(run.FUNCTIONS)
# What the builds inside func's venv need besides the pins: the build backends of func's
# scaffold (hatchling) and of the function projects (hatchling, setuptools).
BUILD_BACKENDS = ("hatchling", "setuptools>=68")
NEVER_COMPILED = "llama-cpp-python"  # only from pip's wheel cache, never built here
READY_DEADLINE_S = 180.0  # func's own wait for readiness is 60 s; a fresh venv comes first
STOP_GRACE_S = 60.0


def log(msg: str) -> None:
    print(f"func-run: {msg}", file=sys.stderr, flush=True)


def constraints(name: str) -> Path:
    """The function's pins without hashes (made by `make lock`; func's s2i build uses it too)."""
    return ROOT / "functions" / name / "constraints.txt"


def _pin(name: str, package: str) -> str | None:
    m = re.search(rf"^{re.escape(package)}==(\S+)", constraints(name).read_text(), re.M)
    return m.group(1) if m else None


def _stamp() -> str:
    h = hashlib.sha256(" ".join(BUILD_BACKENDS).encode())
    for name in FUNCTIONS:
        h.update(constraints(name).read_bytes())
    return h.hexdigest()


def _cached_wheel(package: str, version: str, pip: Path) -> Path:
    """The wheel pip built for ``package==version`` (its wheel cache), or ServerError."""
    out = subprocess.run([str(pip), "cache", "list", package.replace("-", "_"),
                          "--format=abspath"], capture_output=True, text=True, timeout=120)
    for line in out.stdout.splitlines():
        path = Path(line.strip())
        if path.name.startswith(f"{package.replace('-', '_')}-{version}-"):
            return path
    raise procs.ServerError(f"no built {package}=={version} wheel in pip's wheel cache "
                            f"({pip} cache list): run `make venv`, which builds it; it is "
                            "never compiled for func runs")


def ensure_wheelhouse(wheelhouse: Path = WHEELHOUSE, pip: Path = VENV_BIN / "pip") -> Path:
    """Build ``wheelhouse`` unless it is current (stamped on the constraints and backends): the
    cached llama-cpp-python wheel, then every pin of each function's constraints.txt and the
    build backends as wheels (pip wheel: from pip's caches or PyPI, never compiling
    llama-cpp-python). Returns it."""
    stamp = wheelhouse / ".stamp"
    if stamp.is_file() and stamp.read_text() == _stamp():
        return wheelhouse
    wheelhouse.mkdir(parents=True, exist_ok=True)
    for version in sorted({v for v in (_pin(n, NEVER_COMPILED) for n in FUNCTIONS) if v}):
        shutil.copy2(_cached_wheel(NEVER_COMPILED, version, pip), wheelhouse)
    wheel = [str(pip), "wheel", "--quiet", "--wheel-dir", str(wheelhouse), "--find-links",
             str(wheelhouse), f"--only-binary={NEVER_COMPILED}"]
    pins = sorted({line.strip() for name in FUNCTIONS
                   for line in constraints(name).read_text().splitlines()
                   if line.strip() and not line.startswith("#")})
    log(f"wheelhouse: the {len(pins)} pins of functions/*/constraints.txt and the build backends")
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as union:
        union.write("\n".join(pins) + "\n")
        union.flush()  # one pip for all: the three lists share most pins
        subprocess.run([*wheel, "--no-deps", "-r", union.name], check=True, timeout=1800)
    subprocess.run([*wheel, *BUILD_BACKENDS], check=True, timeout=600)
    stamp.write_text(_stamp())
    return wheelhouse


def func_environ(name: str, wheelhouse: Path = WHEELHOUSE) -> dict[str, str]:
    """The environment of the `func` process: offline pip from the wheelhouse, the lock's
    versions, and `python` (which func's host builder makes its venv with) = the project's.
    No bytecode compiled at install (generate's venv: 29 s instead of 38 s): the modules a
    run imports are compiled as they are imported, the rest never."""
    return {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheelhouse),
            "PIP_CONSTRAINT": str(constraints(name)), "PIP_NO_COMPILE": "1",
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def local_values(name: str, minio, ferretdb, cache_dir: Path) -> dict[str, str]:
    """The `-e` values of a local run: `make run`'s (scripts/run.py function_env: MinIO, its
    keys, the uploaded model, FerretDB), the weight cache, and no API keys (auth off, as in
    `make run`); they replace func.yaml's cluster values and unresolved secret templates."""
    values = run.function_env(name, run.FUNCTIONS[name][2], minio, ferretdb, False, "")
    values["MODEL_CACHE_DIR"] = str(cache_dir)
    if name != "audit":
        values["API_KEYS"] = ""
    return values


class FuncRun(procs.ServerProcess):
    """A ``func run``: ready when the function's readiness answers 200 *and* func has said so
    (``Function running on ...``, printed once its own readiness poll, every 500 ms, saw 200).
    Until then func is still starting the function, and a Ctrl-C makes it exit with 130
    ("the operation was canceled") rather than 0."""

    RUNNING = b"Function running on "

    def is_ready(self) -> bool:
        if not super().is_ready():
            return False
        try:
            return self.RUNNING in self.log_path.read_bytes()
        except OSError:
            return False


def func_server(name: str, port: int, values: dict[str, str], *, log_path: Path,
                wheelhouse: Path = WHEELHOUSE) -> FuncRun:
    """``func run --builder=host -p functions/<name> --address 127.0.0.1:<port> -e K=V ...``;
    ready as :class:`FuncRun` says."""
    cmd = [str(FUNC), "run", "--builder=host", "-p", str(ROOT / "functions" / name),
           "--address", f"{procs.HOST}:{port}"]
    for key, value in values.items():
        cmd += ["-e", f"{key}={value}"]
    server = FuncRun(cmd, port=port, log_path=log_path, cwd=ROOT,
                     env=func_environ(name, wheelhouse), name=f"func-run-{name}")
    server.ready_deadline_s = READY_DEADLINE_S
    return server


def run_dir(name: str, port: int) -> Path:
    """Where func's host builder writes a run's scaffolding and venv (it leaves them behind)."""
    return ROOT / "functions" / name / ".func" / "runs" / str(port)


def tidy(name: str, port: int) -> None:
    """Remove what a run leaves behind: func's run folder (scaffolding and venv), ``.func``
    itself once nothing else is in it, and the in-tree build output of pip's build of the
    function (``build/``, ``function.egg-info/``)."""
    folder = ROOT / "functions" / name
    for path in (run_dir(name, port), folder / "build", folder / "function.egg-info"):
        shutil.rmtree(path, ignore_errors=True)
    for empty in (run_dir(name, port).parent, folder / ".func"):  # runs/, then .func/
        try:
            empty.rmdir()
        except OSError:  # gone, or another run's folder is still in it
            pass


def interrupt(server: procs.ServerProcess, grace_s: float = STOP_GRACE_S) -> int | None:
    """Stop ``server`` as Ctrl-C in its terminal does (SIGINT to its process group: func and
    the function it runs); SIGKILL after ``grace_s``. Its exit code."""
    if server.proc is None:
        return None
    if server.proc.poll() is None:
        server._signal_group(signal.SIGINT)
        try:
            server.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            server._signal_group(signal.SIGKILL)
            server.proc.wait(timeout=10)
    return server.proc.returncode


def invoke(name: str, target: str, *args: str, timeout_s: float = 120.0
           ) -> subprocess.CompletedProcess:
    """``func invoke -p functions/<name> --target <target> ARGS``: what it printed and its code."""
    return subprocess.run([str(FUNC), "invoke", "-p", str(ROOT / "functions" / name),
                           "--target", target, *args], capture_output=True, text=True,
                          timeout=timeout_s, cwd=ROOT)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog=Path(argv[0]).name, description="One function run by "
                                 "the real func CLI (func run --builder=host), locally.")
    ap.add_argument("function", nargs="?", choices=FUNCTIONS, help="the function to run")
    ap.add_argument("--wheelhouse", action="store_true",
                    help=f"only build {WHEELHOUSE.relative_to(ROOT)} (`make wheelhouse`)")
    args = ap.parse_args(argv[1:])
    if args.wheelhouse:
        ensure_wheelhouse()
        return 0
    if args.function is None:
        ap.error("name a function, or give --wheelhouse")
    name = args.function
    state = STATE / "func-run"
    logs = state / "logs"
    services.ensure_binaries()
    minio = services.MinioServer(state / "minio", procs.HOST, services.free_port(),
                                 log_path=logs / "minio.log")
    ferretdb = services.FerretDBServer(state / "ferretdb", procs.HOST, services.free_port(),
                                       log_path=logs / "ferretdb.log")
    func = None
    try:
        for server in (minio, ferretdb):
            server.start()
        for server in (minio, ferretdb):
            server.wait_ready(deadline_s=60)
        log(f"MinIO {minio.endpoint_url}, FerretDB {ferretdb.uri}")
        run.upload_models(minio.client(), run.local_models())
        ensure_wheelhouse()
        port = int(os.environ.get(run.FUNCTIONS[name][0], run.FUNCTIONS[name][1]))
        values = local_values(name, minio, ferretdb, STATE / "cache")
        cmd = func_server(name, port, values, log_path=logs / f"{name}.log").command()
        log(f"{' '.join(cmd[:7])} -e {'= -e '.join(values)}= (offline pip from "
            f"{WHEELHOUSE.relative_to(ROOT)})")
        log(f"then, e.g.: .state/bin/func invoke -p functions/{name} "
            f"--target http://{procs.HOST}:{port}/... (Ctrl-C stops everything)")
        # its own session: on the way out its whole group (func and the function it started)
        # is signalled, never left behind
        func = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **func_environ(name)},
                                start_new_session=True)
        try:
            return func.wait()
        except KeyboardInterrupt:  # Ctrl-C: pass it on to func's group, as the terminal would
            _signal_group(func, signal.SIGINT)
            return func.wait(timeout=STOP_GRACE_S)
    except (procs.ServerError, subprocess.TimeoutExpired) as err:
        log(str(err))
        return 1
    finally:
        if func is not None and func.poll() is None:
            _signal_group(func, signal.SIGKILL)
            func.wait(timeout=10)
        for server in (ferretdb, minio):
            server.stop()
        if func is not None:  # func's scaffolding and venv are transient: one per run
            tidy(name, port)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
