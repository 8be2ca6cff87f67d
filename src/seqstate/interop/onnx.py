"""Export a run, or any SequenceModel, to ONNX with every piece of state as inputs and outputs.

:func:`export_run_onnx` (``seqstate export-onnx RUN``) writes a whole run: raw inputs, the
run's preprocessing and ensemble members inside, their state explicit (see its docstring).
:func:`export_onnx` (``--model-space``) writes the model alone, described below.

The graph computes one chunk of any length for any number of rows::

    inputs   x     [B, T, F] float32  raw inputs (the model's normalisation is in the graph)
             mask  [B, T]    bool     only for a model with mask_value: real steps (True);
                                      padding is also derived from x like the model does
             state, one input per state tensor, named from the model's state type:
               one group (LSTMState/GRUState/RNNState): h0 [L, B, H] (and c0 for LSTM)
               a mixed stack (StackState):              l0_h0, l0_c0, l1_h0, ... [1, B, H_i]
    outputs  y     [B, T, O] float32  raw outputs (logits for classification; 0 at padding)
             the new state, named like the inputs with 1 for 0 (h1, c1 / l0_h1, ...)
                                      -> feed back as the next chunk's state inputs

B and T are dynamic. Streaming is the same loop as in seqstate: feed the state outputs back; a
new sequence in row ``b`` starts by zeroing row ``b`` of every state input before the chunk —
that is ``reset``. Mid-chunk resets are not in the graph: split a chunk at a reset.

How layers become ONNX: a fused LSTM/GRU layer of a model without masking becomes ONNX ``LSTM``
/ ``GRU`` operators (which onnxruntime and TensorRT run with their own kernels). Everything else
becomes a ``Scan`` over steps of per-step ops computing ``core.stepwise.cell_step``, the
same definition seqstate runs: variants torch has no fused kernel for, every layer of a masking
model (ONNX's recurrent operators cannot hold the state over padding inside a sequence), and
RNN layers (the dynamo exporter unrolls ``nn.RNN`` over a fixed number of steps; see
``seqstate.core.cells``).

The graph is made by torch's dynamo exporter (``torch.onnx.export(..., dynamo=True)``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from seqstate._io import atomic_path
from seqstate.core.activations import activation as activation_function
from seqstate.core.cells import CELLS
from seqstate.core.distributions import negbin_quantiles_by_recurrence
from seqstate.core.model import SequenceModel
from seqstate.core.stepwise import StepwiseLayer, cell_step

__all__ = [
    "export_onnx",
    "export_run_onnx",
    "onnx_input_names",
    "onnx_output_names",
    "run_onnx_names",
]

#: Opset used when none is given (the dynamo exporter's own default).
DEFAULT_OPSET = 18
_SHORT = {"hidden": "h", "cell": "c"}


def _state_names(model: SequenceModel, suffix: str) -> list[str]:
    fields = model.state_type.field_names()
    if fields in (("hidden", "cell"), ("hidden",)):  # one group: h0/c0 as before stacks
        return [f"{_SHORT[field]}{suffix}" for field in fields]
    names = []
    for field in fields:  # "l3_hidden" -> "l3_h0"
        layer, kind = field.split("_", 1)
        names.append(f"{layer}_{_SHORT[kind]}{suffix}")
    return names


def onnx_input_names(model: SequenceModel) -> list[str]:
    """``["x", ("mask",) state inputs...]``: e.g. ``["x", "h0", "c0"]`` for an LSTM stack."""
    return ["x", *(["mask"] if model.masks_input else []), *_state_names(model, "0")]


def onnx_output_names(model: SequenceModel) -> list[str]:
    """``["y", state outputs...]``: e.g. ``["y", "h1", "c1"]`` for an LSTM stack."""
    return ["y", *_state_names(model, "1")]


class _Graph(nn.Module):
    """The exported computation: raw x, (mask) and explicit state in; raw y and state out."""

    def __init__(self, model: SequenceModel) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        x: torch.Tensor,
        *rest: torch.Tensor,
        steps: torch.Tensor | None = None,
        raw: bool = False,
    ) -> tuple[torch.Tensor, ...]:
        """``steps [B, T]`` (only from :class:`_MemberGraph`, never a graph input): real steps,
        like ``mask``; the state is held elsewhere (a differenced run's warm-up). ``raw``: the
        head's output as it is (a distribution head's raw parameters), not mapped to the
        targets' units."""
        model, config = self.model, self.model.config
        mask: torch.Tensor | None = steps
        if config.mask_value is not None:
            padding = rest[0] & (x != config.mask_value).any(dim=-1)  # (B, T)
            mask = padding if mask is None else mask & padding
            rest = rest[1:]
        x = (x - model.input_shift) / model.input_scale
        state = model.state_type(*rest)
        groups = model.group_states(state)
        new_states = []
        hidden = x
        for (first, _), group, group_state in zip(
            config.groups(), model.groups, groups, strict=True
        ):
            kind = CELLS[config.layers[first].kind]
            if mask is None and kind.onnx_fused_export and not isinstance(group, StepwiseLayer):
                # The plain torch forward (no resets, no mask) maps onto ONNX's recurrent ops.
                tensors = group_state.tensors()
                hx = tensors if len(tensors) > 1 else tensors[0]
                hidden, new_hx = kind.torch_module.forward(group, hidden, hx)
                new_tensors = new_hx if isinstance(new_hx, tuple) else (new_hx,)
            else:
                hidden, new_tensors = _scan_group(model, first, group, hidden, group_state, mask)
            new_states.append(group.state_type(*new_tensors))
        y = hidden
        for linear, act in zip(model.dense_layers, model._head_activations, strict=True):
            y = act(linear(y))
        if config.distribution is not None and not raw:
            # the model's answer: its distribution's median in raw units (forward's rule)
            y = _median(model, y).to(y.dtype)
        elif config.task == "regression" and not raw:
            y = y * model.output_scale + model.output_shift
        if mask is not None:
            y = torch.where(mask[..., None], y, torch.zeros_like(y))
        return (y, *model.join_states(new_states).tensors())


