"""Every ```python block of docs/keras-migration.md runs as written (```py blocks are Keras).

Each block runs on its own, in a fresh namespace, in a temporary working directory: the guide
promises that every snippet is self-contained.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "keras-migration.md"
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def _blocks() -> list[tuple[str, str]]:
    text = GUIDE.read_text()
    blocks = []
    for match in _BLOCK.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        blocks.append((f"line{line}", match.group(1)))
    return blocks


BLOCKS = _blocks()


def test_guide_has_snippets_for_every_idiom() -> None:
    text = GUIDE.read_text()
    for idiom in (
        "batch_input_shape",
        "stateful=True",
        "reset_states()",
        "train_on_batch",
        "test_on_batch",
        "predict_on_batch",
        "shuffle=False",
        "drop_remainder=True",
        "batch-1 model",
    ):
        assert idiom in text, idiom
    assert len(BLOCKS) >= 9


# Keras's torch backend calls np.array(tensor, copy=False) under NumPy 2, which warns when the
# import snippet saves a Keras model; the warning is Keras's, not the guide's.
@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
@pytest.mark.parametrize(("where", "code"), BLOCKS, ids=[where for where, _ in BLOCKS])
def test_snippet_runs(where: str, code: str, tmp_path: Path, monkeypatch, capsys) -> None:
    if "import keras" in code:
        monkeypatch.setenv("KERAS_BACKEND", "torch")
        pytest.importorskip("keras", reason="the import snippet builds a model with Keras")
    if "onnxruntime" in code:
        pytest.importorskip("onnxruntime", reason="the ONNX snippet needs the [onnx] extra")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"{GUIDE.name}:{where}", "exec"), {"__name__": "__guide__"})
