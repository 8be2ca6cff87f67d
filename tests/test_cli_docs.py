"""The command snippets of README.md and docs/*.md run as written.

A fenced block right after an HTML comment ``<!-- runs: SCENE -->`` is run, in the order the
blocks appear, in one temporary directory per document and scene, with ``seqstate`` on the
PATH (this checkout's sources). The scene's input files (``data.csv``, ...) are small tables
made here; ``<!-- file: SCENE NAME -->`` writes the block itself as the file NAME (a config).

Shell blocks hold commands; where lines start with ``$ `` the others are the output shown. A
command passes when it exits 0, or, where the output shown is a ``seqstate: error: ...``
line, when it exits 1 with that line. Every shown line without a digit (the numbers vary with
the machine) must appear in the output; ``...`` stands for lines left out.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import seqstate

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_MARKED = re.compile(
    r"^<!-- (runs|file): ([\w-]+)(?: ([\w./-]+))? -->\n```(\w*)\n(.*?)^```", re.M | re.S
)


def _scenes() -> dict[str, list[tuple[str, str, str | None, str, int]]]:
    scenes: dict[str, list[tuple[str, str, str | None, str, int]]] = {}
    for document in DOCUMENTS:
        text = document.read_text()
        for match in _MARKED.finditer(text):
            kind, scene, name, language, body = match.groups()
            line = text.count("\n", 0, match.start()) + 3  # the block's first line
            key = f"{document.name}:{scene}"
            scenes.setdefault(key, []).append((kind, language, name, body, line))
    return scenes


SCENES = _scenes()


def commands(body: str) -> list[tuple[str, list[str]]]:
    """``[(command, output lines shown)]`` of a shell block (continuation lines joined)."""
    lines = body.splitlines()
    prompted = any(line.startswith("$ ") for line in lines)
    found: list[tuple[str, list[str]]] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        index += 1
        if prompted and not line.startswith("$ "):
            if found:
                found[-1][1].append(line)
            continue
        command = line[2:] if prompted else line
        while command.rstrip().endswith("\\") and index < len(lines):
            command = command.rstrip()[:-1] + " " + lines[index].strip()
            index += 1
        if command.strip() and not command.lstrip().startswith("#"):
            found.append((command, []))
    return found


# --- the small tables each scene starts with ---------------------------------------------


def _load_table(id_column: str, series: int = 2, days: int = 100) -> pd.DataFrame:
    """Daily temperature and load of two sensors, April to early July 2024 (small: every
    command trains in seconds)."""
    rng = np.random.default_rng(0)
    frames = []
    for s in range(series):
        time = pd.date_range("2024-04-01", periods=days, freq="D")
        temp = 15 + 8 * np.sin(np.arange(days) / 20 + s) + rng.normal(0, 0.5, days)
        load = 3 + 0.2 * temp + 0.5 * np.sin(2 * np.pi * np.arange(days) / 7) + s
        frames.append(
            pd.DataFrame(
                {
                    id_column: f"s{s}",
                    "time": time.strftime("%Y-%m-%d"),
                    "temp": temp.round(3),
                    "load": (load + rng.normal(0, 0.1, days)).round(3),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def _future(table: pd.DataFrame, id_column: str, steps: int) -> pd.DataFrame:
    """The next ``steps`` days of each series' temperature (a known future covariate)."""
    rows = []
    for key, group in table.groupby(id_column, sort=False):
        last = pd.Timestamp(group["time"].max())
        days = pd.date_range(last, periods=steps + 1, freq="D")[1:]
        rows.append(pd.DataFrame({id_column: key, "time": days.strftime("%Y-%m-%d"), "temp": 15.0}))
    return pd.concat(rows, ignore_index=True)


def _setup(scene: str, folder: Path) -> None:
    id_column = "sensor" if scene == "quickstart" else "id"
    if scene in ("quickstart", "load", "config"):
        table = _load_table(id_column)
        for name in ("data.csv", "full.csv", "new.csv", "history.csv"):
            table.to_csv(folder / name, index=False)
        _future(table, id_column, 24).to_csv(folder / "future.csv", index=False)
    if scene == "errors":
        sales = pd.DataFrame(
            {"store": ["a"] * 4, "day": range(4), "price": 1.0, "units": [3, 4, 5, 6]}
        )
        sales.to_csv(folder / "sales.csv", index=False)


def _seqstate_on_path(folder: Path) -> dict[str, str]:
    bin_dir = folder / ".bin"
    bin_dir.mkdir()
    script = bin_dir / "seqstate"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m seqstate.cli "$@"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    source = str(Path(seqstate.__file__).resolve().parents[1])
    path = os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), os.environ["PATH"]])
    python_path = os.pathsep.join(p for p in (source, os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PATH": path, "PYTHONPATH": python_path}


def _check(command: str, shown: list[str], result: subprocess.CompletedProcess, where: str) -> None:
    output = result.stdout + result.stderr
    errors = [line for line in shown if line.startswith("seqstate: error:")]
    if errors:
        assert result.returncode == 1, f"{where}: `{command}` should fail:\n{output}"
    else:
        assert result.returncode == 0, f"{where}: `{command}` failed:\n{output}"
    printed = {line.strip() for line in output.splitlines()}
    for line in shown:
        text = line.strip()
        if text and text != "..." and not re.search(r"\d", text):
            assert text in printed, f"{where}: `{command}` did not print {text!r}:\n{output}"
    for line in errors:
        assert line in output, f"{where}: `{command}` printed another error:\n{output}"


def test_the_documents_mark_their_runnable_snippets():
    assert {"README.md:quickstart", "cli.md:load", "cli.md:macro", "cli.md:errors"} <= set(SCENES)


@pytest.mark.parametrize("scene", sorted(SCENES))
def test_documented_commands_run_as_written(scene, tmp_path):
    pytest.importorskip("pandas")
    document, name = scene.split(":")
    _setup(name, tmp_path)
    env = _seqstate_on_path(tmp_path)
    for kind, language, file_name, body, line in SCENES[scene]:
        where = f"{document}:{line}"
        if kind == "file":
            (tmp_path / str(file_name)).write_text(body)
            continue
        if language == "python":
            snippet = tmp_path / f"snippet_{line}.py"
            snippet.write_text(body)
            result = subprocess.run(
                [sys.executable, str(snippet)],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            _check(f"python {snippet.name}", [], result, where)
            continue
        for command, shown in commands(body):
            result = subprocess.run(
                ["bash", "-c", command],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            _check(command, shown, result, where)


def test_shown_output_is_split_from_commands():
    body = "$ seqstate train a \\\n      --epochs 2\nwrote x\n\n$ head -1 f.csv\nid,time\n"
    assert commands(body) == [
        ("seqstate train a  --epochs 2", ["wrote x", ""]),
        ("head -1 f.csv", ["id,time"]),
    ]
    assert commands("seqstate a   # comment\n# only a comment\n") == [
        ("seqstate a   # comment", [])
    ]