def _scan_group(
    model: SequenceModel,
    first: int,
    group: nn.Module,
    x: torch.Tensor,
    state: Any,
    mask: torch.Tensor | None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """The group's layers, each a ``scan`` over steps of :func:`cell_step`."""
    from torch._higher_order_ops.scan import scan

    tensors = state.tensors()
    finals: list[list[torch.Tensor]] = [[] for _ in tensors]
    for index in range(state.num_layers):
        spec = model.config.layers[first + index]
        kind = CELLS[spec.kind]
        act = activation_function(spec.activation)
        recurrent_act = activation_function(spec.recurrent_activation)
        weight_ih = getattr(group, f"weight_ih_l{index}")
        weight_hh = getattr(group, f"weight_hh_l{index}")
        bias_ih = getattr(group, f"bias_ih_l{index}")
        bias_hh = getattr(group, f"bias_hh_l{index}")
        projected = (x @ weight_ih.T + bias_ih).transpose(0, 1)  # (T, B, G*H)
        steps_mask = (
            torch.ones(projected.shape[:2], dtype=torch.bool, device=x.device)
            if mask is None
            else mask.transpose(0, 1)
        )  # (T, B)

        def step(carry, inputs, kind=kind, act=act, recurrent_act=recurrent_act,
                 weight_hh=weight_hh, bias_hh=bias_hh, reset_after=spec.reset_after):  # fmt: skip
            projected_t, real = inputs
            hidden, cell = carry[0], (carry[1] if len(carry) > 1 else None)
            new_hidden, new_cell = cell_step(
                kind, projected_t, hidden, cell, weight_hh, bias_hh, act, recurrent_act,
                reset_after,
            )  # fmt: skip
            real = real[:, None]
            kept = [torch.where(real, new_hidden, hidden)]
            if cell is not None and new_cell is not None:
                kept.append(torch.where(real, new_cell, cell))
            return tuple(kept), torch.where(real, new_hidden, torch.zeros_like(new_hidden))

        carry = tuple(t[index] for t in tensors)
        final, outputs = scan(step, carry, (projected, steps_mask))
        x = outputs.transpose(0, 1)  # (B, T, H)
        for field, tensor in enumerate(final):
            finals[field].append(tensor[None])
    return x, tuple(torch.cat(parts) for parts in finals)


def _onnx_module() -> Any:
    try:
        import onnx
        import onnxscript  # noqa: F401  (the dynamo exporter's translation library)
    except ImportError as error:
        raise ImportError(
            f"ONNX export needs onnx and onnxscript ({error.name} is missing): "
            "pip install 'seqstate[onnx]'"
        ) from None
    return onnx


@contextlib.contextmanager
def _exporter_noise() -> Iterator[None]:
    # The dynamo exporter's known, harmless warnings, each filtered narrowly:
    # - its axis-renaming notice when two inputs share the batch (or time) axis;
    # - torch.utils._pytree's LeafSpec deprecation raised from inside torch.export;
    # - nn.RNNBase refreshing its _flat_weights list when torch.export swaps in its parameters;
    # - torch.export's own while-loop LSTM/GRU decomposition calling torch._check_is_size;
    # - torch.export's notice that a run member's last raw parameters are set during the trace
    #   (read back by the same forward: not state that could go stale);
    # - the exporter's log lines that torchvision's operators are skipped (we use none).
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    _clear_rnn_dispatch_caches()
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"_check_is_size will be removed", category=FutureWarning
        )
        warnings.filterwarnings(
            "ignore", message=r"The tensor attributes .*_flat_weights\[\d+\].* during export"
        )
        warnings.filterwarnings("ignore", message=r"# The axis name: .* will not be used")
        # a member's raw parameters, kept on _MemberGraph within one forward and returned by it
        warnings.filterwarnings(
            "ignore", message=r"The tensor attribute .*\.last_parameters was assigned during"
        )
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
        try:
            yield
        finally:
            registration.setLevel(level)
            _clear_rnn_dispatch_caches()


