"""Print the configuration table of every setting (llmfn's and each function's) as Markdown.

docs/configuration.md's table is this output; tests/test_docs.py checks they agree.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path

from llmfn import settings as shared
from llmfn.contract import discover

ROOT = Path(__file__).resolve().parents[1]


def _load(path: Path):
    """Import a function's settings module by path (every function's package is `function`)."""
    spec = importlib.util.spec_from_file_location(f"_cfg_{path.parent.parent.name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while decorating
    spec.loader.exec_module(module)
    return module


def function_names() -> list[str]:
    """The functions, from their contracts (``llmfn.contract.discover``): model functions
    first, as the shared sections above are theirs."""
    specs = discover(ROOT)
    return sorted(specs, key=lambda name: (specs[name].model is None, name))


def sections() -> list[tuple[str, type]]:
    """(title, settings class) in the order of docs/configuration.md."""
    out = [("Weights (generate, embed)", shared.StorageSettings),
           ("Model (generate, embed)", shared.ModelSettings),
           ("Server (all functions)", shared.ServerSettings),
           ("Events (generate, embed)", shared.EventSettings),
           ("gunicorn (all functions)", shared.GunicornSettings)]
    for name in function_names():
        path = ROOT / "functions" / name / "function" / "settings.py"
        if path.exists():
            module = _load(path)
            for obj in vars(module).values():
                if (dataclasses.is_dataclass(obj) and isinstance(obj, type)
                        and obj.__module__ == module.__name__):
                    out.append((f"{name}", obj))
    return out


def function_defaults() -> list[tuple[str, dict]]:
    """(function, {key: value}) of the shared settings each function gives its own default."""
    out = []
    for name in function_names():
        path = ROOT / "functions" / name / "function" / "settings.py"
        if path.exists():
            out.append((name, dict(getattr(_load(path), "DEFAULTS", {}))))
    return out


def table() -> str:
    lines = ["| setting | default | meaning |", "|---|---|---|"]
    for title, cls in sections():
        lines.append(f"| **{title}** | | |")
        for key, default, doc in shared.describe(cls):
            shown = "" if default in ("", None) else f"`{default}`"
            lines.append(f"| `{key}` | {shown} | {doc.replace('|', '/')} |")
    lines.append("")
    lines.append("Shared settings a function gives its own default (its `DEFAULTS`):")
    lines.append("")
    for name, defaults in function_defaults():
        shown = ", ".join(f"`{k}={v}`" for k, v in defaults.items())
        lines.append(f"- {name}: {shown}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(table() + "\n")
