"""SequenceModel: any stack of recurrent layers and a Dense head, from a versioned JSON config.

The model follows the same protocol as the layers, so every driver (fit, predict, forecast,
Streams, the server, ONNX export) works with it — and with any user module that has these two
methods::

    y, state = model(x, state=None, reset=None, mask=None)   # x [B, T, F] -> y [B, T, O]
    state = model.initial_state(batch_size)

A stack is a list of :class:`RecurrentSpec` (each layer its own kind, size and variant), an
optional ``mask_value`` (Keras's ``Masking``: a step whose features all equal it is padding) and
a head of :class:`DenseSpec` layers (the config and its JSON format live in
:mod:`seqstate.core.model_config`; they are importable from here too). ``SequenceModel(
input_size=3, output_size=1, cell="gru", hidden_size=32, num_layers=2)`` is shorthand for two
equal GRU layers and one linear output.

How a stack runs: consecutive layers that torch's fused kernel computes and that share kind,
size and activation form one multi-layer fused layer (core/layers.py); any other variant
runs exactly step by step (:mod:`seqstate.core.stepwise`). :meth:`SequenceModel.describe` says which
layer runs where. The state is that of the fused layer when there is one group
(``LSTMState``/``GRUState``/``RNNState`` ``[L, B, H]``, as before stacks existed), otherwise
a ``StackState[...]`` with one ``[1, B, H_i]`` field per layer state (``l0_hidden``, ...).

The model maps *raw* inputs to *raw* outputs: optional normalisation statistics live in the
model as buffers (saved with the weights), so prediction, forecasting (which feeds outputs
back as inputs), streaming, serving and export never need a separate preprocessing step.
Training computes the loss in the normalised target space (:meth:`normalize_targets`) so the
loss scale and gradient clipping do not depend on the data's units.

A model with a distribution head (``ModelConfig.distribution``) still maps raw inputs to raw
outputs ``[B, T, O]``: each output is its distribution's median, so every driver gets the point
forecast. :meth:`SequenceModel.distribution_parameters` returns the head's ``k * O`` raw
parameters ``[B, T, k * O]`` (what training's NLL reads) and :meth:`SequenceModel.distribution`
turns them into the distribution of each output in raw units
(:mod:`seqstate.core.distributions`).
"""

from __future__ import annotations

import reprlib
import weakref
from collections.abc import Mapping
from typing import Any, cast

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from seqstate._validate import check_flags
from seqstate.core.activations import ACTIVATIONS
from seqstate.core.activations import activation as activation_function
from seqstate.core.cells import CELLS
from seqstate.core.distributions import OutputDistribution
from seqstate.core.layers import GRU, LSTM, RNN
from seqstate.core.model_config import CONFIG_VERSION, DenseSpec, ModelConfig, RecurrentSpec
from seqstate.core.state import State, stack_state_type
from seqstate.core.stepwise import StepwiseLayer
from seqstate.core.timeline import Timeline, check_timeline

__all__ = ["CONFIG_VERSION", "DenseSpec", "ModelConfig", "RecurrentSpec", "SequenceModel"]

# Each kind's layer is the seqstate layer built on that kind's torch module (cells.CELLS).
_FUSED_LAYERS: dict[str, type[LSTM] | type[GRU] | type[RNN]] = {
    name: next(layer for layer in (LSTM, GRU, RNN) if issubclass(layer, cell.torch_module))
    for name, cell in CELLS.items()
}


