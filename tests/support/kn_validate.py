"""Knative's own admission checks: ``kn-validate-serving`` / ``kn-validate-eventing`` (the Serving
and Eventing webhooks' ``SetDefaults`` + ``Validate``), unpacked from ``../shared/knative`` into
.state/bin/ by ``make knative`` (mk/knative.mk; ``make test`` runs it first).

A missing binary fails the calling test (it never skips): the manifests would go unchecked.
"""
from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / ".state" / "bin"
CLUSTER = ROOT / "deploy" / "cluster"
AUTOSCALER_CM = CLUSTER / "config-autoscaler.yaml"
EVENTING_FLAG_CM = ROOT / "eventing" / "features" / "delivery-retryafter.yaml"
TIMEOUT_S = 60


@dataclass(frozen=True)
class Verdict:
    """What one run of a validator printed: its exit code and one line per object."""
    returncode: int
    out: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def line(self, kind: str, name: str) -> str:
        """The validator's line about ``kind`` ``name`` (``-: Service generate: valid ...``)."""
        found = [ln for ln in self.out.splitlines() if f": {kind} {name}: " in ln]
        assert len(found) == 1, f"no single line about {kind} {name} in:\n{self.out}"
        return found[0]


def binary(name: str) -> Path:
    """.state/bin/<name>, or a test failure that says how to install it."""
    path = BIN / name
    if not (path.is_file() and path.stat().st_mode & 0o111):
        pytest.fail(f"{path.relative_to(ROOT)} is missing: run `make knative` "
                    "(bash ../shared/knative/install.sh .state/bin)", pytrace=False)
    return path


def validate(tool: str, objs: list[dict], *configmaps: Path) -> Verdict:
    """Run ``tool`` (kn-validate-serving or kn-validate-eventing) on ``objs`` (given on stdin,
    as `kustomize build ... | tool` would) with ``configmaps`` as the cluster's settings."""
    text = yaml.safe_dump_all(objs, sort_keys=False)
    proc = subprocess.run([str(binary(tool)), *map(str, configmaps), "-"], input=text,
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    return Verdict(proc.returncode, proc.stdout + proc.stderr)
