"""Interoperability: import Keras recurrent models, export seqstate models to ONNX.

* :mod:`seqstate.interop.keras` reads ``.keras`` / ``.h5`` files with h5py only
  (``pip install 'seqstate[keras]'``).
* :mod:`seqstate.interop.onnx` exports a run (raw inputs, its preprocessing inside) or a model
  with explicit state inputs and outputs (``pip install 'seqstate[onnx]'``).

Both optional dependencies are imported lazily, inside those modules.
"""

from __future__ import annotations
