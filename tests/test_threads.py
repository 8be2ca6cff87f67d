"""The intra-op thread choice."""

from __future__ import annotations

import pytest
import torch

from seqstate.recipe.threads import LARGE_STEP, apply_threads, choose_threads, idle_cores


def test_small_models_use_one_thread_and_large_ones_the_idle_cores():
    assert choose_threads() == 1
    assert choose_threads("auto", lanes=32, hidden_size=64) == 1
    large = choose_threads(lanes=64, hidden_size=1024)
    assert LARGE_STEP <= 64 * 1024 * 4 * 1024
    assert 1 <= large <= 8 and idle_cores() >= 1  # the idle cores move with the load


def test_a_requested_count_is_kept_and_applied():
    before = torch.get_num_threads()
    try:
        assert apply_threads(2) == 2 and torch.get_num_threads() == 2
        assert apply_threads(None) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize(
    ("bad", "error"),
    [(0, ValueError), (-1, ValueError), ("two", ValueError), (1.5, TypeError), (True, TypeError)],
)
def test_bad_thread_counts_are_refused(bad, error):
    # a wrong type (a float, a bool) is a TypeError; an int below 1 or another word a ValueError
    with pytest.raises(error, match="threads must be an int >= 1 or 'auto'"):
        choose_threads(bad)
