"""The lab's models: small, standard networks the tasks train.

Each is plain :class:`torch.nn.Module` code with PyTorch's default
initialisation unless its docstring says otherwise, so a model is a pure
function of the seed that is current when it is built.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = [
    "CifarResNet",
    "DigitsCNN",
    "MLP",
    "MnistNet",
    "NoisyQuadratic",
]


class MLP(nn.Sequential):
    """Fully connected network: ``in -> hidden... (ReLU) -> out``; flattens its input."""

    def __init__(self, in_features: int, hidden: tuple[int, ...], out_features: int) -> None:
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        layers.append(nn.Linear(width, out_features))
        super().__init__(*layers)


class DigitsCNN(nn.Module):
    """A LeNet-like CNN for 1x8x8 digit images.

    conv 1->16 k3 pad 1, ReLU, maxpool 2 (16x4x4); conv 16->32 k3 pad 1, ReLU,
    maxpool 2 (32x2x2); fc 128->10.
    """

    def __init__(self, channels: tuple[int, int] = (16, 32), classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels[0], 3, padding=1)
        self.conv2 = nn.Conv2d(channels[0], channels[1], 3, padding=1)
        self.fc = nn.Linear(channels[1] * 2 * 2, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2(x), 2))
        return self.fc(torch.flatten(x, 1))


class MnistNet(nn.Module):
    """The classic PyTorch MNIST ``Net`` (without its dropout layers).

    conv 1->10 k5, maxpool 2, ReLU; conv 10->20 k5, maxpool 2, ReLU;
    fc 320->50, ReLU; fc 50->10. Input 1x28x28, output logits.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 10, kernel_size=5)
        self.conv2 = nn.Conv2d(10, 20, kernel_size=5)
        self.fc1 = nn.Linear(320, 50)
        self.fc2 = nn.Linear(50, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2(x), 2))
        x = F.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc2(x)


class _BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """The CIFAR ResNet of He et al. 2016 (section 4.2): depth ``6n + 2``.

    A 3x3 conv to 16 channels, then three stages of ``n`` basic blocks with
    16, 32 and 64 channels (stride 2 between stages), global average pooling
    and a linear classifier. ``depth=20`` is ResNet-20 (0.27M parameters);
    ``depth=8`` is the small default of the ``cifar10-resnet`` task. Shortcuts
    that change shape use a 1x1 conv with batch norm (option B of the paper).
    """

    def __init__(self, depth: int = 20, classes: int = 10, width: int = 16) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"ResNet depth must be 6n + 2 with n >= 1, got {depth}")
        blocks = (depth - 2) // 6
        self.conv = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        layers: list[nn.Module] = []
        channels = width
        for stage in range(3):
            out_channels = width * 2**stage
            for block in range(blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                layers.append(_BasicBlock(channels, out_channels, stride))
                channels = out_channels
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(channels, classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn(self.conv(x)))
        x = self.layers(x)
        x = F.adaptive_avg_pool2d(x, 1)
        return self.fc(torch.flatten(x, 1))


class NoisyQuadratic(nn.Module):
    """DeepOBS's ``quadratic_deep`` network: the output is the per-example loss.

    ``forward(x)`` returns ``0.5 * (theta - x_i)^T Q (theta - x_i)`` for every
    row ``x_i``; ``theta`` starts at ones. ``Q`` is a buffer (moves with the
    model, is not trained).
    """

    def __init__(self, hessian: Tensor) -> None:
        super().__init__()
        self.register_buffer("hessian", hessian)
        self.theta = nn.Parameter(torch.ones(hessian.shape[0], dtype=hessian.dtype))

    def forward(self, x: Tensor) -> Tensor:
        difference = self.theta - x
        return 0.5 * ((difference @ self.hessian) * difference).sum(dim=1)
