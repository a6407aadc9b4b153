"""`cifarlab export`: a trained model as an ONNX file or a torch.export program (.pt2), kept
only when it reproduces the PyTorch model on real test images.

- ONNX: torch.onnx.export's dynamo exporter (torch.export, then ONNX through onnxscript; the
  TorchScript exporter is deprecated since torch 2.9), opset 18, a dynamic batch axis; its
  optimizer folds BatchNorm into the convolutions. For ONNX Runtime, OpenVINO, TensorRT, ...
- .pt2: `torch.export.save` of the same program (dynamic batch), for AOTInductor, ExecuTorch
  or `torch.export.load` where the file is trusted. Loading a .pt2 unpickles its sample
  inputs, and anything that is not a plain tensor, with `torch.load(weights_only=False)` as
  the fallback (torch/_export/serde/serialize.py, deserialize_torch_artifact), so a hostile
  .pt2 can run code: cifarlab loads one only right after writing it, to check it.

Both take normalized images: float32 (N, 3, H, W), RGB scaled to [0, 1], then (x - mean) / std
per channel. The checkpoint's meta.json (classes, mean, std, model, the run's config) travels
inside the file: the ONNX metadata `cifarlab_meta`, the .pt2 archive's extra file `meta.json`.

Parity: on 512 test images of the run's dataset, the export's logits must be within 1e-3
(max abs) of the eager model's, with the same top-1 class on every image; otherwise the command
fails and no file is written. float32 exports differ by ~1e-6 (another order of operations),
so 1e-3 passes those and fails a wrong operator.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..data import make_splits
from ..engine.checkpoint import load_checkpoint
from ..engine.inference import checkpoint_loader
from ..engine.metrics import finite, predict
from ..engine.onnx_model import META_KEY, OnnxModel
from ..errors import CifarlabError, first_line, import_extra
from ..fileio import atomic_path

FORMATS = ("onnx", "pt2")
OPSET = 18
PARITY_IMAGES = 512
MAX_ABS_DIFF = 1e-3
INPUT = "float32 (N, 3, H, W): RGB scaled to [0, 1], then (x - mean) / std per channel"


@dataclass
class Parity:
    """How far a converted model's logits are from the eager model's on the same images."""

    images: int
    max_abs_diff: float
    agreement: float  # fraction of images with the same top-1 class

    @classmethod
    def of(cls, reference: torch.Tensor, logits: torch.Tensor) -> Parity:
        agreement = (reference.argmax(1) == logits.argmax(1)).double().mean().item()
        return cls(len(reference), (reference - logits).abs().max().item(), agreement)

    def summary(self) -> str:
        return f"max |logit difference| {self.max_abs_diff:.2e}, top-1 agreement {self.agreement:.2%} on {self.images} test images"


@dataclass
class Export:
    path: Path
    format: str
    parity: Parity


def export_model(source: str | Path, format: str = "onnx", out: str | Path | None = None,
                 data_dir: str | None = None) -> Export:  # fmt: skip
    """Write the model of a run or checkpoint as `format` to `out` (default: SOURCE.onnx or
    SOURCE.pt2 beside the source), checked as the module docstring says."""
    if format not in FORMATS:
        raise CifarlabError(f"unknown export format '{format}'; choose one of: {', '.join(FORMATS)}")
    named = Path(source) if Path(source).name not in ("", "..") else Path(source).resolve()  # `export .` in a run
    out = Path(out) if out is not None else named.with_name(f"{named.name}.{format}")
    if out.suffix != f".{format}":
        raise CifarlabError(f"--out '{out}' must end in .{format} for --format {format}")
    for package in ("onnx", "onnxscript", "onnxruntime") if format == "onnx" else ():  # fail before any work
        import_extra(package)
    checkpoint = load_checkpoint(source)
    if isinstance(checkpoint.model, OnnxModel):
        raise CifarlabError(f"'{source}' holds an ONNX model already ({checkpoint.model.path}); use that file")
    config = checkpoint.config(data_dir)
    test = make_splits(config.data).test
    sample = test.subset(torch.arange(min(PARITY_IMAGES, len(test))))
    loader = checkpoint_loader(checkpoint, config, sample, torch.device("cpu"))
    reference = finite(predict(checkpoint.model, loader)[0], source)
    checkpoint.model.to(memory_format=torch.contiguous_format)  # the layout is not part of an export
    example = loader.prepare(sample.images[:2]).contiguous()
    meta = {**checkpoint.meta, "input": INPUT}
    with atomic_path(out) as tmp:
        if format == "onnx":
            save_onnx(onnx_proto(checkpoint.model, example), tmp, meta)
            logits, _ = predict(OnnxModel(tmp), loader)
        else:
            program = _save_pt2(checkpoint.model, example, tmp, meta)
            with torch.no_grad():  # (not `predict`: a loaded program refuses .eval(); it was exported in eval mode)
                logits = torch.cat([program(x) for x, _ in loader.epoch(0)])
        parity = Parity.of(reference, logits)
        if not parity.max_abs_diff <= MAX_ABS_DIFF or parity.agreement < 1:  # (NaN fails too)
            raise CifarlabError(
                f"the {format} export does not reproduce the model ({parity.summary()}; allowed: "
                f"{MAX_ABS_DIFF:g} and 100%); nothing was written"
            )
    return Export(out, format, parity)


def batch_axis() -> tuple[dict, ...]:
    """The `dynamic_shapes` of a model taking one image batch: any batch size from 1."""
    return ({0: torch.export.Dim("batch", min=1)},)


def onnx_proto(model: nn.Module, example: torch.Tensor):
    """`model` (an nn.Module or a torch.export'ed GraphModule) as an ONNX ModelProto:
    input `images` with a dynamic batch axis, output `logits`."""
    for package in ("onnx", "onnxscript"):  # what the dynamo exporter translates with (quantize calls this too)
        import_extra(package)
    try:
        program = torch.onnx.export(model, (example,), dynamic_shapes=batch_axis(), input_names=["images"],
                                    output_names=["logits"], opset_version=OPSET, dynamo=True, verbose=False)  # fmt: skip
    except Exception as e:  # the exporter raises many types for an unsupported operator
        raise CifarlabError(f"this model cannot be exported to ONNX ({type(e).__name__}: {first_line(e)})") from None
    return program.model_proto


def save_onnx(proto, path: Path, meta: dict) -> None:
    """Write an ONNX model with the checkpoint's meta.json in its metadata (`cifarlab_meta`)."""
    onnx = import_extra("onnx")
    props = {p.key: p.value for p in proto.metadata_props}
    onnx.helper.set_model_props(proto, {**props, META_KEY: json.dumps(meta)})
    onnx.save(proto, path)


def _save_pt2(model: nn.Module, example: torch.Tensor, path: Path, meta: dict) -> nn.Module:
    """torch.export.save the model's program, with meta.json inside; returns the program as
    read back from the file (written just now by this process, so loading it is safe)."""
    try:
        program = torch.export.export(model, (example,), dynamic_shapes=batch_axis())
    except Exception as e:  # data-dependent control flow, unsupported operators, ...
        raise CifarlabError(f"this model cannot be exported with torch.export ({type(e).__name__}: {first_line(e)})") from None
    with open(path, "wb") as f:  # a file object: torch.export wants a .pt2 name, this is a temporary file
        torch.export.save(program, f, extra_files={"meta.json": json.dumps(meta)})
    with open(path, "rb") as f:
        return torch.export.load(f).module()
