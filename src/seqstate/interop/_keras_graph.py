"""A saved Keras model's layers in call order: Sequential lists, functional graphs walked.

Only the model's JSON config is read. A functional model must be a chain (each layer called
once, on the previous layer's output). Keras 3 saves a ``Masking`` layer's mask in a functional
model as separate operations, ``NotEqual(input, mask_value)`` then ``Any(axis=-1)``, whose
result reaches the next layer as its ``mask`` argument; that pattern is recognised as part of
the Masking layer (it is what Masking computes), anything else feeding a ``mask`` is refused.

Keras versions differ in where a layer's name is: Keras 3.0 writes it next to the layer's
``config`` (operations such as ``Any`` have no name inside their config), later versions in
both places, Keras 2 inside ``config``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["KerasImportError", "layer_chain", "layer_name"]


class KerasImportError(ValueError):
    """A Keras model uses a layer or an option that seqstate cannot reproduce exactly."""


#: Operations Keras 3 records for a functional Masking layer's mask: not part of the chain.
_MASK_OPS = ("NotEqual", "Any")


def layer_name(entry: dict[str, Any]) -> str:
    """The layer's name wherever this Keras version put it."""
    name = entry.get("name")
    if name is None:
        config = entry.get("config")
        name = config.get("name") if isinstance(config, dict) else None
    if not isinstance(name, str):
        raise KerasImportError(
            f"a layer of class {entry.get('class_name')!r} has no name in the file's config; "
            "the file is damaged or from an unknown Keras version"
        )
    return name


def layer_chain(config: dict[str, Any]) -> list[dict[str, Any]]:
    """The model's layer configs in call order (Sequential, or a functional chain)."""
    class_name = config.get("class_name")
    body = config.get("config", {})
    layers = body.get("layers") if isinstance(body, dict) else None
    if not isinstance(layers, list):
        raise KerasImportError(
            f"the model's class {class_name!r} has no layer list; expected a Sequential or a "
            "functional keras.Model"
        )
    if class_name == "Sequential":
        return layers
    if class_name not in ("Functional", "Model"):
        raise KerasImportError(
            f"model class {class_name!r} is not supported: only Sequential and functional "
            "models (keras.Model(inputs, outputs)) can be read without running their code"
        )
    by_name = {layer_name(layer): layer for layer in layers}
    inputs, outputs = _endpoints(body.get("input_layers")), _endpoints(body.get("output_layers"))
    if len(inputs) != 1 or len(outputs) != 1:
        raise KerasImportError(
            f"the functional model has {len(inputs)} inputs and {len(outputs)} outputs; only "
            "single-input single-output chains are supported"
        )
    order = [by_name[outputs[0]]]
    mask_ops: set[str] = set()
    while layer_name(order[-1]) != inputs[0]:
        layer = order[-1]
        sources, masks = _inbound(layer)
        if len(sources) != 1:
            raise KerasImportError(
                f"layer {layer_name(layer)!r} takes {len(sources)} inputs {sources} or is called "
                "more than once; only chains (each layer called once on the previous layer's "
                "output) are supported"
            )
        for mask in masks:
            mask_ops |= _masking_ops(mask, by_name)
        order.append(by_name[sources[0]])
    used = {layer_name(layer) for layer in order} | mask_ops
    if used != set(by_name):
        unused = sorted(set(by_name) - used)
        raise KerasImportError(
            f"the functional model is not a chain: layers {unused} are off the path from its "
            "input to its output"
        )
    return order[::-1]


def _masking_ops(name: str, by_name: dict[str, dict[str, Any]]) -> set[str]:
    """The ``Any(NotEqual(t, v))`` operations of a Masking mask named ``name``, else refuse."""
    any_op = by_name.get(name, {})
    if any_op.get("class_name") == "Masking":
        return set()  # a mask passed on by the Masking layer itself (its output's mask)
    sources = _inbound(any_op)[0] if any_op else []
    not_equal = by_name.get(sources[0], {}) if len(sources) == 1 else {}
    if any_op.get("class_name") != _MASK_OPS[1] or not_equal.get("class_name") != _MASK_OPS[0]:
        raise KerasImportError(
            f"a layer's mask comes from {name!r} ({any_op.get('class_name')}); only the mask of "
            "a Masking layer on the model's input is supported"
        )
    return {name, layer_name(not_equal)}


def _endpoints(value: Any) -> list[str]:
    # ["input_layer", 0, 0] (Keras 3, single) or [["input_1", 0, 0], ...] (list)
    if not value:
        return []
    if isinstance(value[0], str):
        return [value[0]]
    return [entry[0] for entry in value]


def _inbound(layer: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(layers feeding ``layer``'s data inputs, layers feeding its ``mask`` argument)."""
    nodes = layer.get("inbound_nodes") or []
    names: list[str] = []
    masks: list[str] = []

    def walk(value: Any, into: list[str]) -> None:
        if isinstance(value, dict):
            if value.get("class_name") == "__keras_tensor__":
                into.append(value["config"]["keras_history"][0])
                return
            for item in value.values():
                walk(item, into)
        elif isinstance(value, list):
            # Keras 2: [[name, node_index, tensor_index, kwargs], ...]
            if len(value) >= 3 and isinstance(value[0], str) and isinstance(value[1], int):
                into.append(value[0])
                return
            for item in value:
                walk(item, into)

    for node in nodes:
        if isinstance(node, dict) and "args" in node:  # Keras 3: {"args": [...], "kwargs": {}}
            walk(node["args"], names)
            kwargs = dict(node.get("kwargs") or {})
            if "mask" in kwargs:
                walk(kwargs.pop("mask"), masks)
            walk(kwargs, names)
        else:
            walk(node, names)
    return names, masks
