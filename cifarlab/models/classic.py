"""Teaching nets, layer for layer: the LeNet of the classic PyTorch CIFAR-10 tutorial and a small
two-conv CNN."""

from torch import nn

from .registry import register_model


@register_model
def lenet(num_classes: int = 10) -> nn.Module:
    """LeNet-5 as in the PyTorch tutorial: conv 3→6 5×5, pool, conv 6→16 5×5, pool, fc 400→120→84."""
    return nn.Sequential(
        nn.Conv2d(3, 6, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120), nn.ReLU(),
        nn.Linear(120, 84), nn.ReLU(),
        nn.Linear(84, num_classes),
    )  # fmt: skip


@register_model
def simple_cnn(num_classes: int = 10) -> nn.Module:
    """Two conv layers and an MLP: conv 3→64, pool, conv 64→128, pool, fc 8192→256."""
    return nn.Sequential(
        nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(128 * 8 * 8, 256), nn.ReLU(),
        nn.Linear(256, num_classes),
    )  # fmt: skip
