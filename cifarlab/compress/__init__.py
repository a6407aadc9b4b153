"""Model compression: int8 quantization (quantize.py) and export to ONNX / torch.export (export.py)."""

from .export import Export, Parity, export_model

__all__ = ["Export", "Parity", "export_model"]
