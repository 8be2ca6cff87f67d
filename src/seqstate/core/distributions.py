"""Distribution heads: the model's head emits ``k * O`` raw numbers per step, which a head maps
to a distribution over each of the ``O`` targets.

Heads (``k`` raw parameters per target):

==========  ===  ==========================================================================
name        k    parameters (``shift``/``scale`` are the model's target normalisation)
==========  ===  ==========================================================================
normal      2    loc = shift + scale * raw0,  sd = scale * softplus(raw1)
studentt    3    loc = shift + scale * raw0,  sd = scale * softplus(raw1),  df = 2 + softplus(raw2)
negbin      2    mean = scale * softplus(raw0) (scaled, never shifted: counts stay >= 0),
                 dispersion = softplus(raw1) (variance = mean + dispersion * mean^2)
quantile    Q    q_1 = shift + scale * raw0,  q_j = q_{j-1} + scale * softplus(raw_{j-1})
                 (monotone in the level by construction)
==========  ===  ==========================================================================

Layout: the head's last ``k * O`` units are parameter-major, ``raw[..., j * O + o]`` is
parameter ``j`` of target ``o`` (``raw.unflatten(-1, (k, O))``).

The loss is computed where the training loss of a point model is, in the normalised space
(``(y - shift) / scale``), so its scale does not depend on the data's units: for normal,
studentt and quantile heads the normalised NLL (pinball loss) differs from the raw one by the
constant ``log(scale)`` (a factor ``scale``); a negative binomial's NLL is that of the raw counts
(counts cannot be shifted), which the scale enters through the mean.

Sampling takes a ``torch.Generator`` (the same generator state gives the same draws); the
Student-t's and the negative binomial's gamma variates are drawn with Marsaglia and Tsang's
method from that generator's normals and uniforms.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from collections.abc import Sequence
from typing import Literal, cast

import numpy as np
import torch
import torch.nn.functional as functional

__all__ = [
    "DEFAULT_QUANTILES",
    "DISTRIBUTIONS",
    "DistributionHead",
    "OutputDistribution",
    "check_quantile_names",
    "negbin_quantiles_by_recurrence",
    "pinball_loss",
    "quantile_name",
]

DEFAULT_QUANTILES: tuple[float, ...] = (0.1, 0.5, 0.9)
DistributionName = Literal["normal", "studentt", "negbin", "quantile"]
DISTRIBUTIONS: tuple[str, ...] = ("normal", "studentt", "negbin", "quantile")

_PARAMETERS = {
    "normal": ("loc", "sd"),
    "studentt": ("loc", "sd", "df"),
    "negbin": ("mean", "dispersion"),
}
# Student-t quantiles: Gauss-Legendre nodes for the CDF's integral, bisection steps to invert it
_T_NODES = 48
_T_BISECTIONS = 48
_FLOOR = 1e-6  # keeps scales and dispersions away from 0 (a zero sd has no density)


def quantile_name(level: float) -> str:
    """The column suffix of a quantile level: ``q10`` for 0.1, ``q2.5`` for 0.025."""
    percent = round(level * 100, 6)
    text = f"{percent:.6f}".rstrip("0").rstrip(".")
    return f"q{text}"


def check_quantile_names(levels: Sequence[float], argument: str) -> None:
    """Refuse distinct levels that :func:`quantile_name` writes alike (ValueError): their
    columns would overwrite each other (1e-9 and 2e-9 are both ``q0``)."""
    seen: dict[str, float] = {}
    for level in levels:
        name = quantile_name(float(level))
        if name in seen and seen[name] != float(level):
            raise ValueError(
                f"{argument}: levels {seen[name]!r} and {level!r} are both written {name!r} "
                "(columns name a level to 1e-8, its percentage to 6 decimals); give levels "
                "that differ there"
            )
        seen[name] = float(level)


def _check_levels(levels: Sequence[float], argument: str) -> tuple[float, ...]:
    if isinstance(levels, str | bytes) or not isinstance(levels, Sequence):
        raise TypeError(
            f"{argument} must be a sequence of levels in (0, 1); received {type(levels).__name__}"
        )
    values = []
    for level in levels:
        if isinstance(level, bool) or not isinstance(level, int | float):
            raise TypeError(f"{argument} must hold numbers; received {level!r}")
        if not 0.0 < float(level) < 1.0:
            raise ValueError(
                f"{argument} must hold levels strictly between 0 and 1; received {level!r}"
            )
        values.append(float(level))
    if not values:
        raise ValueError(f"{argument} must hold at least one level; received none")
    if sorted(set(values)) != values:
        raise ValueError(f"{argument} must be strictly increasing; received {values}")
    return tuple(values)


@dataclasses.dataclass(frozen=True)
class DistributionHead:
    """How ``k * O`` raw head outputs become a distribution per target.

    Args:
        name: normal | studentt | negbin | quantile.
        quantiles: the levels a quantile head predicts (strictly increasing, in (0, 1));
            ignored by the other heads.
    """

    name: DistributionName
    quantiles: tuple[float, ...] = DEFAULT_QUANTILES

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise TypeError(f"distribution must be a str; received {type(self.name).__name__}")
        if self.name not in DISTRIBUTIONS:
            raise ValueError(
                f"distribution must be one of {list(DISTRIBUTIONS)}; received {self.name!r}"
            )
        levels = _check_levels(self.quantiles, "quantiles")
        object.__setattr__(
            self, "quantiles", levels if self.name == "quantile" else DEFAULT_QUANTILES
        )

    @property
    def parameter_count(self) -> int:
        """``k``: raw parameters per target."""
        if self.name == "quantile":
            return len(self.quantiles)
        return len(_PARAMETERS[self.name])

    def distribution(
        self, raw: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor
    ) -> OutputDistribution:
        """``raw`` [..., k * O] (the head's output), ``shift``/``scale`` [O] -> the distribution
        of each target in raw units (batch shape [..., O])."""
        k = self.parameter_count
        if raw.shape[-1] % k:
            raise ValueError(
                f"raw parameters must have k * O = {k} * O columns for a {self.name} head; "
                f"received {raw.shape[-1]}"
            )
        # k x [..., O] (slices, not a reshape: an ONNX export keeps B and T dynamic)
        parts = raw.split(raw.shape[-1] // k, dim=-1)
        if self.name == "negbin":
            mean = scale * functional.softplus(parts[0]) + _FLOOR
            return OutputDistribution(
                self, {"mean": mean, "dispersion": functional.softplus(parts[1]) + _FLOOR}
            )
        loc = shift + scale * parts[0]
        if self.name == "quantile":
            steps = [scale * functional.softplus(part) for part in parts[1:]]
            values = torch.cumsum(torch.stack([loc, *steps], dim=-1), dim=-1)  # [..., O, Q]
            return OutputDistribution(self, {"values": values})
        params = {"loc": loc, "sd": scale * (functional.softplus(parts[1]) + _FLOOR)}
        if self.name == "studentt":
            params["df"] = 2.0 + functional.softplus(parts[2])
        return OutputDistribution(self, params)

    def normalized_loss(
        self, raw: torch.Tensor, target: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor
    ) -> torch.Tensor:
        """Per-element training loss [..., O]: the NLL (the pinball loss averaged over the
        levels for a quantile head) in the normalised space (see the module doc)."""
        if self.name == "negbin":
            return self.distribution(raw, shift, scale).nll(target)
        one = torch.ones_like(scale)
        normalized = self.distribution(raw, torch.zeros_like(shift), one)
        return normalized.nll((target - shift) / scale)

    def to_dict(self) -> dict[str, object]:
        if self.name == "quantile":
            return {"name": self.name, "quantiles": list(self.quantiles)}
        return {"name": self.name}


def pinball_loss(
    values: torch.Tensor, target: torch.Tensor, levels: Sequence[float]
) -> torch.Tensor:
    """``values`` [..., Q] quantile predictions at ``levels``, ``target`` [...] -> the pinball
    loss [..., Q]: ``max(q * (y - v), (q - 1) * (y - v))``."""
    q = torch.as_tensor(levels, dtype=values.dtype, device=values.device)
    error = target[..., None] - values
    return torch.maximum(q * error, (q - 1) * error)


@dataclasses.dataclass(frozen=True)
class OutputDistribution:
    """A distribution per target, batch shape ``[..., O]``, in raw units."""

    head: DistributionHead
    params: dict[str, torch.Tensor]

    @property
    def batch_shape(self) -> torch.Size:
        first = next(iter(self.params.values()))
        return first.shape[:-1] if self.head.name == "quantile" else first.shape

    def torch_distribution(self) -> torch.distributions.Distribution:
        """The matching ``torch.distributions`` object (not for a quantile head)."""
        p = self.params
        if self.head.name == "normal":
            return torch.distributions.Normal(p["loc"], p["sd"], validate_args=False)
        if self.head.name == "studentt":
            return torch.distributions.StudentT(p["df"], p["loc"], p["sd"], validate_args=False)
        if self.head.name == "negbin":
            total_count, logits = _negbin_count_logits(p)
            return torch.distributions.NegativeBinomial(
                total_count, logits=logits, validate_args=False
            )
        raise ValueError("a quantile head has no torch.distributions counterpart")

    def nll(self, target: torch.Tensor) -> torch.Tensor:
        """Negative log likelihood [..., O] of ``target`` [..., O]; for a quantile head the
        pinball loss averaged over its levels."""
        if self.head.name == "quantile":
            return pinball_loss(self.params["values"], target, self.head.quantiles).mean(-1)
        if self.head.name == "negbin":
            # the log pmf written out (torch's log_prob rejects nothing, but keeps it explicit
            # and differentiable in both parameters): r = 1/dispersion, p = mean / (mean + r)
            # In float64 whatever the head's dtype (as its quantiles): in float32
            # lgamma(y + r) - lgamma(r) cancels when r = 1 / dispersion is large (0.17 nats
            # off at dispersion 2e-6) and its gradient in the dispersion rounds to 0.
            dtype = self.params["mean"].dtype
            mean, dispersion = self.params["mean"].double(), self.params["dispersion"].double()
            y = target.double()
            r = 1.0 / dispersion
            log_pmf = (
                torch.lgamma(y + r)
                - torch.lgamma(r)
                - torch.lgamma(y + 1.0)
                + r * torch.log(r / (r + mean))
                + y * torch.log(mean / (r + mean))
            )
            return (-log_pmf).to(dtype)
        # the log densities written out: torch's StudentT builds a validating Chi2, which
        # raises on a NaN at a step whose loss is masked out anyway
        p = self.params
        z = (target - p["loc"]) / p["sd"]
        if self.head.name == "normal":
            return 0.5 * z.square() + torch.log(p["sd"]) + 0.5 * math.log(2 * math.pi)
        df = p["df"]
        # (the lgamma difference in float64: in float32 it cancels at large df)
        wide = df.double()
        constant = (torch.lgamma(wide / 2) - torch.lgamma((wide + 1) / 2)).to(df.dtype)
        return (
            constant
            + 0.5 * torch.log(df * math.pi)
            + torch.log(p["sd"])
            + (df + 1) / 2 * torch.log1p(z.square() / df)
        )

    def mean(self) -> torch.Tensor:
        """[..., O]; a quantile head's median stands in for its mean."""
        if self.head.name == "negbin":
            return self.params["mean"]
        if self.head.name == "quantile":
            return self.median()
        return self.params["loc"]

    def median(self) -> torch.Tensor:
        """[..., O]: the point forecast."""
        if self.head.name in ("normal", "studentt"):
            return self.params["loc"]
        return self.quantile([0.5])[..., 0]

    def quantile(self, levels: Sequence[float]) -> torch.Tensor:
        """[..., O, Q]: each target's quantiles at ``levels``, non-decreasing in the level.

        normal: closed form; negative binomial: exact, from the cumulative pmf (in float64);
        quantile head:
        linear between its levels, a Laplace tail past the outermost (a level outside the
        trained ones still has its own quantile, from the slope of the two outermost);
        Student-t: the CDF by quadrature, inverted by bisection (torch has no Student-t
        inverse CDF), to about 1e-9.
        """
        levels = _check_levels(levels, "levels")
        shape = self.batch_shape
        if self.head.name == "normal":
            q = torch.as_tensor(
                levels, dtype=self.params["loc"].dtype, device=self.params["loc"].device
            )
            dist = torch.distributions.Normal(
                self.params["loc"][..., None], self.params["sd"][..., None]
            )
            return dist.icdf(q.expand(*shape, len(levels)))
        if self.head.name == "quantile":
            return _interpolate(self.params["values"], self.head.quantiles, levels)
        if self.head.name == "negbin":
            # in float64 whatever the head's dtype: in float32, lgamma(k + r) - lgamma(r)
            # cancels near the dispersion's floor (r near 1e6) and the cumulative sum drifts
            # over a long tail, moving the median by up to 8 counts; in float64 it is exact
            # (and equal to the exported graph's recurrence, which sums in float64 too)
            mean, dispersion = self.params["mean"], self.params["dispersion"]
            exact = _negbin_quantiles(mean.double(), dispersion.double(), levels)
            return exact.to(mean.dtype)
        # in float64 whatever the head's dtype: cos(u) ** (df - 1) and the lgamma difference
        # of the CDF's constant lose the quantile in float32 at large df (18% at df 3e5)
        df = self.params["df"]
        standard = _standard_t_quantiles(df.double(), levels).to(df.dtype)  # [..., O, Q]
        return self.params["loc"][..., None] + self.params["sd"][..., None] * standard

    def sample(
        self, count: int | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Draws: ``[...]`` batch shape ``[..., O]`` (``count`` None) or ``[count, ..., O]``."""
        shape = tuple(self.batch_shape) if count is None else (count, *self.batch_shape)
        p = self.params
        reference = next(iter(p.values()))
        dtype, device = reference.dtype, reference.device
        if self.head.name == "normal":
            z = torch.randn(shape, generator=generator, dtype=dtype, device=device)
            return p["loc"] + p["sd"] * z
        if self.head.name == "studentt":
            z = torch.randn(shape, generator=generator, dtype=dtype, device=device)
            half = (p["df"] / 2).expand(shape)
            chi2 = 2.0 * _standard_gamma(half, generator)
            return p["loc"] + p["sd"] * z * torch.sqrt(p["df"] / chi2)
        if self.head.name == "negbin":
            r = (1.0 / p["dispersion"]).expand(shape)
            rate = _standard_gamma(r, generator) * (p["mean"] * p["dispersion"]).expand(shape)
            return torch.poisson(rate, generator=generator)
        u = torch.rand((*shape, 1), generator=generator, dtype=dtype, device=device)
        values = p["values"].expand(*shape, p["values"].shape[-1])
        return _interpolate_at(values, self.head.quantiles, u)[..., 0]


def _negbin_count_logits(params: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(total_count, logits) of torch's NegativeBinomial for (mean, dispersion)."""
    r = 1.0 / params["dispersion"]
    return r, torch.log(params["mean"]) - torch.log(r)


def _negbin_quantiles(
    mean: torch.Tensor, dispersion: torch.Tensor, levels: Sequence[float]
) -> torch.Tensor:
    """Exact quantiles [..., O, Q]: the least count k with P(X <= k) >= level, from the pmf
    summed up to a bound far in the tail (mean + 12 sd)."""
    sd = torch.sqrt(mean + dispersion * mean.square())
    bound = int(torch.ceil((mean + 12 * sd).max()).item()) + 2 if mean.numel() else 2
    counts = torch.arange(bound, dtype=mean.dtype, device=mean.device)  # [K]
    r = (1.0 / dispersion)[..., None]
    m = mean[..., None]
    log_pmf = (
        torch.lgamma(counts + r)
        - torch.lgamma(r)
        - torch.lgamma(counts + 1.0)
        + r * torch.log(r / (r + m))
        + counts * torch.log(m / (r + m))
    )
    cdf = torch.cumsum(log_pmf.exp(), dim=-1)  # [..., O, K]
    q = torch.as_tensor(levels, dtype=mean.dtype, device=mean.device)
    # the least k with cdf >= q (a hair of slack for rounding in the sum)
    index = torch.searchsorted(
        cdf.contiguous(), (q - 1e-12).expand(*cdf.shape[:-1], len(levels)).contiguous()
    )
    return index.clamp(max=bound - 1).to(mean.dtype)


def negbin_quantiles_by_recurrence(
    mean: torch.Tensor, dispersion: torch.Tensor, levels: Sequence[float]
) -> torch.Tensor:
    """The quantiles of :meth:`OutputDistribution.quantile` for a negative binomial head
    ([..., O] -> [..., O, Q], in ``mean``'s dtype), written without ``lgamma`` so that an ONNX
    graph can compute them (ONNX has no ``lgamma`` operator): the log pmf by its recurrence,
    summed in float64 over the same counts (0 .. mean + 12 sd, the largest in the call),
    the least count k with P(X <= k) >= level with the same slack.

    With ``r = 1 / dispersion``::

        log pmf(0)     = r log(r / (r + m))
        log pmf(k + 1) = log pmf(k) + log(k + r) - log(k + 1) + log(m / (r + m))

    (a cumulative sum over the counts, not a product of pmfs, so pmf(0) cannot underflow to 0
    and drag every later term with it when r log(r / (r + m)) is very negative). In float64 it
    equals the lgamma form up to a cdf within about 1e-12 of a level. In float32 (the dtype
    of a run's head) the lgamma form's own rounding moves a quantile whose cdf passes the
    level within it, and this form, float64 inside, is the exact one: lgamma(k + r) -
    lgamma(r) cancels badly when r = 1 / dispersion is near 1e6 (medians off by up to 8
    counts at means near 1000), and lgamma of counts in the hundreds has an ulp near 1e-4.
    """
    levels = _check_levels(levels, "levels")
    sd = torch.sqrt(mean + dispersion * mean.square())
    # the bound of the lgamma form, from the same dtype; 2 when the call has no rows
    tail = torch.cat([(mean + 12 * sd).reshape(-1), mean.new_zeros(1)])
    # .item() of an int64, not int(): under torch.export it stays a symbolic size (an ONNX
    # Range's limit), where int() would fix the example's value
    bound = cast(int, torch.ceil(tail.max()).to(torch.int64).item()) + 2
    torch._check(bound >= 2)
    counts = torch.arange(bound, dtype=torch.float64, device=mean.device)  # [K]
    r = (1.0 / dispersion.double())[..., None]  # [..., O, 1]
    m = mean.double()[..., None]
    # log pmf(k) - k log(m / (r + m)) - log pmf(0), k = 0 .. K-1: the recurrence's running sum
    steps = torch.log(counts[:-1] + r) - torch.log(counts[:-1] + 1.0)  # [..., O, K-1]
    running = torch.cat([torch.zeros_like(steps[..., :1]), torch.cumsum(steps, dim=-1)], dim=-1)
    log_pmf = running + r * torch.log(r / (r + m)) + counts * torch.log(m / (r + m))
    cdf = torch.cumsum(log_pmf.exp(), dim=-1)  # [..., O, K], non-decreasing
    q = torch.as_tensor(levels, dtype=torch.float64, device=mean.device)
    # the least k with cdf >= q: how many cdf values fall short of it (searchsorted, left)
    below = (cdf[..., None] < q - 1e-12).sum(dim=-2)  # [..., O, Q]
    return below.clamp(max=bound - 1).to(mean.dtype)


def _standard_t_quantiles(df: torch.Tensor, levels: Sequence[float]) -> torch.Tensor:
    """Quantiles [..., Q] of the standard Student-t with ``df`` [...] degrees of freedom.

    With t = sqrt(df) tan(a) the CDF is ``1/2 + c sqrt(df) * integral_0^a cos(u)^(df-1) du``
    (``c`` the density's constant): a smooth, bounded integrand on [0, pi/2), which Gauss-Legendre
    quadrature integrates accurately; bisection on ``a`` then inverts it.
    """
    nodes, weights = (
        torch.as_tensor(part, dtype=df.dtype, device=df.device)
        for part in np.polynomial.legendre.leggauss(_T_NODES)
    )
    q = torch.as_tensor(levels, dtype=df.dtype, device=df.device)
    nu = df[..., None]  # [..., 1]
    log_c = torch.lgamma((nu + 1) / 2) - torch.lgamma(nu / 2) - 0.5 * torch.log(nu * math.pi)
    constant = torch.exp(log_c) * torch.sqrt(nu)
    target = (q - 0.5).abs().expand(*df.shape, len(levels))  # by symmetry: the upper half

    def half_cdf(angle: torch.Tensor) -> torch.Tensor:  # integral from 0 to angle, [..., Q]
        u = angle[..., None] * (nodes + 1) / 2  # [..., Q, N]
        integrand = torch.cos(u).clamp_min(0.0) ** (nu[..., None] - 1)
        return constant * (angle / 2) * (integrand * weights).sum(-1)

    low = torch.zeros_like(target)
    high = torch.full_like(target, math.pi / 2)
    for _ in range(_T_BISECTIONS):
        middle = (low + high) / 2
        below = half_cdf(middle) < target
        low, high = torch.where(below, middle, low), torch.where(below, high, middle)
    t = torch.sqrt(nu) * torch.tan((low + high) / 2)
    return torch.where(q < 0.5, -t, t)


def _tail_slopes(values: torch.Tensor, grid: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """(below, above) [..., 1]: the Laplace tails' slopes past a quantile head's outermost
    levels, each through its two outermost quantiles on the tail's log scale, as the run's
    interval tables extend their grid
    (:meth:`seqstate.recipe.intervals.IntervalTable.standard_quantiles`)::

        Q(tau) = Q(t_K) + above * log((1 - t_K) / (1 - tau))   tau > t_K
        Q(tau) = Q(t_0) - below * log(t_0 / tau)               tau < t_0
    """
    above = (values[..., -1:] - values[..., -2:-1]) / math.log((1 - grid[-2]) / (1 - grid[-1]))
    below = (values[..., 1:2] - values[..., :1]) / math.log(grid[1] / grid[0])
    return below, above


def _interpolate(
    values: torch.Tensor, known: Sequence[float], levels: Sequence[float]
) -> torch.Tensor:
    """:func:`_interpolate_at` at fixed ``levels``: the segments are found here, in Python,
    so the graph is plain indexing (an ONNX export has no ``searchsorted`` of floats)."""
    if len(known) == 1:
        return values[..., :1].expand(*values.shape[:-1], len(levels))
    grid = [float(k) for k in known]
    right = [min(max(bisect.bisect_left(grid, float(q)), 1), len(grid) - 1) for q in levels]
    left = [r - 1 for r in right]
    weight = [
        min(max((float(q) - grid[i]) / (grid[j] - grid[i]), 0.0), 1.0)
        for q, i, j in zip(levels, left, right, strict=True)
    ]
    index = torch.tensor(left, device=values.device)
    y0 = values.index_select(-1, index)
    y1 = values.index_select(-1, torch.tensor(right, device=values.device))
    inside = y0 + torch.tensor(weight, dtype=values.dtype, device=values.device) * (y1 - y0)
    if grid[0] <= min(levels) and max(levels) <= grid[-1]:
        return inside
    below, above = _tail_slopes(values, grid)
    # each level's distance into a tail on the log scale (0 inside the grid): Python numbers
    up = [math.log((1 - grid[-1]) / (1 - q)) if q > grid[-1] else 0.0 for q in levels]
    down = [math.log(grid[0] / q) if q < grid[0] else 0.0 for q in levels]
    dtype, device = values.dtype, values.device
    distance_up = torch.tensor(up, dtype=dtype, device=device)
    distance_down = torch.tensor(down, dtype=dtype, device=device)
    return inside + above * distance_up - below * distance_down


def _interpolate_at(
    values: torch.Tensor, known: Sequence[float], levels: torch.Tensor
) -> torch.Tensor:
    """The quantile head's quantile function: piecewise linear through (known[i],
    values[..., i]), a Laplace tail past each end (:func:`_tail_slopes`): ``values``
    [..., Q], ``levels`` [..., L] in (0, 1) -> [..., L]."""
    grid = torch.as_tensor(known, dtype=values.dtype, device=values.device)
    if len(known) == 1:
        return values[..., :1].expand(levels.shape)
    right = torch.searchsorted(grid, levels.contiguous()).clamp(1, len(known) - 1)
    left = right - 1
    x0, x1 = grid[left], grid[right]
    y0, y1 = torch.gather(values, -1, left), torch.gather(values, -1, right)
    weight = ((levels - x0) / (x1 - x0)).clamp(0.0, 1.0)
    inside = y0 + weight * (y1 - y0)
    below, above = _tail_slopes(values, [float(k) for k in known])
    # (clamped: a level of exactly 0 from torch.rand would be an infinite draw)
    tiny = torch.finfo(values.dtype).tiny
    up = torch.log((1 - grid[-1]) / (1 - levels)).clamp_min(0.0)
    down = torch.log(grid[0] / levels.clamp_min(tiny)).clamp_min(0.0)
    return inside + above * up - below * down


def _standard_gamma(
    shape: torch.Tensor, generator: torch.Generator | None, rounds: int = 64
) -> torch.Tensor:
    """Gamma(shape, 1) variates from ``generator`` (Marsaglia and Tsang 2000; shape < 1 through
    Gamma(shape + 1) * U^(1/shape)). Each round accepts over 95% of what is left, so ``rounds``
    bounds the loop far past any realistic need."""
    boost = shape < 1
    a = torch.where(boost, shape + 1.0, shape)
    d = a - 1.0 / 3.0
    c = 1.0 / torch.sqrt(9.0 * d)
    result = torch.empty_like(a)
    pending = torch.ones_like(a, dtype=torch.bool)
    for _ in range(rounds):
        z = torch.randn(a.shape, generator=generator, dtype=a.dtype, device=a.device)
        u = torch.rand(a.shape, generator=generator, dtype=a.dtype, device=a.device)
        v = (1.0 + c * z) ** 3
        accept = (v > 0) & (
            torch.log(u) < 0.5 * z.square() + d - d * v + d * torch.log(v.clamp_min(1e-30))
        )
        take = pending & accept
        result = torch.where(take, d * v, result)
        pending = pending & ~take
        if not bool(pending.any()):
            break
    result = torch.where(pending, a, result)  # never reached in practice: the mean stands in
    if bool(boost.any()):
        u = torch.rand(a.shape, generator=generator, dtype=a.dtype, device=a.device)
        result = torch.where(boost, result * u.pow(1.0 / shape), result)
    return result
