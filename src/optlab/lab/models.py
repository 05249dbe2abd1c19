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
    "GAN",
    "CharLSTM",
    "CifarResNet",
    "DecoderTransformer",
    "DigitsCNN",
    "DigitsDiscriminator",
    "DigitsGenerator",
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


# --------------------------------------------------------------------------
# Language models
# --------------------------------------------------------------------------


class CharLSTM(nn.Module):
    """Token LSTM language model: embedding, ``layers`` LSTM layers, linear decoder.

    ``forward(tokens, state)`` takes a ``(batch, time)`` tensor of token ids and
    the ``(h, c)`` state of the previous window (``None``: zeros) and returns
    the logits ``(batch, time, vocab)`` and the new state, so a caller can carry
    the state across windows (truncated BPTT).
    """

    def __init__(self, vocab: int, embedding: int, hidden: int, layers: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, embedding)
        self.lstm = nn.LSTM(embedding, hidden, num_layers=layers, batch_first=True)
        self.decoder = nn.Linear(hidden, vocab)

    def forward(
        self, tokens: Tensor, state: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        outputs, state = self.lstm(self.embedding(tokens), state)
        return self.decoder(outputs), state


class _PreLNBlock(nn.Module):
    """``x + attn(LN(x))`` then ``x + mlp(LN(x))``, causal self-attention."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width)
        )

    def forward(self, x: Tensor) -> Tensor:
        batch, time, width = x.shape
        q, k, v = self.qkv(self.norm1(x)).split(width, dim=2)
        q, k, v = (t.view(batch, time, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(attended.transpose(1, 2).reshape(batch, time, width))
        return x + self.mlp(self.norm2(x))


class DecoderTransformer(nn.Module):
    """A small GPT-style decoder-only Transformer (pre-LayerNorm, learned positions).

    Token and position embeddings, ``layers`` pre-LN blocks of causal
    multi-head self-attention (:func:`torch.nn.functional.scaled_dot_product_attention`
    with ``is_causal=True``) and a 4x GELU MLP, a final LayerNorm and a linear
    head. ``forward(tokens)`` maps ``(batch, time)`` ids, ``time <= context``,
    to logits ``(batch, time, vocab)``. Weights ~ N(0, 0.02^2), biases 0, as in GPT-2.
    """

    def __init__(self, vocab: int, width: int, layers: int, heads: int, context: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width must be a multiple of heads, got {width} and {heads}")
        self.token = nn.Embedding(vocab, width)
        self.position = nn.Embedding(context, width)
        self.blocks = nn.Sequential(*(_PreLNBlock(width, heads) for _ in range(layers)))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, 0.0, 0.02)
            if isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    def forward(self, tokens: Tensor) -> Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.token(tokens) + self.position(positions)
        return self.head(self.norm(self.blocks(x)))


# --------------------------------------------------------------------------
# GANs
# --------------------------------------------------------------------------


class GAN(nn.Module):
    """A generator and a discriminator in one module (moved, counted and saved together).

    ``forward(noise)`` generates; each network has its own optimizer.
    """

    def __init__(self, generator: nn.Module, discriminator: nn.Module, noise_dim: int) -> None:
        super().__init__()
        self.generator = generator
        self.discriminator = discriminator
        self.noise_dim = noise_dim

    def forward(self, noise: Tensor) -> Tensor:
        return self.generator(noise)


class DigitsGenerator(nn.Module):
    """DCGAN-style generator of 1x8x8 images in [-1, 1].

    fc noise -> 2c x 2 x 2 (BatchNorm, ReLU); transposed conv k4 s2 p1 to
    c x 4 x 4 (BatchNorm, ReLU); transposed conv k4 s2 p1 to 1 x 8 x 8, tanh.
    BatchNorm always normalises by the batch's statistics (no running
    averages), in evaluation too: a sample of fixed noise then means the same
    thing at every evaluation, however fast the generator moves.
    """

    def __init__(self, noise_dim: int, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.fc = nn.Linear(noise_dim, 2 * channels * 4)
        self.norm0 = nn.BatchNorm2d(2 * channels, track_running_stats=False)
        self.up1 = nn.ConvTranspose2d(2 * channels, channels, 4, 2, 1)
        self.norm1 = nn.BatchNorm2d(channels, track_running_stats=False)
        self.up2 = nn.ConvTranspose2d(channels, 1, 4, 2, 1)

    def forward(self, noise: Tensor) -> Tensor:
        x = self.fc(noise).view(-1, 2 * self.channels, 2, 2)
        x = F.relu(self.norm0(x))
        x = F.relu(self.norm1(self.up1(x)))
        return torch.tanh(self.up2(x))


class DigitsDiscriminator(nn.Module):
    """DCGAN-style discriminator of 1x8x8 images: conv k4 s2 p1 to c x 4 x 4,
    conv k4 s2 p1 to 2c x 2 x 2 (LeakyReLU 0.2 after each), fc to one logit."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 4, 2, 1)
        self.conv2 = nn.Conv2d(channels, 2 * channels, 4, 2, 1)
        self.fc = nn.Linear(2 * channels * 4, 1)

    def forward(self, images: Tensor) -> Tensor:
        x = F.leaky_relu(self.conv1(images), 0.2)
        x = F.leaky_relu(self.conv2(x), 0.2)
        return self.fc(torch.flatten(x, 1)).reshape(-1)
