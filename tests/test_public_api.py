"""The public API: every exported name resolves, to the right kind of object, lazily."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

import seqstate

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.parametrize("name", [n for n in seqstate.__all__ if n != "__version__"])
def test_every_export_resolves_to_a_non_module(name: str) -> None:
    # Importing every submodule first: a submodule named like an export (the old
    # seqstate.predict module vs the predict function) would shadow the export.
    for module in set(seqstate._EXPORTS.values()):
        importlib.import_module(module)
    value = getattr(seqstate, name)
    assert not isinstance(value, types.ModuleType), f"seqstate.{name} is a module"


def test_predict_stays_the_function_after_its_module_is_imported() -> None:
    # the imports that used to rebind seqstate.predict to the module
    import seqstate.inference.prediction
    import seqstate.inference.streams

    assert callable(seqstate.predict)
    assert seqstate.predict.__module__ == "seqstate.inference.prediction"


def test_unknown_attribute_raises_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        seqstate.nope


def test_core_import_stays_light() -> None:
    """`import seqstate` and using the core API load no server, data, plot or interop stack."""
    code = (
        "import sys, seqstate\n"
        "seqstate.Lanes, seqstate.LSTM, seqstate.SequenceModel, seqstate.fit, seqstate.Streams\n"
        "heavy = ('fastapi', 'uvicorn', 'redis', 'pandas', 'pyarrow', 'matplotlib', 'h5py',\n"
        "         'keras', 'onnx', 'onnxruntime', 'statsmodels')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_running_a_model_does_not_import_the_compiler() -> None:
    """A process that never compiles (predict, forecast, serve) does not import torch._dynamo
    (2-3 s at every start): the planner is kept out of compiled graphs only when one is made."""
    code = (
        "import sys, torch, seqstate\n"
        "import seqstate.serve.app, seqstate.recipe.step.function, seqstate.cli.dispatch\n"
        "layer = seqstate.LSTM(3, 4)\n"
        "reset = torch.zeros(2, 5, dtype=torch.bool); reset[1, 2] = True\n"
        "layer(torch.randn(2, 5, 3), reset=reset)\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# torch's RNN modules refresh their _flat_weights list when export swaps in its parameters
# (torch.nn.LSTM itself warns the same)
@pytest.mark.filterwarnings("ignore:The tensor attributes .*_flat_weights:UserWarning")
def test_readme_python_blocks_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's Python quickstart is executed as written."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README.md has no python block"
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        exec(compile(block, str(README), "exec"), {"__name__": "__readme__"})
