"""Layout and epochs chosen from the data (recipe.choices): layout cost equals the real lanes,
single series get fewer lanes, epochs from a budget, given values kept."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seqstate.lanes.lanes import Lanes
from seqstate.recipe.choices import MAX_LANES, MIN_WINDOWS, PATIENCE, apply, choose, layout_cost


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 200), min_size=1, max_size=30),
    lanes=st.integers(1, 40),
    window=st.integers(1, 80),
)
def test_layout_cost_equals_the_real_lanes(lengths, lanes, window):
    if len(lengths) == 1:
        real = Lanes.from_series(
            np.zeros(lengths[0], np.float32),
            lanes=min(lanes, lengths[0]),
            window=window,
            targets=None,
        )
    else:
        arrays = [np.zeros(n, np.float32) for n in lengths]
        real = Lanes.from_sequences(arrays, None, lanes=min(lanes, len(lengths)), window=window)
    windows, padding = layout_cost(lengths, lanes, window)
    assert windows == len(real)
    assert padding == pytest.approx(real.padding_fraction, abs=1e-12)


def test_one_long_series_gets_few_lanes_enough_windows_little_padding():
    # The reported case: 3180 monthly steps as 32 lanes x 64 gave 2 windows and 39% padding.
    assert layout_cost([3180], 32, 64) == (2, pytest.approx(1 - 3180 / (32 * 64 * 2)))
    defaults = choose([3180])
    windows, padding = layout_cost([3180], defaults["lanes"], defaults["window"])
    assert defaults["lanes"] < MAX_LANES
    assert windows >= MIN_WINDOWS and padding < 0.1
    assert defaults["epochs"] >= 100 and defaults["patience"] == PATIENCE
    assert "one series of 3180 steps" in defaults.text()


def test_a_panel_keeps_many_lanes_and_little_padding():
    lengths = np.random.default_rng(0).integers(100, 160, size=148)
    defaults = choose(lengths)
    windows, padding = layout_cost(lengths, defaults["lanes"], defaults["window"])
    assert defaults["lanes"] >= 8 and windows >= MIN_WINDOWS and padding < 0.1


def test_short_data_gets_short_windows():
    defaults = choose([120])
    assert defaults["lanes"] == 1 and defaults["window"] < 64
    assert layout_cost([120], 1, defaults["window"])[0] >= MIN_WINDOWS


def test_given_values_are_kept_and_said_so():
    defaults = choose([3180], lanes=32, window=64, epochs=7, patience=3)
    assert (defaults["lanes"], defaults["window"], defaults["epochs"], defaults["patience"]) == (
        32,
        64,
        7,
        3,
    )
    assert all(choice.given for choice in defaults)
    assert "lanes = 32 (given: 2 windows per epoch, 22% padding)" in defaults.text()
    assert choose([500], validation=False)["patience"] is None
    assert set(choose([500]).to_dict()) == {"lanes", "window", "epochs", "patience"}


def test_bad_lengths():
    with pytest.raises(ValueError, match="lengths must be a non-empty list"):
        choose([])
    with pytest.raises(ValueError, match="lengths must be a non-empty list"):
        choose([3, 0])
    with pytest.raises(KeyError, match="no default named"):
        choose([30])["nope"]


def test_apply_fills_only_what_is_unset():
    settings = {
        "layout": {"lanes": None, "window": 16, "shuffle": True},
        "fit": {"lr": 0.01},
        "split": {"by": "time"},
    }
    defaults = apply(settings, [3180])
    assert settings["layout"]["window"] == 16 and settings["layout"]["lanes"] == defaults["lanes"]
    assert settings["fit"] == {"lr": 0.01, "epochs": defaults["epochs"], "patience": PATIENCE}
    unsplit = {"layout": {"lanes": 4, "window": 8}, "fit": {"epochs": 3}, "split": {"by": "none"}}
    apply(unsplit, [100, 80])
    assert unsplit["fit"] == {"epochs": 3} and unsplit["layout"] == {"lanes": 4, "window": 8}


def test_the_old_module_paths_resolve_to_choices_with_a_warning() -> None:
    import importlib
    import sys

    from seqstate.recipe import choices

    for old in ("seqstate.recipe.defaults", "seqstate.recipe.suggestions", "seqstate.defaults"):
        sys.modules.pop(old, None)
        with pytest.warns(DeprecationWarning, match="seqstate.recipe.choices"):
            module = importlib.import_module(old)
        assert module is choices
    assert choices.Defaults is choices.Choices


@pytest.mark.parametrize("lengths", [[40, 40], [120], [30, 31, 29], [50] * 7])
@pytest.mark.parametrize("share", [2, 3, 4])
def test_a_distributed_run_gets_lanes_its_processes_share_equally(lengths, share):
    # `torchrun --nproc_per_node N seqstate train --distributed` chose lanes from the data
    # alone (1 or 3 for 2 processes), and every rank refused them
    chosen = choose(lengths, share=share)
    assert chosen["lanes"] % share == 0 and chosen["lanes"] >= choose(lengths)["lanes"]
    assert f"a multiple of the {share} processes" in chosen.text()
    assert choose(lengths, lanes=5, share=share)["lanes"] == 5  # a given count is the user's