def _clear_rnn_dispatch_caches() -> None:
    """Forget which Python kernel aten.lstm / aten.gru dispatched to.

    With dynamic shapes the exporter swaps in while-loop LSTM/GRU decompositions (a dynamic
    time axis) by editing the ops' ``py_kernels``, but not their dispatch caches: torch 2.13
    then reuses a kernel cached by an earlier export in the process, unrolls the layer over
    the example's steps and fixes the time axis (seen as a second export with T fixed to 3).
    """
    for op in (torch.ops.aten.lstm.input, torch.ops.aten.gru.input):
        cache = getattr(op, "_dispatch_cache", None)
        if cache is not None:
            cache.clear()


def export_onnx(
    model_or_run_dir: SequenceModel | str | os.PathLike[str],
    path: str | os.PathLike[str],
    *,
    opset: int | None = None,
) -> Path:
    """Write ``model_or_run_dir`` (a SequenceModel or a run directory) as an ONNX file.

    Args:
        model_or_run_dir: a :class:`seqstate.SequenceModel` (any stack), or a run directory
            written by ``seqstate.save_model`` / ``fit`` / ``seqstate import-keras``.
        path: the ``.onnx`` file to write (its directory is created).
        opset: ONNX opset version, 18 to 23 (default 18).

    Returns:
        ``path``. The graph's inputs are ``onnx_input_names(model)``, its outputs
        ``onnx_output_names(model)``; see the module docstring for shapes.
    """
    onnx = _onnx_module()
    if isinstance(model_or_run_dir, SequenceModel):
        model = model_or_run_dir
    elif isinstance(model_or_run_dir, str | os.PathLike):
        from seqstate.core.saved import load_model

        try:
            model = load_model(model_or_run_dir)
        except FileNotFoundError as error:  # (its message names run_dir)
            raise FileNotFoundError(f"model_or_run_dir: {error}") from None
    else:
        raise TypeError(
            "model_or_run_dir must be a seqstate.SequenceModel or a run directory path; "
            f"received {type(model_or_run_dir).__name__} (a custom module has no declared "
            "structure to export)"
        )
    target = _checked_target(path, opset)

    # Export a float32 CPU copy in eval mode; the caller's model is left untouched.
    copy = SequenceModel(model.config)
    copy.load_state_dict({k: v.detach().cpu().float() for k, v in model.state_dict().items()})
    graph = _Graph(copy.eval()).eval()
    batch, steps = 2, 3
    x = torch.randn(batch, steps, model.input_size)
    example: list[torch.Tensor] = [x]
    batch_dim, time_dim = torch.export.Dim("batch"), torch.export.Dim("time")
    shapes: list[dict[int, Any]] = [{0: batch_dim, 1: time_dim}]
    if model.masks_input:
        example.append(torch.ones(batch, steps, dtype=torch.bool))
        shapes.append({0: batch_dim, 1: time_dim})
    for tensor in copy.initial_state(batch).tensors():
        example.append(tensor)
        shapes.append({1: batch_dim})
    inputs, outputs = onnx_input_names(model), onnx_output_names(model)
    with _exporter_noise(), torch.no_grad():
        program = torch.onnx.export(
            graph,
            tuple(example),
            dynamo=True,
            dynamic_shapes=(shapes[0], tuple(shapes[1:])),  # forward(x, *rest)
            input_names=inputs,
            output_names=outputs,
            opset_version=opset or DEFAULT_OPSET,
            verbose=False,
            optimize=False,  # after _forget_intermediate_shapes, below
        )
    if program is None:  # pragma: no cover - dynamo=True always returns a program
        raise RuntimeError("torch.onnx.export returned no program")
    _forget_intermediate_shapes(program.model.graph)
    program.optimize()
    proto = program.model_proto
    _declare_output_shapes(proto, copy, outputs)
    target.parent.mkdir(parents=True, exist_ok=True)  # (only once the graph is made)
    with atomic_path(target) as tmp:  # nothing is left behind when the check fails
        onnx.save(proto, str(tmp))
        onnx.checker.check_model(str(tmp))
    return target


