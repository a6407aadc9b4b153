"""int8 quantization of a trained model: post-training static quantization, its activation
ranges calibrated on training images, optionally after quantization-aware training (QAT).
The result is always an ONNX QDQ model, run by ONNX Runtime (engine/onnx_model.py).

Backends (`--backend`):

- onnxruntime (default): the float model as ONNX (compress/export.py), then ONNX Runtime's
  `quantize_static`: QDQ format, unsigned 8-bit activations per tensor (MinMax calibration)
  and signed 8-bit weights per output channel: "U8S8". ONNX Runtime fuses the whole graph
  into int8 operators (QLinearConv, QLinearAdd, QGemm).
- pt2e: PyTorch 2 export quantization: torch.export, torchao's `prepare_pt2e` with the
  X86InductorQuantizer (u8 activations from a histogram observer, s8 symmetric per-channel
  weights, BatchNorm folded), calibrate, `convert_pt2e`. torch.compile turns that program
  into oneDNN int8 kernels, but only in memory: a .pt2 cannot be loaded without unpickling
  (compress/export.py), so what is saved is its ONNX export, where ONNX Runtime runs the
  convolutions the X86 quantizer fuses with a following add (residual joins) in float.

U8S8 on x86 with VNNI: vpdpbusd multiplies u8 by s8 into int32 without the int16 saturation
of the older vpmaddubsw, so `reduce_range` (7-bit weights, for x86 without VNNI) stays off: it
would only cost precision. Signed activations (S8S8) are slower here: ONNX Runtime 1.32 fuses
only 9 of ResNet-20's 19 convolutions and none of its adds into int8 operators.

QAT (`--qat-epochs`): fake-quantized training with the pt2e X86 scheme (prepare_qat_pt2e) on
the run's training split and augmentation, SGD with a cosine lr from `--qat-lr`. pt2e then
converts the QAT program with the ranges it learned; onnxruntime takes its adapted float
weights (and BatchNorm statistics) and calibrates them as above. On the fast recipe's net below
(test with its flip-translate TTA; float 76.22%), post-training int8 gives 76.17% with either
backend, after 2 QAT epochs 76.35% (onnxruntime) and 76.22% (pt2e): PTQ loses little to gain
back here; QAT is for nets or budgets where it loses more.

Why onnxruntime is the default. Measured with benchmarks/quantize_throughput.py
(results/quantize-threads1.json) on a 2-core Xeon with AVX512-VNNI and AMX-INT8 that other
jobs shared, one thread each, so indicative; ResNet-20 after 2 epochs / the fast recipe's net
after 2 epochs on 20,000 images; images/s at batch 256, ms per single image:

    fp32 eager (PyTorch)             799 / 413 img/s    1.55 / 2.43 ms
    int8 onnxruntime (U8S8)        2,424 / 1,265        0.27 / 0.66
    int8 onnxruntime (S8S8)          691 / 510          0.83 / 1.66
    int8 pt2e, as saved (ONNX)       811 / 563          0.79 / 1.49
    int8 pt2e, compiled in memory  5,697 / 3,300        1.10 / 1.06

What `cifarlab quantize` saves, and `eval` and `predict` load, is ONNX; of those, ONNX
Runtime's own model is the fastest: 3.0× fp32 and 2.2-3.0× the saved pt2e model at batch 256,
5.7× and 3.7× fp32 for one image. Compiled by inductor, pt2e is 2.3-2.6× faster still at batch
256 (oneDNN runs every convolution on AMX tiles, where ONNX Runtime's use AVX512-VNNI:
benchmarks/onnxruntime_kernels.py), but only in the process that built and compiled it, and
slower for one image. Accuracy is the same within
noise: test top-1 58.88% fp32, 59.12% onnxruntime, 58.90% pt2e (same class as fp32 on 98.4% /
99.1% of the images); 75.53%, 75.48%, 75.38% (97.8% / 98.2%).
"""

from __future__ import annotations

