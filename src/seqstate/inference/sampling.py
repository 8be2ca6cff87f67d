"""Sample-path forecasts (DeepAR style) from a model with a distribution head.

    result = sample_forecast(model, context, horizon=24, samples=200, seed=0)
    result.median            # [H, O]   (one series) or [n, H, O]
    result.quantile(0.9)     # the same shapes
    result.samples           # [S, H, O] (one series) or [n, S, H, O]

The plain loop, for one series::

    raw, state = model.distribution_parameters(context[None])    # warm up once
    raw, state = raw[:, -1].repeat(S), state.select([0] * S)      # S rows, one per path
    for h in range(horizon):
        y = model.distribution(raw).sample(generator)             # [S, O]: each path's value
        paths[:, h] = y
        x = empty(S, F); x[:, target_features] = y; x[:, others] = covariates[h]
        raw, state = model.distribution_parameters(x[:, None], state)  # fed back, state carried

Every path draws from the same generator, so a seed gives the same paths.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from seqstate._validate import check_int
from seqstate.core.distributions import (
    DEFAULT_QUANTILES,
    check_quantile_names,
    quantile_name,
)
from seqstate.core.model import SequenceModel
from seqstate.core.state import State
from seqstate.inference.common import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_CHUNK,
    check_positive_int,
    evaluating,
    feed_columns,
    prepare_model,
    read_covariates,
    read_sequences,
    run_chunked,
)

__all__ = [
    "DEFAULT_SAMPLES",
    "Forecast",
    "Generators",
    "draw",
    "sample_forecast",
    "stream_generators",
    "stream_seed",
]

#: Sample paths per series when none are asked for.
DEFAULT_SAMPLES = 200


#: Where sample paths draw from: one generator per stream (its ``samples`` rows, in stream
#: order), one for every row, or torch's default.
Generators = Sequence[torch.Generator] | torch.Generator | None


def draw(model: Any, raw: torch.Tensor, generator: Generators) -> torch.Tensor:
    """One draw per row of ``raw [B * S, k * O]`` (stream b's S paths: rows b*S .. b*S+S-1)
    in model space; with one generator per stream, each stream's rows from its own, so its
    draws do not depend on the other streams in the call."""
    if generator is None or isinstance(generator, torch.Generator):
        return model.distribution(raw).sample(generator=generator)
    size = raw.shape[0] // len(generator)
    parts = [
        model.distribution(raw[b * size : (b + 1) * size]).sample(generator=g)
        for b, g in enumerate(generator)
    ]
    return torch.cat(parts)


def stream_seed(seed: int, key: Any) -> int:
    """The seed of one stream's sample paths: from the call's ``seed`` and the stream's key
    (its series id; None for a run without one), so a series draws the same paths alone, in
    any panel, in the CLI and on the server."""
    text = f"{int(seed)}:{'' if key is None else key}".encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def stream_generators(
    seed: int | None, keys: Sequence[Any] | None, count: int, device: Any = None
) -> list[torch.Generator]:
    """One generator per stream (series), seeded by :func:`stream_seed` from ``seed`` (None:
    a fresh random one) and its key (``keys``: one per stream, like their ids; None: the
    stream's position). ValueError unless ``keys`` holds ``count`` keys."""
    if keys is None:
        keys = range(count)
    elif isinstance(keys, str) or not isinstance(keys, Sequence) or len(keys) != count:
        raise ValueError(
            f"keys must hold one key per series ({count}), like their ids; received {keys!r:.80}"
        )
    if seed is None:  # (fresh paths: a random base seed)
        seed = int(torch.randint(0, 2**62, (1,)).item())
    return [torch.Generator(device=device).manual_seed(stream_seed(seed, key)) for key in keys]


def _check_level(level: Any, argument: str) -> float:
    if isinstance(level, bool) or not isinstance(level, int | float | np.floating):
        raise TypeError(f"{argument} must be a number in (0, 1); received {type(level).__name__}")
    if not 0.0 < float(level) < 1.0:
        raise ValueError(f"{argument} must be strictly between 0 and 1; received {level!r}")
    return float(level)


@dataclasses.dataclass(frozen=True)
class Forecast:
    """Sample paths and the quantiles read from them.

    Attributes:
        samples: ``[S, H, O]`` for one series or ``[n, S, H, O]`` for many (NumPy).
        levels: the quantile levels a caller asked for (``.quantiles()`` gives them all).
    """

    samples: np.ndarray
    levels: tuple[float, ...] = DEFAULT_QUANTILES

    def __post_init__(self) -> None:
        if not isinstance(self.samples, np.ndarray):
            raise TypeError(
                "samples must be a NumPy array [S, H, O] or [n, S, H, O]; received "
                f"{type(self.samples).__name__}"
            )
        if self.samples.ndim not in (3, 4):
            raise ValueError(
                "samples must be [S, H, O] (one series) or [n, S, H, O] (many); received shape "
                f"{self.samples.shape}"
            )

    @property
    def median(self) -> np.ndarray:
        """``[H, O]`` or ``[n, H, O]``: the point forecast."""
        return self.quantile(0.5)

    def quantile(self, level: float) -> np.ndarray:
        """``[H, O]`` or ``[n, H, O]``: the ``level`` quantile over the paths."""
        level = _check_level(level, "level")
        axis = self.samples.ndim - 3  # the paths' axis
        return np.quantile(self.samples, level, axis=axis).astype(self.samples.dtype)

    def quantiles(self) -> dict[str, np.ndarray]:
        """``{"q10": ..., "q50": ..., "q90": ...}``: each asked level, named by percentage."""
        return {quantile_name(level): self.quantile(level) for level in self.levels}


class _ParameterView(nn.Module):
    """The model with its raw distribution parameters as outputs (for the chunked warm-up)."""

    def __init__(self, model: SequenceModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, state: Any = None, reset: Any = None, mask: Any = None):
        return self.model.distribution_parameters(x, state, reset, mask)

    def initial_state(self, batch_size: int, **kwargs: Any) -> State:
        return self.model.initial_state(batch_size, **kwargs)


def sample_forecast(
    model: nn.Module,
    context: Any,
    horizon: int,
    *,
    samples: int = DEFAULT_SAMPLES,
    quantiles: Sequence[float] = DEFAULT_QUANTILES,
    seed: int | None = None,
    keys: Sequence[Any] | None = None,
    covariates: Any = None,
    target_features: Sequence[int] | None = None,
    chunk: int | None = None,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
) -> Forecast:
    """Warm up on ``context`` once, then roll ``samples`` paths per series forward, each
    feeding its own sampled value back (see the module doc).

    Args:
        model: a :class:`SequenceModel` with a distribution head.
        context, horizon, covariates, target_features, chunk, batch_size, device: as in
            :func:`seqstate.forecast`.
        samples: paths per series, >= 1.
        quantiles: the levels :meth:`Forecast.quantiles` reports.
        seed: seeds the paths (None: a fresh random seed).
        keys: one per series of ``context`` (their ids): series i draws from a generator
            seeded by ``seed`` and ``keys[i]`` (:func:`stream_seed`), so its paths do not
            depend on the other series in the call; default its position.

    Returns:
        a :class:`Forecast`.
    """
    if not isinstance(model, SequenceModel) or model.config.distribution is None:
        raise ValueError(
            "sample paths need a SequenceModel with a distribution head "
            "(ModelConfig.distribution); this model has none, so use forecast for its point "
            "forecast"
        )
    head = model.config.distribution  # narrowed to a head by the check above
    model, info = prepare_model(model, device)
    sequence_model = cast(SequenceModel, model)
    horizon = check_int(horizon, "horizon", 1, "It is the number of steps to forecast.")
    samples = check_int(samples, "samples", 1, "It is the number of sample paths per series.")
    levels = tuple(_check_level(q, f"quantiles[{i}]") for i, q in enumerate(quantiles))
    check_quantile_names(levels, "quantiles")
    if seed is not None:
        seed = check_int(seed, "seed", 0, "It seeds the sample paths.")
    chunk = check_positive_int(chunk, "chunk", DEFAULT_CHUNK, "steps per model call")
    batch_size = check_positive_int(
        batch_size, "batch_size", DEFAULT_BATCH_SIZE, "sequences run side by side"
    )
    fed, others = feed_columns(info, target_features)
    arrays, form = read_sequences(context, "context", info)
    n = len(arrays)
    future = read_covariates(covariates, n, horizon, len(others), form, info)

    view = _ParameterView(sequence_model)
    k = head.parameter_count
    view_info = dataclasses.replace(info, output_size=k * info.output_size)
    outputs, state = run_chunked(
        view, view_info, arrays, chunk=chunk, batch_size=batch_size, capture_state=True
    )
    if state is None:  # capture_state=True always returns one
        raise RuntimeError("internal error: no final state was captured")
    # each series from its own generator: its paths do not depend on the other series
    generator = stream_generators(seed, keys, n, info.device)
    rows = torch.arange(n, device=info.device).repeat_interleave(samples)  # series i: S rows
    state = state.select(rows)
    raw = torch.from_numpy(np.stack([out[-1] for out in outputs])).to(info.device, info.dtype)
    raw = raw[rows]
    paths = torch.empty(
        (n * samples, horizon, info.output_size), dtype=info.dtype, device=info.device
    )
    future_t = torch.from_numpy(future).to(info.device, info.dtype)[rows]
    fed_t = torch.tensor(fed, device=info.device)
    others_t = torch.tensor(others, dtype=torch.long, device=info.device)
    x = torch.empty((n * samples, 1, info.input_size), dtype=info.dtype, device=info.device)
    with evaluating(model):
        for h in range(horizon):
            paths[:, h] = draw(sequence_model, raw, generator)
            if h + 1 < horizon:
                x[:, 0, fed_t] = paths[:, h]
                x[:, 0, others_t] = future_t[:, h]
                step, state = sequence_model.distribution_parameters(x, state)
                raw = step[:, 0]
    array = info.to_numpy(paths.reshape(n, samples, horizon, info.output_size))
    return Forecast(array[0] if form == "one" else array, levels)