def _checked_target(path: Any, opset: Any) -> Path:
    """``path`` as the file an export writes, and ``opset`` checked; nothing is created."""
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"path must be a str or os.PathLike; received {type(path).__name__}")
    if opset is not None:
        if not isinstance(opset, int) or isinstance(opset, bool):
            raise TypeError(
                f"opset must be an int in [18, 23] (or None for 18); received "
                f"{type(opset).__name__} {opset!r}"
            )
        if not 18 <= opset <= 23:
            raise ValueError(f"opset must be an int in [18, 23] (or None for 18); received {opset}")
    target = Path(path)
    if target.is_dir():
        raise ValueError(
            f"path {str(path)!r} is a directory; give the file to write, e.g. "
            f"{str(target / 'model.onnx')!r}"
        )
    return target


def _forget_intermediate_shapes(graph: Any) -> None:
    """Drop the shapes the exporter recorded on every value but the graph's inputs and outputs.

    torch's while-loop LSTM/GRU decomposition gives the layer's output the example's time length
    (3) in the traced metadata. With a second recurrent group after it, the optimizer folds
    ``Shape`` of that output into a constant and the reshape between the groups only accepts
    T=3. Without the recorded shapes the optimizer infers them from the graph's own dynamic
    inputs (``batch``, ``time``), so every T and B runs.
    """
    ends = {id(value) for value in (*graph.inputs, *graph.outputs)}
    for node in graph.all_nodes():
        for value in node.outputs:
            if id(value) not in ends:
                value.shape = None


