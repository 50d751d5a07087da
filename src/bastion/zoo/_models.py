"""Small reference architectures for demos, tests and benchmarks.

Every model is an :class:`torch.nn.Sequential` with named layers (``conv1``, ``relu1``,
``fc1`` ...), so layers can be picked by name for activations, and returns logits.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from bastion._tensor import RandomStateLike
from bastion._validation import RANDOM_STATE, Interval, Satisfies, validate_params
from bastion.zoo._init import initialize, layers_device

__all__ = ["MLP", "SmallCNN", "SmallResNet"]


def _positive_ints(length: int | None = None) -> Satisfies:
    def check(value: object) -> bool:
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            return False
        if length is not None and len(value) != length:
            return False
        return all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)

    noun = "a sequence" if length is None else f"a sequence of {length}"
    return Satisfies(check, f"{noun} of positive ints")


class SmallCNN(nn.Sequential):
    """A small convolutional network for MNIST-like grey-scale images.

    Two 3x3 convolutions (32 and 64 channels, padding 1), each followed by ReLU and 2x2 max
    pooling, then a 128-unit hidden layer and the output layer. The layers are named
    ``conv1, relu1, pool1, conv2, relu2, pool2, flatten, fc1, relu3, fc2``.

    Parameters
    ----------
    in_channels : int, default=1
        Number of input channels.
    nb_classes : int, default=10
        Number of classes (outputs).
    input_size : int, default=28
        Height and width of the (square) input images, at least 4 (e.g. 8 for
        ``load_digits(size=8)``, 28 for MNIST).
    random_state : None, int or torch.Generator, default=None
        Seed of the parameter initialisation (PyTorch's default scheme drawn from a private
        generator; torch's global RNG is left alone). ``None`` uses PyTorch's own
        initialisation.

    Raises
    ------
    InvalidParameterError
        If a parameter is outside its allowed range.

    Examples
    --------
    >>> import torch
    >>> from bastion.zoo import SmallCNN
    >>> model = SmallCNN(input_size=8, random_state=0)
    >>> model(torch.zeros(2, 1, 8, 8)).shape
    torch.Size([2, 10])
    >>> model.conv2
    Conv2d(32, 64, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))
    """

    def __init__(
        self,
        in_channels: int = 1,
        nb_classes: int = 10,
        *,
        input_size: int = 28,
        random_state: RandomStateLike = None,
    ) -> None:
        validate_params(
            "SmallCNN",
            {
                "in_channels": in_channels,
                "nb_classes": nb_classes,
                "input_size": input_size,
                "random_state": random_state,
            },
            {
                "in_channels": [Interval(int, 1, None)],
                "nb_classes": [Interval(int, 2, None)],
                "input_size": [Interval(int, 4, None)],
                "random_state": RANDOM_STATE,
            },
        )
        side = input_size // 2 // 2
        with layers_device(random_state):
            layers = OrderedDict(
                conv1=nn.Conv2d(in_channels, 32, kernel_size=3, padding=1),
                relu1=nn.ReLU(),
                pool1=nn.MaxPool2d(2),
                conv2=nn.Conv2d(32, 64, kernel_size=3, padding=1),
                relu2=nn.ReLU(),
                pool2=nn.MaxPool2d(2),
                flatten=nn.Flatten(),
                fc1=nn.Linear(64 * side * side, 128),
                relu3=nn.ReLU(),
                fc2=nn.Linear(128, nb_classes),
            )
        super().__init__(layers)
        initialize(self, random_state)
        self.in_channels = in_channels
        self.nb_classes = nb_classes
        self.input_size = input_size


class MLP(nn.Sequential):
    """A multi-layer perceptron: flatten, then fully connected layers with ReLU.

    The layers are named ``flatten, fc1, relu1, fc2, relu2, ..., fc{k}`` where ``fc{k}`` is
    the output layer (``k = len(hidden) + 1``).

    Parameters
    ----------
    in_features : int
        Number of input features (the product of the input shape, e.g. 64 for 1x8x8 images).
    nb_classes : int
        Number of classes (outputs).
    hidden : sequence of int, default=(128, 128)
        Widths of the hidden layers; empty gives a linear model.
    random_state : None, int or torch.Generator, default=None
        Seed of the parameter initialisation (PyTorch's default scheme drawn from a private
        generator). ``None`` uses PyTorch's own initialisation.

    Raises
    ------
    InvalidParameterError
        If a parameter is outside its allowed range.

    Examples
    --------
    >>> import torch
    >>> from bastion.zoo import MLP
    >>> model = MLP(64, 10, hidden=(32,), random_state=0)
    >>> model(torch.zeros(5, 1, 8, 8)).shape
    torch.Size([5, 10])
    >>> [name for name, _ in model.named_children()]
    ['flatten', 'fc1', 'relu1', 'fc2']
    """

    def __init__(
        self,
        in_features: int,
        nb_classes: int,
        *,
        hidden: Sequence[int] = (128, 128),
        random_state: RandomStateLike = None,
    ) -> None:
        validate_params(
            "MLP",
            {
                "in_features": in_features,
                "nb_classes": nb_classes,
                "hidden": hidden,
                "random_state": random_state,
            },
            {
                "in_features": [Interval(int, 1, None)],
                "nb_classes": [Interval(int, 2, None)],
                "hidden": [_positive_ints()],
                "random_state": RANDOM_STATE,
            },
        )
        widths = [in_features, *hidden]
        layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
        with layers_device(random_state):
            for i, (n_in, n_out) in enumerate(itertools.pairwise(widths), 1):
                layers[f"fc{i}"] = nn.Linear(n_in, n_out)
                layers[f"relu{i}"] = nn.ReLU()
            layers[f"fc{len(widths)}"] = nn.Linear(widths[-1], nb_classes)
        super().__init__(layers)
        initialize(self, random_state)
        self.in_features = in_features
        self.nb_classes = nb_classes
        self.hidden = tuple(hidden)


class _BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and a residual connection (He et al., 2016)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                OrderedDict(
                    conv=nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                    bn=nn.BatchNorm2d(out_channels),
                )
            )
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class SmallResNet(nn.Sequential):
    """A small residual network for CIFAR-like colour images (He et al., 2016).

    A 3x3 stem convolution, three stages of basic residual blocks with ``width``, ``2 * width``
    and ``4 * width`` channels (stride 2 at the start of stages 2 and 3), batch norm, global
    average pooling and a linear output layer. The top-level layers are named
    ``stem, stage1, stage2, stage3, pool, flatten, fc``; blocks inside a stage are numbered
    (``stage2.0.conv1`` ...). With the defaults it has about 0.2 M parameters; any input size
    works (32x32 is the intended one).

    Parameters
    ----------
    nb_classes : int, default=10
        Number of classes (outputs).
    in_channels : int, default=3
        Number of input channels.
    width : int, default=16
        Channels of the first stage.
    blocks : sequence of 3 ints, default=(1, 1, 1)
        Residual blocks per stage; ``(3, 3, 3)`` gives the ResNet-20 of the paper.
    random_state : None, int or torch.Generator, default=None
        Seed of the parameter initialisation (PyTorch's default scheme drawn from a private
        generator). ``None`` uses PyTorch's own initialisation.

    Raises
    ------
    InvalidParameterError
        If a parameter is outside its allowed range.

    References
    ----------
    K. He, X. Zhang, S. Ren, J. Sun. "Deep Residual Learning for Image Recognition." CVPR 2016.

    Examples
    --------
    >>> import torch
    >>> from bastion.zoo import SmallResNet
    >>> model = SmallResNet(random_state=0).eval()
    >>> model(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 10])
    """

    def __init__(
        self,
        nb_classes: int = 10,
        *,
        in_channels: int = 3,
        width: int = 16,
        blocks: Sequence[int] = (1, 1, 1),
        random_state: RandomStateLike = None,
    ) -> None:
        validate_params(
            "SmallResNet",
            {
                "nb_classes": nb_classes,
                "in_channels": in_channels,
                "width": width,
                "blocks": blocks,
                "random_state": random_state,
            },
            {
                "nb_classes": [Interval(int, 2, None)],
                "in_channels": [Interval(int, 1, None)],
                "width": [Interval(int, 1, None)],
                "blocks": [_positive_ints(3)],
                "random_state": RANDOM_STATE,
            },
        )
        with layers_device(random_state):
            layers: OrderedDict[str, nn.Module] = OrderedDict(
                stem=nn.Sequential(
                    OrderedDict(
                        conv=nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
                        bn=nn.BatchNorm2d(width),
                        relu=nn.ReLU(),
                    )
                )
            )
            channels = width
            for stage, n_blocks in enumerate(blocks, 1):
                out_channels = width * 2 ** (stage - 1)
                stage_blocks = []
                for b in range(n_blocks):
                    stride = 2 if stage > 1 and b == 0 else 1
                    stage_blocks.append(_BasicBlock(channels, out_channels, stride))
                    channels = out_channels
                layers[f"stage{stage}"] = nn.Sequential(*stage_blocks)
            layers["pool"] = nn.AdaptiveAvgPool2d(1)
            layers["flatten"] = nn.Flatten()
            layers["fc"] = nn.Linear(channels, nb_classes)
        super().__init__(layers)
        initialize(self, random_state)
        self.nb_classes = nb_classes
        self.in_channels = in_channels
        self.width = width
        self.blocks = tuple(blocks)
