"""Stored state rows: a compact, fixed layout per served model, encoded a batch at a time.

A record's ``state`` is one stream's state row: a header naming the state type, dtype and
per-field shapes, then the raw little-endian tensors ``[L, H_f]`` of each field, in field
order. Encoding and decoding a whole batch is one NumPy copy; the general
``State.to_bytes`` (safetensors) cost ~0.3 ms per row, most of a batch's time.

A row whose header is not this model's (another model, an older format) or whose length is
wrong is reported as unusable (that stream's 409 ``state_incompatible``), never decoded.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from seqstate.core.state import State

__all__ = ["StateCodec"]

_MAGIC = b"seqstate-row/1 "


class StateCodec:
    """Encodes and decodes rows of states shaped like ``template`` (a batch-1 state)."""

    def __init__(self, template: State) -> None:
        self.state_type = type(template)
        tensors = template.tensors()
        self.dtype = tensors[0].dtype
        self.np_dtype = np.dtype(str(self.dtype).removeprefix("torch.")).newbyteorder("<")
        self.shapes = [(t.shape[0], t.shape[2]) for t in tensors]  # (L, H_f) per field
        self.sizes = [layers * hidden for layers, hidden in self.shapes]
        shapes = ",".join(f"{a}x{b}" for a, b in self.shapes)
        self.header = _MAGIC + f"{self.state_type.__name__} {self.dtype} {shapes}\n".encode()
        self.row_bytes = len(self.header) + sum(self.sizes) * self.np_dtype.itemsize

    def fits(self, blob: bytes) -> bool:
        return len(blob) == self.row_bytes and blob.startswith(self.header)

    def encode(self, state: State) -> list[bytes]:
        """One blob per batch row of ``state`` (fields ``[L, n, H_f]``)."""
        header = self.header
        return [header + row.tobytes() for row in self.encode_rows(state)]

    def decode(self, blobs: Sequence[bytes | None]) -> State:
        """The batch state of ``blobs`` (each ``fits``); None rows are zero states."""
        n = len(blobs)
        rows = np.zeros((n, sum(self.sizes)), dtype=self.np_dtype)  # (n, sum L*H_f)
        skip = len(self.header)
        for i, blob in enumerate(blobs):
            if blob is not None:
                rows[i] = np.frombuffer(blob, dtype=self.np_dtype, offset=skip)
        return self.decode_rows(rows)

    def decode_rows(self, rows: np.ndarray) -> State:
        """The batch state of ``rows`` ``[n, sum L*H_f]`` (the row bodies without their
        header, as one array: a batch's rows decoded in one copy per field)."""
        n = rows.shape[0]
        rows = rows.view(self.np_dtype).reshape(n, -1)
        fields, start = [], 0
        for (layers, hidden), size in zip(self.shapes, self.sizes, strict=True):
            block = rows[:, start : start + size].reshape(n, layers, hidden)
            fields.append(torch.from_numpy(np.ascontiguousarray(block.transpose(1, 0, 2))))
            start += size
        return self.state_type(*(f.to(self.dtype) for f in fields))

    def encode_rows(self, state: State) -> np.ndarray:
        """The bodies of ``encode``'s rows (no header) as one ``[n, row_bytes - header]``
        uint8 array."""
        columns = [
            t.detach().to("cpu").transpose(0, 1).reshape(t.shape[1], -1).numpy()  # (n, L*H_f)
            for t in state.tensors()
        ]
        rows = np.ascontiguousarray(np.concatenate(columns, axis=1), dtype=self.np_dtype)
        return rows.view(np.uint8)
