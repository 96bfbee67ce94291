"""Rewrite one section of BENCHMARKS.md, leaving the other benchmarks' sections alone."""

from __future__ import annotations

import re
from pathlib import Path


def write_section(path: Path, key: str, title: str, body: str) -> None:
    """Replace (or append) the section between `<!-- bench:key -->` markers."""
    start, end = f"<!-- bench:{key} -->", f"<!-- /bench:{key} -->"
    block = f"{start}\n## {title}\n\n{body}\n{end}"
    text = path.read_text() if path.exists() else "# Benchmarks\n\nWritten by `make bench`.\n"
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    text = pattern.sub(block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block
    path.write_text(text.rstrip() + "\n")
