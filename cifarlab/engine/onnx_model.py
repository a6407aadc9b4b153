"""An ONNX model file as an nn.Module, so that `eval`, `predict` and the Python API run the
models `cifarlab export` and `cifarlab quantize` write through the same code as checkpoints.

ONNX Runtime executes it (CPU): an ONNX file is protobuf, so loading one runs no pickled
code, and ONNX Runtime is what runs the int8 models fast here (compress/quantize.py).
The checkpoint's meta.json travels inside the file (metadata key `cifarlab_meta`), so an
exported file is self-describing: classes, normalization, model and config.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..errors import CifarlabError, first_line, import_extra

META_KEY = "cifarlab_meta"


class OnnxModel(nn.Module):
    """Logits of an ONNX classifier on a normalized (N, 3, H, W) float batch, as a tensor on
    the input's device (the session itself runs on the CPU)."""

    def __init__(self, path: str | Path):
        super().__init__()
        ort = import_extra("onnxruntime")
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()  # as PyTorch, so timings compare
        options.log_severity_level = 3  # errors only: its hardware notes are not for users
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own types for a damaged or foreign file
            raise CifarlabError(f"'{path}' is not an ONNX model ONNX Runtime can run ({first_line(e)})") from None
        self.input_name = self.session.get_inputs()[0].name
        self.path = Path(path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.detach().float().cpu().contiguous().numpy()
        return torch.from_numpy(self.session.run(None, {self.input_name: batch})[0]).to(x.device)

    def meta(self) -> dict:
        """The meta.json stored in the file (its `cifarlab_meta` metadata)."""
        text = self.session.get_modelmeta().custom_metadata_map.get(META_KEY)
        if text is None:
            raise CifarlabError(f"'{self.path}' is an ONNX model without cifarlab metadata; export it with `cifarlab export`")
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            raise CifarlabError(f"'{self.path}' has corrupt cifarlab metadata (not JSON)") from None
