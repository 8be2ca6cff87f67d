"""Progress modes (bar on a terminal, lines in a log, nothing when quiet) and schedules."""

from __future__ import annotations

import io

import pytest

from seqstate.train.progress import Due, EpochProgress, Every, epoch_line, progress_mode


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


RECORD = {
    "epoch": 2,
    "loss": 0.123456,
    "val_loss": 0.5,
    "lr": 1e-3,
    "steps_per_s": 12345.6,
    "seconds": 0.5,
}


def test_auto_is_a_bar_on_a_terminal_and_lines_in_a_log():
    assert progress_mode(True, Terminal()) == "bar"
    assert progress_mode("auto", io.StringIO()) == "lines"
    assert progress_mode(False, Terminal()) == "none"
    assert progress_mode("lines", Terminal()) == "lines"
    with pytest.raises(ValueError, match="progress must be True, False or one of"):
        progress_mode("loud")


def test_lines_mode_writes_one_line_per_epoch_and_no_carriage_return():
    log = io.StringIO()
    progress = EpochProgress(True, epochs=10, stream=log)
    bar = progress.bar(2, num_windows=50, cursor=0)
    for _ in range(50):
        bar.update(1)
    bar.close()
    progress.epoch_done(RECORD, "checkpoint")
    assert log.getvalue() == (
        "epoch 3/10  loss 0.1235  val_loss 0.5  12,346 steps/s  0.50 s  checkpoint\n"
    )
    assert "\r" not in log.getvalue()


def test_bar_mode_draws_tqdm_and_quiet_writes_nothing():
    terminal = Terminal()
    progress = EpochProgress(True, epochs=3, stream=terminal)
    assert progress.live
    bar = progress.bar(0, num_windows=4, cursor=1)
    bar.update(3)
    bar.close()
    progress.epoch_done(RECORD)
    assert "epoch 1/3" in terminal.getvalue() and "4/4" in terminal.getvalue()
    quiet = io.StringIO()
    silent = EpochProgress(False, epochs=3, stream=quiet)
    silent.bar(0, 4, 0).update(4)
    silent.epoch_done(RECORD)
    assert quiet.getvalue() == "" and not silent.live


def test_epoch_line_without_validation():
    assert epoch_line({"epoch": 0, "loss": 1.0}, 5) == "epoch 1/5  loss 1"


@pytest.mark.parametrize(
    ("text", "every"),
    [
        ("5", Every(epochs=5)),
        ("30s", Every(seconds=30.0)),
        ("2min", Every(seconds=120.0)),
        ("5,30s", Every(epochs=5, seconds=30.0)),
        ("end", Every()),
        (1, Every(epochs=1)),
    ],
)
def test_parse(text, every):
    assert Every.parse(text) == every
    assert Every.parse(every.text()) == every


@pytest.mark.parametrize("text", ["0", "-1", "5x", "1.5", "5,6", "30s,40s", "", "0s"])
def test_parse_refuses(text):
    with pytest.raises(ValueError, match="plot_every must be a schedule like"):
        Every.parse(text, "plot_every")


def test_parse_type():
    with pytest.raises(TypeError, match="plot_every must be a schedule"):
        Every.parse(1.5, "plot_every")


def test_due_every_n_epochs_and_always_at_the_end():
    due = Due(Every(epochs=3), clock=lambda: 0.0)
    assert [due.check(e, last=(e == 6)) for e in range(7)] == [
        False,
        False,
        True,
        False,
        False,
        True,
        True,
    ]
    only_end = Due(Every(), clock=lambda: 0.0)
    assert [only_end.check(e, last=(e == 3)) for e in range(4)] == [False, False, False, True]


def test_due_by_wall_clock():
    now = [0.0]
    due = Due(Every(seconds=10.0), clock=lambda: now[0])
    results = []
    for step in (4.0, 4.0, 4.0, 4.0, 4.0, 4.0):
        now[0] += step
        results.append(due.check(0, last=False))
    assert results == [False, False, True, False, False, True]  # at 12 s, then at 24 s


def test_bar_ends_each_epoch_with_its_loss_and_val_loss(capsys):
    # A short epoch never reaches the bar's refresh interval: the loss and the validation loss
    # still show on the bar when the epoch ends, numbered from 1 as in the log.
    import numpy as np

    from seqstate.core.model import SequenceModel
    from seqstate.lanes import Lanes
    from seqstate.train import fit

    series = np.sin(np.arange(100, dtype=np.float32) / 5)[:, None]
    lanes = Lanes.from_series(series, lanes=2, window=10)
    model = SequenceModel(input_size=1, output_size=1, hidden_size=4)
    fit(model, lanes, validation=lanes, epochs=2, progress="bar")
    err = capsys.readouterr().err
    assert "epoch 1/2" in err and "epoch 2/2" in err and "epoch 0/" not in err
    assert err.count("val_loss=") == 2 and err.count(" loss=") >= 2


def test_a_plot_without_validation_draws_no_best_epoch(tmp_path, monkeypatch):
    # A refit trains on every row for a fixed number of epochs: no validation loss chose a
    # "best epoch" there, so its loss.png draws none; with validation the line is at the
    # 1-based epoch the summaries print.
    from matplotlib.axes import Axes

    from seqstate.train.history import History
    from seqstate.train.runfiles import write_plot

    lines: list[float] = []
    monkeypatch.setattr(Axes, "axvline", lambda self, x, **kw: lines.append(x))
    records = [{"epoch": k, "loss": 1.0 / (k + 1)} for k in range(3)]
    write_plot(tmp_path, History(records=records, best_epoch=2))
    assert lines == []
    records = [{**r, "val_loss": 2.0 - r["epoch"] % 2} for r in records]
    write_plot(tmp_path, History(records=records, best_epoch=1))
    assert lines == [2]


def test_a_redrawn_plot_keeps_nothing_of_the_one_before(tmp_path):
    # The figure is kept between draws (building it costs as much as drawing it): a plot
    # drawn after another, longer one with a best-epoch line is the same image as before.
    from seqstate.train.history import History
    from seqstate.train.runfiles import write_plot

    short = History(
        records=[{"epoch": k, "loss": 0.5 - 0.1 * k, "val_loss": 0.6 - 0.1 * k} for k in range(3)]
    )
    long = History(
        records=[
            {"epoch": k, "loss": 90.0 / (k + 1), "val_loss": 99.0 / (k + 1)} for k in range(12)
        ],
        best_epoch=9,
    )
    images = []
    for name, history in (("a", short), ("b", long), ("c", short)):
        (tmp_path / name).mkdir()
        write_plot(tmp_path / name, history)
        images.append((tmp_path / name / "loss.png").read_bytes())
    assert images[0] == images[2] != images[1]