def _declare_output_shapes(proto: Any, model: SequenceModel, names: list[str]) -> None:
    """Declare ``y [batch, time, O]`` and each state ``[layers, batch, H]`` on the outputs.

    The exporter can record the example's time length on outputs computed by ONNX's recurrent
    operators; onnxruntime then warns on every other length. Intermediate shape annotations
    are optional in ONNX and dropped for the same reason.
    """
    del proto.graph.value_info[:]
    state = model.initial_state(1).tensors()
    shapes: list[list[int | str]] = [["batch", "time", model.output_size]]
    shapes += [[t.shape[0], "batch", t.shape[2]] for t in state]
    by_name = {output.name: output for output in proto.graph.output}
    for name, shape in zip(names, shapes, strict=True):
        dims = by_name[name].type.tensor_type.shape.dim
        del dims[:]
        for value in shape:
            dim = dims.add()
            if isinstance(value, str):
                dim.dim_param = value
            else:
                dim.dim_value = value


# --- a whole run: raw inputs, the run's state explicit -----------------------------------------


class _MemberGraph(nn.Module):
    """Stands in for a run member's model while the run's step function is exported: the same
    ``model(x, state, mask=None) -> (y, state)`` call, computed by :class:`_Graph`."""

    def __init__(self, model: SequenceModel) -> None:
        super().__init__()
        self.graph = _Graph(model)
        self.state_type = model.state_type
        #: a distribution head's raw parameters ``[B, T, k * O]`` of the last call (the run
        #: graph outputs them beside y)
        self.last_parameters: torch.Tensor | None = None

    def forward(
        self, x: torch.Tensor, state: Any, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, Any]:
        model = self.graph.model
        padding = [torch.ones(x.shape[:2], dtype=torch.bool)] if model.masks_input else []
        outputs = self.graph(x, *padding, *state.tensors(), steps=mask)
        return outputs[0], self.state_type(*outputs[1:])

    def distribution_parameters(
        self, x: torch.Tensor, state: Any, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, Any]:
        """:meth:`seqstate.SequenceModel.distribution_parameters`, computed by the graph."""
        model = self.graph.model
        padding = [torch.ones(x.shape[:2], dtype=torch.bool)] if model.masks_input else []
        outputs = self.graph(x, *padding, *state.tensors(), steps=mask, raw=True)
        self.last_parameters = outputs[0]
        return outputs[0], self.state_type(*outputs[1:])

    def distribution(self, raw: torch.Tensor) -> Any:
        distribution = self.graph.model.distribution(raw)
        if distribution.head.name == "negbin":
            return _RecurrenceNegbin(distribution)
        return distribution


def _median(model: SequenceModel, raw: torch.Tensor) -> torch.Tensor:
    """The median of the distributions of a head's ``raw`` parameters, computed by ops ONNX
    has (a negative binomial's by :class:`_RecurrenceNegbin`)."""
    distribution = model.distribution(raw)
    if distribution.head.name == "negbin":
        return _RecurrenceNegbin(distribution).median()
    return distribution.median()


class _RecurrenceNegbin:
    """A negative binomial head's distribution whose median the graph can compute: the pmf
    by its recurrence in float64 (``negbin_quantiles_by_recurrence``), over counts up to a
    bound the graph computes from its rows (an ONNX ``Range``), where ``predict`` sums it
    through ``lgamma``, which ONNX has no operator for."""

    def __init__(self, distribution: Any) -> None:
        self.distribution = distribution

    def median(self) -> torch.Tensor:
        params = self.distribution.params
        levels = [0.5]
        return negbin_quantiles_by_recurrence(params["mean"], params["dispersion"], levels)[..., 0]


def run_onnx_names(function: Any) -> tuple[list[str], list[str]]:
    """``(inputs, outputs)`` of a run's graph (:func:`export_run_onnx`): ``x``, ``time`` where
    the run reads calendar features, then the state: every transform tensor under its name
    (``steps``, ``time_last``, ``m0.history``, ``m0.location`` ...) and each member's model
    state (``m0.h0``, ``m0.c0``, ...); outputs ``y`` and the same state names with ``1``
    for ``0`` (transforms: a ``_next`` suffix)."""
    template = function.initial_state([_any_series(function)])
    inputs = ["x", *(["time"] if function.needs_time else [])]
    outputs = ["y"]
    for name in template.transforms:
        shown = "time_last" if name == "time" else name
        inputs.append(shown)
        outputs.append(f"{shown}_next")
    for k, member in enumerate(function.members):
        model = member.model
        inputs += [f"m{k}.{n}" for n in _state_names(model, "0")]
        outputs += [f"m{k}.{n}" for n in _state_names(model, "1")]
    outputs += [
        f"m{k}.distribution_parameters"
        for k, member in enumerate(function.members)
        if member.head is not None
    ]
    return inputs, outputs