import copy
import logging
import math
import sys
import tempfile
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..config import QuantizeConfig
from ..data import DeviceLoader
from ..errors import CifarlabError, first_line, import_extra
from .export import batch_axis, onnx_proto

CALIBRATION_BATCH = 100


def require_packages(settings: QuantizeConfig) -> None:
    """Fail before any work when a package these settings need is missing."""
    for package in ("onnx", "onnxscript", "onnxruntime.quantization"):
        import_extra(package)
    if settings.backend == "pt2e" or settings.qat_epochs > 0:
        _torchao("torchao")


def _torchao(module: str):
    """A torchao module. Importing torchao 0.18 under torch 2.14 logs a deprecation warning
    meant for torchao's developers (an Enum registered with torch's pytree); it stays off the
    user's screen."""
    logger = logging.getLogger("torch.utils._pytree")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        return import_extra(module)
    finally:
        logger.setLevel(level)


def quantize_int8(model: nn.Module, calibration: torch.Tensor, settings: QuantizeConfig,
                  train: DeviceLoader | None = None, label_smoothing: float = 0.0, verbose: bool = True):  # fmt: skip
    """The int8 ONNX ModelProto of `model` (changed in place by QAT). `calibration`: normalized
    training images, float (N, 3, H, W); `train`: the augmented training batches QAT uses."""
    example = calibration[[0, -1]]  # two images (one twice for --calib 1): torch.export fixes a batch axis of 1
    qat = _train_qat(model, example, train, settings, label_smoothing, verbose) if settings.qat_epochs else None
    if settings.backend == "pt2e":
        convert_pt2e = _torchao("torchao.quantization.pt2e.quantize_pt2e").convert_pt2e
        if qat is None:
            qat = prepare_pt2e(model.eval(), example)
            calibrate(qat, calibration)
        program = convert_pt2e(qat)
        program.training = False  # the graph is in eval mode (exported so, or moved there after QAT); the exporter reads this flag
        return onnx_proto(program, example)
    if qat is not None:  # the QAT program holds the model's own parameters and buffers under their names
        model.load_state_dict({name: value for name, value in qat.state_dict().items() if name in model.state_dict()})
    return _quantize_static(onnx_proto(model.eval(), example), calibration)


def prepare_pt2e(model: nn.Module, example: torch.Tensor, qat: bool = False):
    """`model` exported and annotated by the X86InductorQuantizer: observers (fake quantizers
    for QAT) on every tensor the int8 kernels will read."""
    quantize_pt2e = _torchao("torchao.quantization.pt2e.quantize_pt2e")
    x86 = _torchao("torchao.quantization.pt2e.quantizer.x86_inductor_quantizer")
    quantizer = x86.X86InductorQuantizer().set_global(x86.get_default_x86_inductor_quantization_config(is_qat=qat))
    try:
        program = torch.export.export(_plain_convs(model), (example,), dynamic_shapes=batch_axis()).module()
    except Exception as e:  # data-dependent control flow, unsupported operators, ...
        raise CifarlabError(f"this model cannot be exported for PT2E ({type(e).__name__}: {first_line(e)})") from None
    with warnings.catch_warnings():  # e.g. "the input of maxpool2d is not quantized, skip annotate": expected
        warnings.simplefilter("ignore", UserWarning)
        return (quantize_pt2e.prepare_qat_pt2e if qat else quantize_pt2e.prepare_pt2e)(program, quantizer)