class SequenceModel(nn.Module):
    """Recurrent stack + Dense head: ``x [B, T, F] -> y [B, T, O]``, state carried explicitly.

    Args:
        config: a :class:`ModelConfig`; or pass its arguments as keyword arguments.

    Outputs at masked steps are zero. For classification ``y`` holds logits over
    ``output_size`` classes.
    """

    recurrent: nn.Module  # one group's module, or an nn.ModuleList of groups
    head: nn.Module  # one nn.Linear, or an nn.ModuleList of them
    input_shift: torch.Tensor
    input_scale: torch.Tensor
    output_shift: torch.Tensor
    output_scale: torch.Tensor

    def __init__(self, config: ModelConfig | None = None, **fields: Any) -> None:
        super().__init__()
        if config is None:
            config = ModelConfig(**fields)
        elif fields:
            if not isinstance(config, ModelConfig):
                raise TypeError(f"config must be a ModelConfig; received {type(config).__name__}")
            config = config.replace(**fields)
        if not isinstance(config, ModelConfig):
            raise TypeError(f"config must be a ModelConfig; received {type(config).__name__}")
        self.config = config
        groups: list[nn.Module] = []
        width = config.input_size
        for first, end in config.groups():
            spec = config.layers[first]
            groups.append(_group_module(spec, width, end - first, config.dropout))
            width = spec.hidden_size
        linears: list[nn.Module] = []
        for dense in config.head:
            linears.append(nn.Linear(width, dense.units))
            width = dense.units
        # One group / one head layer are registered as the module itself, not a list of one, so
        # the parameter names (recurrent.weight_ih_l0, head.weight) stay those of the models and
        # run directories written before stacks existed.
        self.recurrent = groups[0] if len(groups) == 1 else nn.ModuleList(groups)
        self.head = linears[0] if len(linears) == 1 else nn.ModuleList(linears)
        self._head_activations = [activation_function(dense.activation) for dense in config.head]
        # (linear, activation) per head layer, read once: forward runs on every streamed step
        self._head_pairs = tuple(zip(linears, self._head_activations, strict=True))
        # What _trusted_step runs, with the forward each module must still have for it to be
        # exact (_steps_directly checks them: an override or a hook sends steps to forward).
        # (a plain attribute, not a second registration of the submodule: state_dict keys)
        object.__setattr__(self, "_step_recurrent", self.recurrent)
        self._step_groups: tuple[Any, ...] = tuple(groups)
        self._step_plan = (
            (self, SequenceModel.forward),
            *((group, type(group).forward) for group in groups),
            *((linear, nn.Linear.forward) for linear in linears),
        )
        # what _steps_directly keeps between calls (a copy starts afresh)
        self._step_check = _StepCheck()
        if len(groups) == 1:
            self._state_type: type[State] = getattr(groups[0], "state_type")  # noqa: B009
        else:
            self._state_type = stack_state_type(
                tuple(
                    (f"l{index}_{name}", layer.hidden_size)
                    for index, layer in enumerate(config.layers)
                    for name in CELLS[layer.kind].state_fields
                )
            )
        # Normalisation (identity until set_normalization): raw x -> (x - shift) / scale,
        # head output -> output * scale + shift for regression.
        self.register_buffer("input_shift", torch.zeros(config.input_size))
        self.register_buffer("input_scale", torch.ones(config.input_size))
        self.register_buffer("output_shift", torch.zeros(config.output_size))
        self.register_buffer("output_scale", torch.ones(config.output_size))

    @property
    def groups(self) -> list[Any]:
        """The recurrent modules in order: fused multi-layer layers and step-by-step layers."""
        return (
            list(self.recurrent) if isinstance(self.recurrent, nn.ModuleList) else [self.recurrent]
        )

    @property
    def dense_layers(self) -> list[nn.Linear]:
        """The head's linear maps in order (each followed by its activation)."""
        if isinstance(self.head, nn.ModuleList):
            return [cast(nn.Linear, linear) for linear in self.head]
        return [cast(nn.Linear, self.head)]

    @property
    def state_type(self) -> type[State]:
        return self._state_type

    @property
    def input_size(self) -> int:
        return self.config.input_size

    @property
    def output_size(self) -> int:
        return self.config.output_size

    @property
    def masks_input(self) -> bool:
        """The model derives padding from its input (``mask_value``), like Keras's Masking."""
        return self.config.mask_value is not None

    def describe(self) -> str:
        """One line per layer: what it computes and whether a fused kernel or the exact
        step-by-step path runs it."""
        config = self.config
        lines = [f"SequenceModel: {config.input_size} features -> {config.output_size} outputs"]
        if config.mask_value is not None:
            lines.append(
                f"  masking: a step whose features all equal {config.mask_value} is padding"
            )
        for (first, end), module in zip(config.groups(), self.groups, strict=True):
            for index in range(first, end):
                spec = config.layers[index]
                if isinstance(module, StepwiseLayer):
                    path = "step-by-step path (torch has no fused kernel for this variant)"
                else:
                    kernel = CELLS[spec.kind].torch_module.__name__
                    shared = f", one call with layers {first}-{end - 1}" if end - first > 1 else ""
                    path = f"fused kernel (torch.nn.{kernel}{shared})"
                lines.append(f"  layer {index}: {spec.describe()}: {path}")
        head = " -> ".join(f"Dense({d.units}, {d.activation})" for d in config.head)
        lines.append(f"  head: {head}")
        if config.distribution is not None:
            lines.append(
                f"  distribution: {config.distribution.name} "
                f"({config.distribution.parameter_count} parameters per output; outputs are "
                "medians)"
            )
        return "\n".join(lines)

    def initial_state(
        self,
        batch_size: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> State:
        """Zero state: ``[num_layers, B, H]`` per field for one group, else ``[1, B, H_i]``."""
        states = [
            group.initial_state(batch_size, device=device, dtype=dtype) for group in self.groups
        ]
        if len(states) == 1:
            return states[0]
        return self._state_type(*_split_layers(states))

    def group_states(self, state: State) -> list[State]:
        """The model's state cut into one state per group (``[layers_in_group, B, H]``)."""
        if len(self.groups) == 1:
            return [state]
        if type(state) is not self._state_type:
            raise TypeError(
                f"SequenceModel.group_states: state must be a {self._state_type.__name__}; "
                f"received {type(state).__name__}"
            )
        return _group_states(self, state)

    def join_states(self, states: list[State]) -> State:
        """Inverse of :meth:`group_states`."""
        return states[0] if len(states) == 1 else self._state_type(*_split_layers(states))

    def forward(
        self,
        x: torch.Tensor,
        state: State | None = None,
        reset: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        *,
        timeline: Timeline | None = None,
    ) -> tuple[torch.Tensor, State]:
        """``x`` [B, T, F] raw inputs -> ``y`` [B, T, O] raw outputs (or logits), new state.

        ``timeline``: the window's :class:`~seqstate.core.timeline.Timeline` of these
        ``reset`` and ``mask`` (``Window.timeline``), handed to every layer so that none plans
        the window again; optional (ignored when the model derives its mask from x)."""
        if self.config.distribution is not None:
            raw, state, mask = self._head_outputs(x, state, reset, mask, timeline)
            y = self.distribution(raw).median()
            if mask is not None:
                y = torch.where(mask.to(y.device).bool()[..., None], y, y.new_zeros(()))
            return y, state
        y, state, mask = self._head_outputs(x, state, reset, mask, timeline)
        buffers = _tensor_buffers(self)
        skip_output = False if torch.compiler.is_compiling() else self._identity_normalisation()[1]
        if self.config.task == "regression" and not (
            skip_output and _same_kind(y, buffers["output_scale"])
        ):
            y = y * buffers["output_scale"] + buffers["output_shift"]
        if mask is not None:
            y = torch.where(mask.to(y.device).bool()[..., None], y, y.new_zeros(()))
        return y, state

    def distribution_parameters(
        self,
        x: torch.Tensor,
        state: State | None = None,
        reset: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        *,
        timeline: Timeline | None = None,
    ) -> tuple[torch.Tensor, State]:
        """``x`` [B, T, F] raw inputs -> the head's raw parameters [B, T, k * O] (before the
        constraint maps and the target normalisation; zero at masked steps), new state.

        For a point model these are its outputs in the normalised space. ``timeline`` as in
        :meth:`forward`."""
        raw, state, mask = self._head_outputs(x, state, reset, mask, timeline)
        if mask is not None:
            raw = torch.where(mask.to(raw.device).bool()[..., None], raw, raw.new_zeros(()))
        return raw, state

    def distribution(self, raw: torch.Tensor) -> OutputDistribution:
        """Raw parameters [..., k * O] (from :meth:`distribution_parameters`) -> the
        distribution of each output in raw units, batch shape [..., O]."""
        head = self.config.distribution
        if head is None:
            raise ValueError(
                "SequenceModel.distribution: this model has no distribution head (it was built "
                "with ModelConfig.distribution=None); build it with distribution='studentt' etc."
            )
        buffers = _tensor_buffers(self)
        return head.distribution(raw, buffers["output_shift"], buffers["output_scale"])

    def distribution_loss(self, raw: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-element training loss [B, T, O] of raw parameters [B, T, k * O] against raw
        targets [B, T, O], in the normalised space (:mod:`seqstate.core.distributions`)."""
        head = self.config.distribution
        if head is None:
            raise ValueError("SequenceModel.distribution_loss: this model has no distribution head")
        buffers = _tensor_buffers(self)
        return head.normalized_loss(raw, target, buffers["output_shift"], buffers["output_scale"])

    def _head_outputs(
        self,
        x: torch.Tensor,
        state: State | None,
        reset: torch.Tensor | None,
        mask: torch.Tensor | None,
        timeline: Timeline | None = None,
    ) -> tuple[torch.Tensor, State, torch.Tensor | None]:
        """The stack and the head, before the output normalisation: (head output [B, T, units],
        new state, the mask in effect)."""
        valid_x = isinstance(x, torch.Tensor) and x.dim() == 3 and x.shape[-1] == self.input_size
        if valid_x and self.config.mask_value is not None:
            # Keras's Masking, on the raw input: padding is a step whose features all equal it.
            derived = (x != self.config.mask_value).any(dim=-1)  # (B, T)
            if mask is not None:
                # the layers' own check of a mask: a bool (or 0/1) tensor [B, T]
                B, T = derived.shape
                given = check_flags(mask, "mask", B, T, derived.device)
                derived = derived & cast(torch.Tensor, given)
            mask = derived
            check_timeline(timeline, "SequenceModel")
            timeline = None  # (the plan of the given flags, not of the derived mask)
        # (traced for export or compilation: the plain ops, no data-dependent check)
        skip_input = False if torch.compiler.is_compiling() else self._identity_normalisation()[0]
        buffers = _tensor_buffers(self)
        if valid_x and not (skip_input and _same_kind(x, buffers["input_shift"])):
            x = (x - buffers["input_shift"]) / buffers["input_scale"]
        recurrent = self._modules["recurrent"]  # (not nn.Module's slower __getattr__)
        if recurrent is not None and not isinstance(recurrent, nn.ModuleList):
            hidden, state = recurrent(x, state, reset, mask, timeline=timeline)
        else:
            hidden, state = self._run_stack(x, state, reset, mask, timeline)
        # The head runs on [B, T, H] even for one step: slicing to [B, H] and back costs more
        # than it saves (benchmarks/predict.py, measured).
        y = hidden
        for linear, act in self._head_pairs:
            y = linear(y) if act is _IDENTITY else act(linear(y))  # (B, T, units)
        return y, state, mask

    # --- one trusted step (the streaming hot path) ------------------------------------------

    def _steps_directly(self) -> bool:
        """Whether :meth:`_trusted_step` computes exactly what ``forward`` would for this model
        now: not when forward is overridden or hooked anywhere (hooks must see the call), not
        for a model that derives masks from its input, not while traced for export.

        The hooks are looked at only after one was registered somewhere: torch numbers every
        registration (a module's forward hook or pre-hook, a global one) with the next
        ``RemovableHandle.next_id``, so while that counter is where it was when this model
        last had none, none was added (removing one only takes one away). The rest is tested
        on every call (an override is a plain attribute, which nothing counts), on the
        modules' attribute dicts kept by :class:`_StepCheck` (reading them through
        ``nn.Module``'s attribute lookup cost more than the tests).
        """
        if torch.compiler.is_compiling():
            return False
        check: _StepCheck = self._step_check
        if check.unhooked_at != RemovableHandle.next_id and not self._unhooked(check):
            return False
        namespace = check.namespace  # (the model's __dict__)
        config = namespace["config"]
        if config.mask_value is not None or config.distribution is not None:
            return False  # (the median of a distribution head goes through forward)
        if namespace["_modules"]["recurrent"] is not namespace["_step_recurrent"]:
            return False
        for module_namespace, module, forward in check.plan:
            if "forward" in module_namespace or type(module).forward is not forward:
                return False
        return True

    def _unhooked(self, check: _StepCheck) -> bool:
        """Whether no forward hook or pre-hook is registered on a module the trusted step runs
        or globally; when none is, ``check`` notes the registration counter (and the attribute
        dicts) for :meth:`_steps_directly`."""
        next_id = RemovableHandle.next_id  # (read first: a hook added meanwhile gets a later id)
        if _GLOBAL_HOOKS[0] or _GLOBAL_HOOKS[1]:
            return False
        for module, _ in self._step_plan:
            if module._forward_hooks or module._forward_pre_hooks:
                return False
        check.namespace = self.__dict__
        check.plan = tuple((module.__dict__, module, fn) for module, fn in self._step_plan)
        check.unhooked_at = next_id
        return True

    def _trusted_step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """One step ``x`` [B, F] -> ``y`` [B, O], new state: ``forward(x[:, None], state)``
        with ``[:, 0]`` taken, bitwise, without its checks and module calls.

        Trusted: the caller (:func:`seqstate.advance`, ``Streams.step``) has validated ``x``
        and ``state`` against the model, runs it in eval mode without autograd, and asked
        :meth:`_steps_directly` first. Each fused layer runs its cell kernels directly
        (:meth:`seqstate.core.layers.LSTM._step`), a step-by-step layer its cell.
        """
        skip_input, skip_output = self._identity_normalisation()
        buffers = _tensor_buffers(self)
        if not (skip_input and _same_kind(x, buffers["input_shift"])):
            x = (x - buffers["input_shift"]) / buffers["input_scale"]
        groups = self._step_groups
        if len(groups) == 1:
            hidden, state = groups[0]._step(x, state)
        else:
            hidden = x
            outputs = []
            for group, group_state in zip(groups, _group_states(self, state), strict=True):
                hidden, new_state = group._step(hidden, group_state)  # eval: no dropout
                outputs.append(new_state)
            state = self._state_type._unchecked(*_split_layers(outputs))
        y = hidden
        for linear, act in self._head_pairs:
            y = linear.forward(y) if act is _IDENTITY else act(linear.forward(y))  # (B, units)
        if self.config.task == "regression" and not (
            skip_output and _same_kind(y, buffers["output_scale"])
        ):
            y = y * buffers["output_scale"] + buffers["output_shift"]
        return y, state

    def _identity_normalisation(self) -> tuple[bool, bool]:
        """(input, output): whether the normalisation buffers hold the identity (shift 0, scale
        1), which ``forward`` then skips (``(x - 0) / 1 == x`` exactly).

        Cached against the buffers' identity and version counters, so any change (
        :meth:`set_normalization`, ``load_state_dict``, an in-place write, ``.to()``) is seen
        without comparing values on every call.
        """
        buffers = _tensor_buffers(self)
        tensors = (
            buffers["input_shift"],
            buffers["input_scale"],
            buffers["output_shift"],
            buffers["output_scale"],
        )
        try:
            versions = [t._version for t in tensors]
        except RuntimeError:  # inference-mode tensors have no version counter: compare values
            return _identity_pair(tensors)
        cached = _NORMALISATION_CACHE.get(self)
        if cached is not None:
            kept, cached_versions, result = cached
            if (
                cached_versions == versions
                and kept[0] is tensors[0]
                and kept[1] is tensors[1]
                and kept[2] is tensors[2]
                and kept[3] is tensors[3]
            ):
                return result
        result = _identity_pair(tensors)
        # the buffers themselves, not weak references: this runs on every streaming step, and
        # a kept tensor cannot be matched by a new one at its address (a replaced buffer of a
        # few values stays alive until the next call)
        _NORMALISATION_CACHE[self] = (tensors, versions, result)
        return result

    def _run_stack(
        self,
        x: torch.Tensor,
        state: State | None,
        reset: torch.Tensor | None,
        mask: torch.Tensor | None,
        timeline: Timeline | None = None,
    ) -> tuple[torch.Tensor, State]:
        """The groups in order, each with its slice of a ``StackState`` (and the window's
        ``timeline``, the same for every group)."""
        if state is None:
            if not isinstance(x, torch.Tensor) or x.dim() != 3:
                states: list[State | None] = [None] * len(self.groups)
            else:
                states = list(_group_states(self, self.initial_state(x.shape[0], dtype=x.dtype)))
        elif type(state) is not self._state_type:
            raise TypeError(
                f"SequenceModel: state must be a {self._state_type.__name__} (or None for zeros); "
                f"received {type(state).__name__}; use model.initial_state(batch_size)"
            )
        else:
            states = list(_group_states(self, state))
        outputs = []
        hidden = x
        for index, (group, group_state) in enumerate(zip(self.groups, states, strict=True)):
            if index > 0 and self.config.dropout > 0:
                hidden = nn.functional.dropout(hidden, self.config.dropout, self.training)
            hidden, new_state = group(hidden, group_state, reset, mask, timeline=timeline)
            outputs.append(new_state)
        return hidden, self._state_type._unchecked(*_split_layers(outputs))

    # --- normalisation ----------------------------------------------------------------------

    @torch.no_grad()
    def set_normalization(
        self,
        input_mean: Any,
        input_std: Any,
        output_mean: Any = None,
        output_std: Any = None,
    ) -> None:
        """Store normalisation statistics (per feature / per output) in the model's buffers.

        Each is a number per feature / output (a list, array or tensor). A zero or non-finite
        std is replaced by 1 (a constant feature carries no scale); a negative one is refused.
        ``output_mean`` and ``output_std`` come together (regression only). Everything is
        checked before any buffer changes.
        """
        pairs = [("input", input_mean, input_std, self.input_size)]
        if (output_mean is None) != (output_std is None):
            missing = "output_std" if output_std is None else "output_mean"
            raise ValueError(
                "output_mean and output_std must be given together (or both left out); "
                f"received {missing}=None with the other given. Pass both, or neither to keep "
                "the outputs unscaled"
            )
        if output_mean is not None:
            if self.config.task != "regression":
                raise ValueError(
                    "output_mean and output_std apply to regression models only; this model's "
                    f"task is {self.config.task!r}: leave them out"
                )
            pairs.append(("output", output_mean, output_std, self.output_size))
        checked = []
        for prefix, mean, std, size in pairs:
            mean_t = _statistic(mean, f"{prefix}_mean", size)
            std_t = _statistic(std, f"{prefix}_std", size)
            if not torch.isfinite(mean_t).all():
                raise ValueError(
                    f"{prefix}_mean must be finite; received {mean_t.tolist()}. Compute it over "
                    "the training data without missing values"
                )
            if (torch.isfinite(std_t) & (std_t < 0)).any():  # (non-finite: documented as 1)
                raise ValueError(
                    f"{prefix}_std must be >= 0 (a standard deviation); received "
                    f"{std_t.tolist()}. Pass the spread itself (e.g. x.std(axis=0))"
                )
            std_t = torch.where(torch.isfinite(std_t) & (std_t > 0), std_t, 1.0)
            checked.append((prefix, mean_t, std_t))
        for prefix, mean_t, std_t in checked:  # (all checked: now change the buffers)
            shift, scale = getattr(self, f"{prefix}_shift"), getattr(self, f"{prefix}_scale")
            shift.copy_(mean_t.to(shift.dtype))
            scale.copy_(std_t.to(scale.dtype))

    def normalize_targets(self, y: torch.Tensor) -> torch.Tensor:
        """Map raw regression targets/outputs into the space the loss is computed in (``y``
        itself while the output normalisation is the identity: ``(y - 0) / 1 == y`` exactly,
        as :meth:`forward` skips it; the training loop calls this twice per window)."""
        if self.config.task != "regression":
            return y
        buffers = _tensor_buffers(self)
        scale = buffers["output_scale"]
        if (
            not torch.compiler.is_compiling()
            and self._identity_normalisation()[1]
            and _same_kind(y, scale)
        ):
            return y
        return (y - buffers["output_shift"]) / scale

    def extra_repr(self) -> str:
        extra = (
            f", mask_value={self.config.mask_value}" if self.config.mask_value is not None else ""
        )
        return f"task={self.config.task}{extra}"


_IDENTITY = ACTIVATIONS["linear"]

# torch's global forward hooks (nn.modules.module.register_module_forward_(pre_)hook): while any
# is registered, steps go through forward so that the hooks see them.
_GLOBAL_HOOKS = (
    nn.modules.module._global_forward_pre_hooks,
    nn.modules.module._global_forward_hooks,
)


class _StepCheck:
    """What :meth:`SequenceModel._steps_directly` keeps: ``RemovableHandle.next_id`` when the
    model was last seen without forward hooks (-1: not yet), and the attribute dicts of the
    model and of the modules the trusted step runs, read then. A copy or an unpickled model
    gets a fresh one: the counter is this process's, and the dicts are the original's."""

    __slots__ = ("namespace", "plan", "unhooked_at")

    def __init__(self) -> None:
        self.unhooked_at = -1
        self.namespace: dict[str, Any] = {}
        self.plan: tuple[tuple[dict[str, Any], nn.Module, Any], ...] = ()

    def __reduce__(self) -> tuple[type[_StepCheck], tuple[()]]:
        return (_StepCheck, ())


# model -> (its four normalisation buffers, their versions, the result of
# SequenceModel._identity_normalisation). Outside the model, so it neither pickles nor travels
# with a deepcopy.
_NORMALISATION_CACHE: weakref.WeakKeyDictionary[nn.Module, Any] = weakref.WeakKeyDictionary()


def _identity_pair(tensors: tuple[Any, ...]) -> tuple[bool, bool]:
    """(input, output) normalisation is the identity, from the four buffers' values."""
    input_shift, input_scale, output_shift, output_scale = tensors
    return (
        bool((input_shift == 0).all() and (input_scale == 1).all()),
        bool((output_shift == 0).all() and (output_scale == 1).all()),
    )


def _statistic(value: Any, name: str, size: int) -> torch.Tensor:
    """A normalisation statistic (a number, list, array or tensor) as ``size`` float64s."""
    if value is None or isinstance(value, str | bytes | Mapping):
        tensor = None
    else:
        try:
            tensor = torch.as_tensor(value, dtype=torch.float64).flatten()
        except (TypeError, ValueError, RuntimeError):  # (strings in a list, ragged lists, ...)
            tensor = None
    if tensor is None:
        raise TypeError(
            f"{name} must be {size} numbers (a list, NumPy array or tensor); received "
            f"{type(value).__name__} {reprlib.repr(value)}"
        )
    if tensor.numel() != size:
        raise ValueError(
            f"{name} must have {size} values (one per {name.partition('_')[0]} column); "
            f"received {tensor.numel()}"
        )
    return tensor


def _tensor_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """The module's buffer dict, read directly (faster than ``nn.Module.__getattr__`` on the hot
    path). torch types it ``Tensor | None``; the normalisation buffers are always registered."""
    return cast("dict[str, torch.Tensor]", model._buffers)


def _same_kind(x: torch.Tensor, buffer: torch.Tensor) -> bool:
    """Skipping an identity normalisation leaves ``x`` exactly as computing it would, dtype
    (type promotion) and device included."""
    return x.dtype == buffer.dtype and x.device == buffer.device


def _group_module(spec: RecurrentSpec, input_size: int, count: int, dropout: float) -> nn.Module:
    """One fused multi-layer module, or one step-by-step layer (``count`` is then 1)."""
    if not spec.fused:
        return StepwiseLayer(
            spec.kind,
            input_size,
            spec.hidden_size,
            activation=spec.activation,
            recurrent_activation=spec.recurrent_activation,
            reset_after=spec.reset_after,
        )
    extra: dict[str, Any] = {"nonlinearity": spec.activation} if spec.kind == "rnn" else {}
    return _FUSED_LAYERS[spec.kind](
        input_size, spec.hidden_size, count, dropout=dropout if count > 1 else 0.0, **extra
    )


def _group_states(model: SequenceModel, state: State) -> list[State]:
    """A ``StackState`` cut into each group's own state (``[layers_in_group, B, H]``)."""
    tensors = iter(state.tensors())
    states = []
    for (first, end), group in zip(model.config.groups(), model.groups, strict=True):
        fields = group.state_type.field_names()
        per_layer = [[next(tensors) for _ in fields] for _ in range(first, end)]
        if len(per_layer) == 1:  # a group of one layer: its [1, B, H] fields as they are
            states.append(group.state_type._unchecked(*per_layer[0]))
        else:
            parts = zip(*per_layer, strict=True)
            states.append(group.state_type._unchecked(*(torch.cat(part) for part in parts)))
    return states


def _split_layers(states: list[State]) -> list[torch.Tensor]:
    """Group states -> the ``StackState`` fields in order: each layer's tensors ``[1, B, H]``."""
    tensors: list[torch.Tensor] = []
    for state in states:
        for layer in range(state.num_layers):
            tensors += [t[layer : layer + 1] for t in state.tensors()]
    return tensors
