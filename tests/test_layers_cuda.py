"""The reset and padding paths on a CUDA device (cuDNN): the same outputs, states and gradients
as on the CPU, with and without a prebuilt timeline. Skipped where no CUDA device is present
(never faked: run by benchmarks/gpu.sh on a machine with one)."""

from __future__ import annotations

import pytest
import torch

from seqstate.core.layers import GRU, LSTM, RNN
from seqstate.core.timeline import Timeline

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

CUDA = torch.device("cuda")


def _layer(kind: str) -> LSTM | GRU | RNN:
    torch.manual_seed(0)
    if kind == "lstm":
        return LSTM(3, 8, 2)
    if kind == "gru":
        return GRU(3, 8, 2)
    return RNN(3, 8, 2, nonlinearity="relu")


def _window(B: int = 5, T: int = 12) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(B, T, 3, generator=generator, dtype=torch.float64)
    reset = torch.rand(B, T, generator=generator) < 0.25
    mask = torch.rand(B, T, generator=generator) < 0.8
    mask[2] = False  # a row that is all padding
    return x, reset, mask


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_relu"])
@pytest.mark.parametrize("with_timeline", [False, True])
@pytest.mark.parametrize("strategy", ["auto", "split"])
def test_resets_and_padding_on_cuda_equal_the_cpu(kind: str, with_timeline: bool, strategy: str):
    cpu = _layer(kind).double()
    cpu.strategy = strategy
    device_layer = _layer(kind).double().to(CUDA)
    device_layer.strategy = strategy
    x, reset, mask = _window()
    state = cpu.initial_state(5).map(lambda t: torch.randn_like(t))
    results = []
    for layer, device in ((cpu, torch.device("cpu")), (device_layer, CUDA)):
        inputs = x.to(device).requires_grad_()
        initial = state.to(device).map(lambda t: t.requires_grad_())
        flags = reset.to(device), mask.to(device)
        timeline = Timeline(*flags) if with_timeline else None
        y, final = layer(inputs, initial, reset=flags[0], mask=flags[1], timeline=timeline)
        loss = y.square().sum() + sum(t.square().sum() for t in final.tensors())
        grads = torch.autograd.grad(loss, [inputs, *initial.tensors(), *layer.parameters()])
        results.append((y, final.tensors(), grads))
    (y_cpu, final_cpu, grads_cpu), (y_gpu, final_gpu, grads_gpu) = results
    tolerance = {"rtol": 1e-9, "atol": 1e-9}
    torch.testing.assert_close(y_gpu.cpu(), y_cpu, **tolerance)
    for ours, theirs in zip(final_gpu, final_cpu, strict=True):
        torch.testing.assert_close(ours.cpu(), theirs, **tolerance)
    for ours, theirs in zip(grads_gpu, grads_cpu, strict=True):
        torch.testing.assert_close(ours.cpu(), theirs, **tolerance)


def test_a_windows_timeline_moves_to_the_device_with_it():
    from seqstate.lanes.lanes import Lanes

    sequences = [torch.randn(n, 3).numpy() for n in (7, 3, 12, 5, 9)]
    lanes = Lanes.from_sequences(sequences, lanes=2, window=6)
    layer = _layer("lstm").to(CUDA)
    for window in lanes.windows():
        moved = window.to(CUDA)
        timeline = moved.timeline
        assert timeline is not None and timeline.device.type == "cuda"
        y, _ = layer(moved.x, reset=timeline.reset, mask=timeline.mask, timeline=timeline)
        y_cpu, _ = _layer("lstm")(window.x, reset=window.reset, mask=window.valid)
        torch.testing.assert_close(y.cpu(), y_cpu, rtol=1e-5, atol=1e-5)