def _plain_convs(model: nn.Module) -> nn.Module:
    """A copy of `model` whose convolutions the X86InductorQuantizer recognises: it matches
    modules of type nn.Conv2d exactly, and `aten.conv2d.default` (explicit padding) only. A
    subclass that changes initialization alone (airbench's _DiracConv) becomes an nn.Conv2d,
    and padding="same" (stride 1) with an odd kernel the symmetric padding it means. Without
    this, pt2e would leave 6 of airbench's 7 convolutions in float."""
    model = copy.deepcopy(model)
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and (type(module).forward, type(module)._conv_forward) == (
                nn.Conv2d.forward, nn.Conv2d._conv_forward):  # fmt: skip
            module.__class__ = nn.Conv2d
            reach = [d * (k - 1) for d, k in zip(module.dilation, module.kernel_size)]
            if module.padding == "same" and not any(r % 2 for r in reach):
                module.padding = tuple(r // 2 for r in reach)
    return model


@torch.no_grad()
def calibrate(prepared: nn.Module, images: torch.Tensor) -> None:
    for batch in images.split(CALIBRATION_BATCH):
        prepared(batch)


def _train_qat(model: nn.Module, example: torch.Tensor, train: DeviceLoader, settings: QuantizeConfig,
               label_smoothing: float, verbose: bool):  # fmt: skip
    pt2e = _torchao("torchao.quantization.pt2e")
    prepared = prepare_pt2e(model.train(), example, qat=True)
    pt2e.move_exported_model_to_train(prepared)
    optimizer = torch.optim.SGD(prepared.parameters(), lr=settings.qat_lr, momentum=0.9, nesterov=True)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, settings.qat_epochs * len(train))
    for epoch in range(settings.qat_epochs):
        total, count = 0.0, 0
        for x, y in train.epoch(epoch):
            loss = F.cross_entropy(prepared(x), y, label_smoothing=label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total, count = total + loss.item() * len(x), count + len(x)
        if not math.isfinite(total):
            raise CifarlabError(f"QAT diverged in epoch {epoch + 1} (its loss is NaN/inf); lower --qat-lr")
        if verbose:
            print(f"QAT epoch {epoch + 1}/{settings.qat_epochs}: train loss {total / count:.4f}", file=sys.stderr)
    pt2e.move_exported_model_to_eval(prepared)
    return prepared


class _Batches:
    """ONNX Runtime's CalibrationDataReader protocol (get_next; None at the end) over images."""

    def __init__(self, images: torch.Tensor, input_name: str):
        self.batches = iter(images.split(CALIBRATION_BATCH))
        self.input_name = input_name

    def get_next(self) -> dict | None:
        batch = next(self.batches, None)
        return None if batch is None else {self.input_name: batch.contiguous().numpy()}


def _quantize_static(proto, calibration: torch.Tensor):
    """ONNX Runtime's static quantization of a float ONNX model (U8S8, QDQ, per channel), after
    its recommended pre-processing (graph optimization, ONNX shape inference). Its symbolic shape
    inference is skipped: it is for transformers' dynamic shapes, and fails on the airbench net."""
    quantization = import_extra("onnxruntime.quantization")
    shape_inference = import_extra("onnxruntime.quantization.shape_inference")
    onnx = import_extra("onnx")
    with tempfile.TemporaryDirectory() as folder, _QuietOnnxRuntime():  # both work on files
        original, ready, out = (Path(folder) / name for name in ("float.onnx", "ready.onnx", "int8.onnx"))
        onnx.save(proto, original)
        shape_inference.quant_pre_process(original, ready, skip_symbolic_shape=True)
        quantization.quantize_static(
            ready, out, _Batches(calibration, proto.graph.input[0].name), quant_format=quantization.QuantFormat.QDQ,
            activation_type=quantization.QuantType.QUInt8, weight_type=quantization.QuantType.QInt8,
            per_channel=True, reduce_range=False,
        )  # fmt: skip
        return onnx.load(out)


class _QuietOnnxRuntime(logging.Filter):
    """Drops the notes ONNX Runtime's quantization tools log on the root logger while they run
    (e.g. that a BatchNorm weight gets one scale instead of one per channel): advice for
    whoever tunes the tool, not for a user of `cifarlab quantize`."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "onnxruntime" not in record.pathname

    def __enter__(self):
        logging.getLogger().addFilter(self)

    def __exit__(self, *exc):
        logging.getLogger().removeFilter(self)
