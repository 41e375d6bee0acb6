"""Generated sections of the docs: a benchmark or a measuring script rewrites only its own.

A section is the text between ``<!-- bench:NAME:begin -->`` and ``<!-- bench:NAME:end -->``
(docs/benchmarks.md unless another page is named).
"""
from __future__ import annotations

from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def update_doc_section(name: str, markdown: str, doc: Path = DOC) -> None:
    """Replace the text between ``<!-- bench:NAME:begin -->`` and ``...:end -->`` in ``doc``
    (appended when missing), so each benchmark rewrites only its own section."""
    begin, end = f"<!-- bench:{name}:begin -->", f"<!-- bench:{name}:end -->"
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    block = f"{begin}\n{markdown.rstrip()}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)
