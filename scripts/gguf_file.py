"""Write a GGUF file so that a half-written one is never seen: to `<out>.tmp`, then rename."""
from __future__ import annotations

import os
from pathlib import Path

import gguf


def open_writer(out: Path, arch: str) -> gguf.GGUFWriter:
    """A GGUFWriter on ``out``'s temp file (parent folders created)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    return gguf.GGUFWriter(out.with_name(out.name + ".tmp"), arch)


def publish(writer: gguf.GGUFWriter, out: Path) -> None:
    """Write header, metadata and tensors, close, and move the temp file to ``out``."""
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    os.replace(out.with_name(out.name + ".tmp"), out)
