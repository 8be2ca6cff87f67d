"""forecast: warm a model up on each series' history, then roll it out autoregressively.

    path = forecast(model, context, horizon=24)  # (24, O): warm up on context, then roll out

The warm-up is :func:`seqstate.predict`'s chunked run (with the final state captured); the
roll-out then feeds each output back as the next input, one step per call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from seqstate._validate import check_int
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

__all__ = ["forecast"]

# --------------------------------------------------------------------------------------------
# forecast
# --------------------------------------------------------------------------------------------


def forecast(
    model: nn.Module,
    context: Any,
    horizon: int,
    *,
    covariates: Any = None,
    target_features: Sequence[int] | None = None,
    chunk: int | None = None,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    on_step: Callable[[int], None] | None = None,
    samples: int | None = None,
    quantiles: Sequence[float] | None = None,
    seed: int | None = None,
    keys: Sequence[Any] | None = None,
) -> Any:
    """Warm the state up on ``context``, then forecast ``horizon`` steps autoregressively.

    The model's output at step t is read as its forecast of the inputs at step t + 1, so the
    first forecast is the output at the last context step and each later one comes from
    feeding the previous forecast back in. The plain loop, for one series::

        y, state = model(context[None])            # warm up: [1, L, F] -> [1, L, O]
        out = [y[0, -1]]
        for h in range(1, horizon):
            x = empty(F); x[target_features] = out[-1]; x[others] = covariates[h - 1]
            y, state = model(x[None, None], state)
            out.append(y[0, 0])

    Many series run as one batch: one model call per forecast step for all of them.

    Args:
        model: a regression :class:`seqstate.SequenceModel` (or the same protocol).
        context: one series ``[L, F]`` (or ``[L]``), many ``[n, L, F]``, or a list of
            ``[L_i, F]`` (lengths may differ).
        horizon: steps to forecast, >= 1.
        covariates: when the model has fewer outputs than inputs (O < F), the known future
            values of the input columns it does not forecast: ``[horizon, F - O]`` for one
            series, ``[n, horizon, F - O]`` (or a list) for many. Row h holds their values at
            the time of forecast step h (the last row feeds no step and is not used).
        target_features: which input column each output feeds (O indices). Default when
            O == F: output j feeds input j. Required when O < F.
        chunk, batch_size, device: as in :func:`predict`, for the warm-up.
        on_step: called with the number of forecast steps done after each one (a progress
            bar for long horizons).
        samples, quantiles, seed, keys: for a model with a distribution head, ``samples``
            sample paths per series, each series' from a generator seeded by ``seed`` and its
            key (see :func:`seqstate.inference.sampling.sample_forecast`); a
            :class:`~seqstate.inference.sampling.Forecast` is returned then. Without
            ``samples`` a distribution model's forecast feeds its medians back.

    Returns:
        ``[horizon, O]`` for one series, ``[n, horizon, O]`` otherwise (NumPy); a ``Forecast``
        when ``samples`` is given.
    """
    if on_step is not None and not callable(on_step):
        raise TypeError(
            "on_step must be a function called with the number of forecast steps done, or "
            f"None; received {type(on_step).__name__} {on_step!r}"
        )
    if samples is not None:
        from seqstate.core.distributions import DEFAULT_QUANTILES
        from seqstate.inference.sampling import sample_forecast

        return sample_forecast(
            model,
            context,
            horizon,
            samples=samples,
            quantiles=DEFAULT_QUANTILES if quantiles is None else quantiles,
            seed=seed,
            keys=keys,
            covariates=covariates,
            target_features=target_features,
            chunk=chunk,
            batch_size=batch_size,
            device=device,
        )
    if quantiles is not None or seed is not None or keys is not None:
        raise ValueError(
            "forecast: quantiles, seed and keys apply to sample paths; give samples=N too (a model "
            "with a distribution head)"
        )
    model, info = prepare_model(model, device)
    config = getattr(model, "config", None)
    if getattr(config, "task", "regression") == "classification":
        raise ValueError(
            "forecast feeds outputs back as inputs, which needs a regression model; this model "
            "is a classifier (its outputs are logits). Use predict for classification"
        )
    horizon = check_int(horizon, "horizon", 1, "It is the number of steps to forecast.")
    chunk = check_positive_int(chunk, "chunk", DEFAULT_CHUNK, "steps per model call")
    batch_size = check_positive_int(
        batch_size, "batch_size", DEFAULT_BATCH_SIZE, "sequences run side by side"
    )
    fed, others = feed_columns(info, target_features)
    arrays, form = read_sequences(context, "context", info)
    n = len(arrays)
    future = read_covariates(covariates, n, horizon, len(others), form, info)

    outputs, state = run_chunked(
        model, info, arrays, chunk=chunk, batch_size=batch_size, capture_state=True
    )
    if state is None:  # capture_state=True always returns one
        raise RuntimeError("internal error: no final state was captured")
    result = torch.empty((n, horizon, info.output_size), dtype=info.dtype, device=info.device)
    result[:, 0] = torch.from_numpy(np.stack([out[-1] for out in outputs])).to(info.device)
    future_t = torch.from_numpy(future).to(info.device, info.dtype)
    fed_t = torch.tensor(fed, device=info.device)
    others_t = torch.tensor(others, dtype=torch.long, device=info.device)
    x = torch.empty((n, 1, info.input_size), dtype=info.dtype, device=info.device)
    with evaluating(model):
        for h in range(1, horizon):
            x[:, 0, fed_t] = result[:, h - 1]
            x[:, 0, others_t] = future_t[:, h - 1]
            y, state = model(x, state)
            result[:, h] = y[:, 0]
            if on_step is not None:
                on_step(h + 1)
    array = info.to_numpy(result)
    return array[0] if form == "one" else array