def _any_series(function: Any) -> Any:
    for member in function.members:
        scaling = member.scaling
        if scaling is not None and scaling.config.method == "series" and len(scaling.ids):
            return scaling.ids[0]
    return None


class _RunGraph(nn.Module):
    """The run's step function over explicit tensors: ``(x, [time], *state) -> (y, *state)``."""

    def __init__(
        self, function: Any, names: list[str], sizes: list[int], blend: nn.Module | None
    ) -> None:
        super().__init__()
        self.function = function
        self.names = names  # the transform tensors' names, in order
        self.sizes = sizes  # model state tensors per member
        self.blend = blend  # the selection's baselines in torch (BlendCell), or None

    def forward(self, x: torch.Tensor, *rest: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from seqstate.recipe.step import RunState

        time: torch.Tensor | None = None
        if self.function.needs_time:
            time, rest = rest[0], rest[1:]
        transforms = dict(zip(self.names, rest[: len(self.names)], strict=True))
        flat = rest[len(self.names) :]
        models, start = [], 0
        for member, size in zip(self.function.members, self.sizes, strict=True):
            models.append(member.model.state_type(*flat[start : start + size]))
            start += size
        state = RunState.unchecked(transforms, tuple(models))
        members, new = self.function.forward(state, x, time)
        y = members.mean(dim=0)  # (B, T, O) float64, raw units
        stepped = dict(new.transforms)
        if self.blend is not None:
            # the baselines validation chose, stepped beside the network and combined
            y, baselines = self.blend(state.transforms, x, y)
            stepped |= baselines
        scale = self.function.history_scale
        if scale is not None and self.function.columns.shift == 1:
            # a stream whose history never varied answers its last value, as predict does
            y = scale.hold_flat_graph(state.transforms, x, y)
        # a tensor the step leaves as it is (the series' statistics) is still its own output
        tensors = [
            stepped[name].clone() if stepped[name] is state.transforms[name] else stepped[name]
            for name in self.names
        ]
        for model_state in new.models:
            tensors += list(model_state.tensors())
        for member in self.function.members:
            if member.head is not None:
                tensors.append(member.model.last_parameters)
        return (y, *tensors)


def _declare_time_axis(proto: Any, names: list[str]) -> None:
    """Declare the outputs ``names`` ``[batch, time, ...]``: a ``Scan`` over steps (a
    baseline's recurrence) can leave the example's time length on them, and onnxruntime
    then warns on every other length."""
    by_name = {output.name: output for output in proto.graph.output}
    for name in names:
        dims = by_name[name].type.tensor_type.shape.dim
        for dim, label in zip(dims, ("batch", "time"), strict=False):
            dim.Clear()
            dim.dim_param = label


def export_run_onnx(
    run_dir: str | os.PathLike[str],
    path: str | os.PathLike[str],
    *,
    opset: int | None = None,
) -> Path:
    """Write a whole run (``seqstate train``'s run directory) as one ONNX graph: raw inputs in,
    raw answers out, every piece of the run's state an explicit input and output.

    The graph is the run's step function (:class:`seqstate.recipe.step.RunStep`), the one
    ``seqstate predict`` runs::

        inputs   x     [B, T, F_raw] float32  the run's raw input columns, in order
                 time  [B, T] int64           Unix seconds (only where calendar features are used)
                 the run's state, named by run_onnx_names(): transform tensors [B, ...] (step
                 count, last time, each member's history per lag, series statistics) and each
                 member's model state [L, B, H]
        outputs  y     [B, T, O] float64      raw units (the members' mean); NaN during a
                                              differenced stream's first D steps
                 the new state, in the same order -> the next chunk's state inputs
                 m<k>.distribution_parameters [B, T, P] float32   (a member with a distribution
                                              head) its raw parameters at every step, in model
                                              space: ``model.distribution(raw)`` maps them

    A stream's first state is ``Run.load(run_dir).step_function().initial_state([series])``
    (its tensors in that order): the series' statistics are bound there. B and T are dynamic.
    A run with an interval table carries its streams' MASE scale in the state
    (``interval.lag_sum``, ``interval.one_sum``, ``interval.last``): the calibrated quantiles
    are arithmetic on ``y`` and those, outside the graph (docs/cli.md). A run whose validation
    chose baselines answers with the same combination as ``predict``: each baseline's state is
    in the run state (``baseline.<name>.<field>``), stepped by its torch form
    (:mod:`seqstate.recipe.step.baseline_cells`). A negative binomial head's median is the
    pmf summed by its recurrence in float64 over counts up to the call's largest mean + 12 sd
    (``seqstate.core.distributions.negbin_quantiles_by_recurrence``; ONNX has no ``lgamma``,
    which ``predict``'s form uses, also in float64): the exact median, ``predict``'s.

    Returns:
        ``path``.
    """
    import copy

    onnx = _onnx_module()
    from seqstate.recipe.run import Run
    from seqstate.recipe.step.baseline_cells import BlendCell

    if not isinstance(run_dir, str | os.PathLike):
        raise TypeError(f"run_dir must be a run directory path; received {type(run_dir).__name__}")
    target = _checked_target(path, opset)
    function = copy.deepcopy(Run.load(Path(run_dir)).step_function()).cpu().eval()
    blend = None
    if function.blend is not None:
        weights = dict(function.blend.weights)
        targets = [function.inputs.index(t) for t in function.targets]
        blend = BlendCell(weights, targets, combines=function.columns.shift == 1)
    inputs, outputs = run_onnx_names(function)
    template = function.initial_state([_any_series(function)] * 2)
    names = list(template.transforms)
    sizes = [len(s.tensors()) for s in template.models]
    for member in function.members:
        member.model = _MemberGraph(member.model.float().eval())
    graph = _RunGraph(function, names, sizes, blend).eval()
    batch, steps = 2, 3
    batch_dim, time_dim = torch.export.Dim("batch"), torch.export.Dim("time")
    example: list[torch.Tensor] = [torch.rand(batch, steps, len(function.inputs)) + 1.0]
    shapes: list[dict[int, Any]] = [{0: batch_dim, 1: time_dim}]
    if function.needs_time:
        example.append(1_700_000_000 + 3600 * torch.arange(steps).repeat(batch, 1))
        shapes.append({0: batch_dim, 1: time_dim})
    for name in names:
        example.append(template.transforms[name])
        shapes.append({0: batch_dim})
    for model_state in template.models:
        for tensor in model_state.tensors():
            example.append(tensor)
            shapes.append({1: batch_dim})
    with _exporter_noise(), torch.no_grad():
        program = torch.onnx.export(
            graph,
            tuple(example),
            dynamo=True,
            dynamic_shapes=(shapes[0], tuple(shapes[1:])),
            input_names=inputs,
            output_names=outputs,
            opset_version=opset or DEFAULT_OPSET,
            verbose=False,
            optimize=False,
        )
    if program is None:  # pragma: no cover - dynamo=True always returns a program
        raise RuntimeError("torch.onnx.export returned no program")
    _forget_intermediate_shapes(program.model.graph)
    program.optimize()
    proto = program.model_proto
    # intermediate shapes are optional in ONNX; the optimizer's can carry the example's time
    # length (3) where a member's head meets a data-dependent count (a negative binomial
    # median), and onnxruntime then warns on every other length
    del proto.graph.value_info[:]
    _declare_time_axis(
        proto, [n for n in outputs if n == "y" or n.endswith(".distribution_parameters")]
    )
    target.parent.mkdir(parents=True, exist_ok=True)  # (only once the graph is made)
    with atomic_path(target) as tmp:
        onnx.save(proto, str(tmp))
        onnx.checker.check_model(str(tmp))
    return target
