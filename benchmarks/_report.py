"""Shared pieces of the benchmark reports: machine description and BENCHMARKS.md sections.

Imported as ``from _report import ...``: a benchmark run as a script
(``.venv/bin/python benchmarks/X.py``) has the benchmarks directory first on ``sys.path``.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, as ``"1.2, 0.9, 0.7"``."""
    try:
        return ", ".join(f"{v:.1f}" for v in os.getloadavg())
    except (AttributeError, OSError):  # no getloadavg on Windows
        return "unknown"


def machine_info(threads: bool = False) -> str:
    """One line for a report: CPU, cores, load average now, Python, torch, OS.

    ``threads`` adds torch's intra-op thread count (for benchmarks that set it).
    """
    import torch

    intra_op = f"{torch.get_num_threads()} intra-op threads, " if threads else ""
    return (
        f"{cpu_model()}, {os.cpu_count()} logical cores, load average at start "
        f"{load_average()}; Python {platform.python_version()}, torch {torch.__version__}, "
        f"{intra_op}{platform.system()} {platform.release()}"
    )


def write_section(name: str, text: str, path: Path = BENCHMARKS) -> None:
    """Replace ``name``'s section of ``path`` (between ``<!-- name:start -->`` and
    ``<!-- name:end -->``) with ``text``, or append the section if the markers are missing.

    ``text`` is the section's body without the markers. The file is read right before it is
    written, so sections written by other benchmarks in the meantime are kept.
    """
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{text.rstrip()}\n{end}"
    current = path.read_text() if path.exists() else "# Benchmarks\n"
    if start in current and end in current.split(start, 1)[1]:
        before, rest = current.split(start, 1)
        updated = before + block + rest.split(end, 1)[1]
    else:
        updated = current.rstrip() + "\n\n" + block + "\n"
    path.write_text(updated)
