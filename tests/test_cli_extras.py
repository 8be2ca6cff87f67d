"""A missing optional dependency ends any command with one line naming the extra to install."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from seqstate.cli.dispatch import main
from seqstate.core.model import SequenceModel
from seqstate.core.saved import save_model


@pytest.mark.parametrize(
    ("module", "command", "extra"),
    [
        ("pandas", ["predict", "{run}", "{run}/data.csv", "--out", "{run}/p.csv"], "data"),
        ("pandas", ["evaluate", "{run}", "{run}/data.csv"], "data"),
        ("h5py", ["import-keras", "{run}/model.h5", "{run}/imported"], "keras"),
        ("onnxscript", ["export-onnx", "{run}", "{run}/model.onnx"], "onnx"),
    ],
)
def test_missing_extra_is_one_line(tmp_path: Path, monkeypatch, capsys, module, command, extra):
    run = save_model(
        SequenceModel(input_size=2, output_size=1, hidden_size=3),
        tmp_path,
        metadata={"data": {"columns": {"features": ["a", "b"], "targets": ["y"]}}},
    )
    (run / "data.csv").write_text("a,b,y\n1,2,3\n")
    (run / "model.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(64))  # looks like HDF5
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now fails
    code = main([part.format(run=run) for part in command])
    err = capsys.readouterr().err.strip()
    assert code == 1
    # the generic line, or the module's own (h5py, onnxscript are checked where they are used)
    assert err in (
        f"seqstate: error: this command needs {module}, which is not installed: "
        f"pip install 'seqstate[{extra}]'",
        "seqstate: error: reading Keras files needs h5py: pip install 'seqstate[keras]'",
        "seqstate: error: ONNX export needs onnx and onnxscript (onnxscript is missing): "
        "pip install 'seqstate[onnx]'",
    )
