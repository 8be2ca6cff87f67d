"""Every script in examples/ runs (small sizes: SEQSTATE_EXAMPLE_QUICK=1) and checks its claim."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.py"))


def test_the_examples_are_there():
    names = {path.stem for path in EXAMPLES}
    assert {
        "train_then_stream",
        "variable_length_resets",
        "clean_validation",
        "long_sequence_prediction",
        "many_to_one_classification",
        "save_restore_stream_state",
    } <= names


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda path: path.stem)
def test_example_runs(script, tmp_path):
    env = {**os.environ, "SEQSTATE_EXAMPLE_QUICK": "1"}
    result = subprocess.run(
        [sys.executable, "-W", "error", str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip(), "an example should say what it showed"
