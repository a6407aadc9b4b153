"""The served model: loaded once, then each image becomes its top-5 classes and a Grad-CAM
overlay, through the functions `cifarlab predict` runs (engine/inference.py), so the page and
the command line give the same probabilities for the same file."""

from __future__ import annotations

import threading
from pathlib import Path

import torch

from ..engine.checkpoint import load_checkpoint
from ..engine.inference import class_probabilities, image_loader, input_size, top_classes
from ..engine.metrics import read_tested
from ..engine.onnx_model import OnnxModel
from ..engine.runtime import select_device
from ..errors import CifarlabError
from ..viz.plots import overlay
from ..viz.saliency import grad_cam
from .images import png_data_uri
from .text import EN

TOP_K = 5
SHOWN_PX = 256  # the side the model's input and the overlay are drawn at on the page


class Classifier:
    """A run, a `cifarlab quantize` folder or an exported .onnx file, ready to classify images.

    The checkpoint is the one the run was tested with (eval.json), so the model card's test
    figures belong to the weights that answer."""

    def __init__(self, source: str | Path, device: str = "auto"):
        self.source = Path(source)
        self.device = select_device(device)
        where, self.test_result = read_tested(self.source)
        self.checkpoint = load_checkpoint(where, self.device)
        self.size = input_size(self.checkpoint)
        self.runtime = "ONNX Runtime" if isinstance(self.checkpoint.model, OnnxModel) else "PyTorch"
        self.precision = "int8" if "quantization" in self.checkpoint.meta else "fp32"
        self.no_gradcam = self._gradcam_problem()
        self._lock = threading.Lock()  # Grad-CAM hooks the model's layers: one image at a time

    def classify(self, image: torch.Tensor) -> dict:
        """uint8 (3, size, size) → what POST /predict answers (see app.py)."""
        checkpoint, batch = self.checkpoint, image[None]
        loader = image_loader(checkpoint, batch, self.device)
        with self._lock:
            probabilities = class_probabilities(checkpoint, loader)[0]
            top = top_classes(probabilities, checkpoint.classes, TOP_K)
            cam = None
            if self.no_gradcam is None:
                cam = grad_cam(checkpoint.model, loader.prepare(batch), probabilities.argmax()[None].to(self.device))
        scale = max(1, SHOWN_PX // self.size)
        return {
            "top": [{"class": name, "probability": p} for name, p in top],
            "probabilities": dict(zip(checkpoint.classes, probabilities.tolist())),
            "calibrated": checkpoint.temperature is not None,
            "temperature": checkpoint.temperature,
            "input": png_data_uri(image.permute(1, 2, 0).numpy(), scale),
            "overlay": None if cam is None else png_data_uri(overlay(image, cam.maps[0]), scale),
            "gradcam": None if cam is None else {"class": top[0][0], "layer": cam.layer},
            "no_gradcam": self.no_gradcam,
        }

    def _gradcam_problem(self) -> str | None:
        """Why this model gets no Grad-CAM overlay (None: it gets one), found once at startup."""
        if self.runtime != "PyTorch":
            return EN["no_gradcam_onnx"]
        blank = torch.zeros(1, 3, self.size, self.size, device=self.device)
        try:
            grad_cam(self.checkpoint.model, blank, torch.zeros(1, dtype=torch.long, device=self.device))
        except CifarlabError as e:  # a model without a spatial feature map (a transformer)
            return str(e)
        return None
