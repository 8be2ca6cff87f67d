"""One owner per fact: the model's defaults live in core/model_config.py, the fit defaults in
FitConfig, the cell kinds in core/cells.py; the run settings, the command line's help and
choices, the layers and doctor read them from there."""

from __future__ import annotations

import subprocess
import sys

import pytest

from seqstate.cli.dispatch import build_parser
from seqstate.core.cells import CELLS
from seqstate.core.kinds import KINDS
from seqstate.core.model import SequenceModel
from seqstate.core.model_config import ModelConfig
from seqstate.recipe.training import SECTIONS, default_settings
from seqstate.train import FitConfig


def _train_help(capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    return " ".join(capsys.readouterr().out.split())  # unwrapped


def test_the_model_section_is_the_model_configs_defaults() -> None:
    config = ModelConfig(input_size=1, output_size=1)
    model = default_settings()["model"]
    assert model["cell"] == config.layers[0].kind
    assert model["hidden_size"] == config.layers[0].hidden_size
    assert model["num_layers"] == len(config.layers)
    assert model["dropout"] == config.dropout


def test_the_help_shows_each_owners_default(capsys: pytest.CaptureFixture[str]) -> None:
    text = _train_help(capsys)
    config = ModelConfig(input_size=1, output_size=1)
    assert f"units per recurrent layer (default {config.layers[0].hidden_size})" in text
    assert f"stacked recurrent layers (default {len(config.layers)})" in text
    assert f"learning rate (default {FitConfig().lr})" in text
    shift, description = SECTIONS["data"]["shift"]
    assert f"{description} (default {shift})" in text
    assert "--cell {" + ",".join(KINDS) + "}" in text


def test_the_cell_kinds_are_one_table() -> None:
    assert tuple(CELLS) == KINDS
    for kind in KINDS:
        model = SequenceModel(input_size=2, output_size=1, cell=kind, hidden_size=3)
        # one kind, one fused group: the seqstate layer on that kind's torch module
        assert isinstance(model.recurrent, CELLS[kind].torch_module)


def test_parsing_the_command_line_loads_no_torch() -> None:
    code = (
        "import sys\n"
        "from seqstate.cli.dispatch import build_parser\n"
        "build_parser().parse_args(['train', 'data.csv', '--hidden-size', '8'])\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
