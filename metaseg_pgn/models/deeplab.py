"""A DeepLabV3+ in pure torch: ResNet-style encoder, ASPP, decoder with a stride-4 skip.

The final block is an ``nn.Sequential``-like module ``head`` whose children are named so that forward
hooks see the chain ``conv2 -> bn2 -> relu2 -> dropout -> classifier``; ``head.classifier`` (a 1 x 1
conv with bias) is the last convolution of the network, the one the pixel-wise gradient norms use.
Its logits live at stride 4 and are resized bilinearly to the input size.
"""

from __future__ import annotations

from typing import Callable, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

# One implementation of MC dropout for every model (re-exported here for DeepLabV3+ users).
from ..baselines import DROPOUT_TYPES, mc_dropout  # noqa: F401

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "DeepLabV3Plus",
    "MODELS",
    "build_model",
    "compact",
    "mc_dropout",
    "resnet50_sized",
    "set_mc_dropout",
]



def _conv_bn_relu(cin: int, cout: int, k: int, *, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    pad = dilation * (k - 1) // 2
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride=stride, padding=pad, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class BasicBlock(nn.Module):
    """Two 3 x 3 convolutions with a residual connection (ResNet-18/34 block).

    Parameters
    ----------
    cin, cout : int
        Input and output channels.
    stride : int
        Stride of the first convolution.
    dilation : int
        Dilation of both convolutions.
    """

    def __init__(self, cin: int, cout: int, *, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU(inplace=True)
        self.downsample = _shortcut(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + identity)


class Bottleneck(nn.Module):
    """1 x 1 reduce, 3 x 3 (strided / dilated), 1 x 1 expand, with a residual (ResNet-50 block).

    Parameters
    ----------
    cin, cout : int
        Input and output channels; the inner width is ``cout // 4``.
    stride : int
        Stride of the 3 x 3 convolution.
    dilation : int
        Dilation of the 3 x 3 convolution.
    """

    expansion = 4

    def __init__(self, cin: int, cout: int, *, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        mid = max(cout // self.expansion, 1)
        self.conv1 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(mid, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu3 = nn.ReLU(inplace=True)
        self.downsample = _shortcut(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu3(out + identity)


def _shortcut(cin: int, cout: int, stride: int) -> nn.Module | None:
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1 x 1, three atrous 3 x 3, image pooling, 1 x 1 projection.

    The image-pooling branch has a biased conv and no BatchNorm, so training works with batch 1.

    Parameters
    ----------
    cin, cout : int
        Input channels and the channels of every branch and of the projection.
    rates : sequence of int
        Dilations of the atrous 3 x 3 branches.
    align_corners : bool
        Used when broadcasting the pooled branch back (a constant, so it does not matter numerically).
    """

    def __init__(self, cin: int, cout: int, rates: Sequence[int], *, align_corners: bool = False) -> None:
        super().__init__()
        self.align_corners = align_corners
        self.branches = nn.ModuleList([_conv_bn_relu(cin, cout, 1)])
        self.branches.extend(_conv_bn_relu(cin, cout, 3, dilation=int(r)) for r in rates)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1), nn.ReLU(inplace=True))
        self.project = _conv_bn_relu(cout * (len(self.branches) + 1), cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, cin, h, w) -> (B, cout, h, w)."""
        outs = [b(x) for b in self.branches]
        outs.append(self.pool(x).expand(-1, -1, x.shape[-2], x.shape[-1]))
        return self.project(torch.cat(outs, dim=1))


class Head(nn.Module):
    """The final block: conv3x3-BN-ReLU, conv3x3-BN-ReLU, Dropout2d, 1 x 1 classifier (with bias).

    Parameters
    ----------
    cin : int
        Channels of the concatenated decoder input.
    channels : int
        Channels of both 3 x 3 convolutions (the classifier's input ψ has this many).
    num_classes : int
        Output channels of the classifier.
    dropout : float
        Probability of the ``Dropout2d`` before the classifier.
    """

    def __init__(self, cin: int, channels: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        # not in place: the deeper-layer PGN hooks read relu2's input and output as separate tensors
        self.relu2 = nn.ReLU(inplace=False)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1, bias=True)

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """(B, cin, h, w) -> ψ, the classifier's input before dropout (B, channels, h, w)."""
        x = self.relu1(self.bn1(self.conv1(x)))
        return self.relu2(self.bn2(self.conv2(x)))

    def out(self, psi: torch.Tensor) -> torch.Tensor:
        """ψ -> logits (B, num_classes, h, w): dropout and the 1 x 1 classifier."""
        return self.classifier(self.dropout(psi))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, cin, h, w) -> logits (B, num_classes, h, w)."""
        return self.out(self.trunk(x))


class DeepLabV3Plus(nn.Module):
    """DeepLabV3+ with a ResNet-style encoder.

    Parameters
    ----------
    num_classes : int
        Number of output classes C.
    block : {"basic", "bottleneck"}
        Residual block of the encoder.
    layers : sequence of 4 int
        Blocks per stage (stages at stride 4, 8, 16, 32 before dilation).
    widths : sequence of 4 int
        Output channels of the four stages (for bottleneck blocks the inner width is a quarter).
    stem_channels : int
        Channels of the stem (two 3 x 3 convs, the first with stride 2, then a 3 x 3 max pool with
        stride 2: the stem ends at stride 4).
    output_stride : {8, 16}
        Stride of the encoder output; the later stages replace their stride by dilation.
    aspp_channels : int
        Channels of every ASPP branch and of its projection.
    aspp_rates : sequence of 3 int or None
        Dilations of the atrous branches; default (6, 12, 18) at output stride 16, (12, 24, 36) at 8.
    low_level_channels : int
        Channels of the 1 x 1 reduction of the stride-4 skip.
    decoder_channels : int
        Channels of the head's two 3 x 3 convs, i.e. of the classifier's input ψ.
    dropout : float
        ``Dropout2d`` probability before the classifier (the MC dropout layer).
    align_corners : bool
        ``align_corners`` of every bilinear resize, including the final one to the input size.

    Notes
    -----
    ``forward(x)`` maps an image batch (B, 3, H, W) to logits (B, C, H, W); any H, W >= 1 work (the
    stride-4 logits have size ``ceil(ceil(H/2)/2)`` and are resized bilinearly). Attributes
    ``align_corners`` and ``last_conv_name = "head.classifier"`` describe the output for the PGN
    wrapper.
    """

    last_conv_name = "head.classifier"

    def __init__(
        self,
        num_classes: int = 19,
        *,
        block: Literal["basic", "bottleneck"] = "basic",
        layers: Sequence[int] = (2, 2, 2, 2),
        widths: Sequence[int] = (64, 128, 256, 512),
        stem_channels: int = 64,
        output_stride: Literal[8, 16] = 16,
        aspp_channels: int = 256,
        aspp_rates: Sequence[int] | None = None,
        low_level_channels: int = 48,
        decoder_channels: int = 256,
        dropout: float = 0.1,
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        if block not in ("basic", "bottleneck"):
            raise ValueError(f"block must be 'basic' or 'bottleneck', got {block!r}")
        if output_stride not in (8, 16):
            raise ValueError(f"output_stride must be 8 or 16, got {output_stride!r}")
        if len(layers) != 4 or len(widths) != 4:
            raise ValueError(f"layers and widths need 4 entries, got {tuple(layers)} and {tuple(widths)}")
        if aspp_rates is None:
            aspp_rates = (6, 12, 18) if output_stride == 16 else (12, 24, 36)
        self.num_classes = int(num_classes)
        self.output_stride = int(output_stride)
        self.align_corners = bool(align_corners)
        self.config = dict(
            num_classes=int(num_classes), block=block, layers=tuple(int(n) for n in layers),
            widths=tuple(int(w) for w in widths), stem_channels=int(stem_channels),
            output_stride=int(output_stride), aspp_channels=int(aspp_channels),
            aspp_rates=tuple(int(r) for r in aspp_rates), low_level_channels=int(low_level_channels),
            decoder_channels=int(decoder_channels), dropout=float(dropout),
            align_corners=bool(align_corners),
        )

        block_cls: Callable[..., nn.Module] = BasicBlock if block == "basic" else Bottleneck
        self.stem = nn.Sequential(
            _conv_bn_relu(3, stem_channels, 3, stride=2),
            _conv_bn_relu(stem_channels, stem_channels, 3),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        # stage i: nominal stride 1, 2, 2, 2; once the output stride is reached, dilation doubles instead
        strides, dilations = [], []
        current, dilation = 4, 1
        for nominal in (1, 2, 2, 2):
            if nominal == 2 and current >= output_stride:
                strides.append(1)
                dilations.append((dilation, dilation * 2))
                dilation *= 2
            else:
                strides.append(nominal)
                dilations.append((dilation, dilation))
                current *= nominal
        stages = []
        cin = stem_channels
        for n, cout, s, (d_first, d_rest) in zip(layers, widths, strides, dilations):
            blocks = [block_cls(cin, cout, stride=s, dilation=d_first)]
            blocks += [block_cls(cout, cout, dilation=d_rest) for _ in range(int(n) - 1)]
            stages.append(nn.Sequential(*blocks))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.aspp = ASPP(widths[3], aspp_channels, aspp_rates, align_corners=align_corners)
        self.low_level = _conv_bn_relu(widths[0], low_level_channels, 1)
        self.head = Head(aspp_channels + low_level_channels, decoder_channels, num_classes, dropout)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # a small classifier keeps the initial logits near zero (softmax near uniform)
        nn.init.normal_(self.head.classifier.weight, std=0.01)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder and ASPP.

        Parameters
        ----------
        x : Tensor, shape (B, 3, H, W)

        Returns
        -------
        low : Tensor, shape (B, widths[0], h4, w4)
            Stride-4 stage output.
        high : Tensor, shape (B, aspp_channels, h_os, w_os)
            ASPP output at the output stride.
        """
        low = self.layer1(self.stem(x))
        high = self.aspp(self.layer4(self.layer3(self.layer2(low))))
        return low, high

    def forward_stride4(self, x: torch.Tensor) -> torch.Tensor:
        """Logits at stride 4.

        Parameters
        ----------
        x : Tensor, shape (B, 3, H, W)

        Returns
        -------
        Tensor, shape (B, C, ceil(ceil(H/2)/2), ceil(ceil(W/2)/2))
        """
        return self.head(self._decoder_input(x))

    def _decoder_input(self, x: torch.Tensor) -> torch.Tensor:
        low, high = self.features(x)
        low = self.low_level(low)
        high = F.interpolate(high, size=low.shape[-2:], mode="bilinear", align_corners=self.align_corners)
        return torch.cat([high, low], dim=1)

    def mc_dropout_split(self):
        """``(trunk, head)`` with ``head(trunk(x)) == forward(x)`` and every dropout layer in ``head``.

        MC dropout (:func:`metaseg_pgn.baselines.mc_dropout_maps`) then runs the deterministic
        trunk once and only the head (dropout, classifier, resize) per sample — the same samples
        as full forward passes, at a fraction of the cost.
        """

        def trunk(x: torch.Tensor):
            return self.head.trunk(self._decoder_input(x)), tuple(x.shape[-2:])

        def head(state) -> torch.Tensor:
            psi, size = state
            z = self.head.out(psi)
            return F.interpolate(z, size=size, mode="bilinear", align_corners=self.align_corners)

        return trunk, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits at the input size.

        Parameters
        ----------
        x : Tensor, shape (B, 3, H, W)
            Normalised image batch.

        Returns
        -------
        Tensor, shape (B, C, H, W)
            ``head.classifier``'s output resized bilinearly with ``self.align_corners``.
        """
        z = self.forward_stride4(x)
        return F.interpolate(z, size=x.shape[-2:], mode="bilinear", align_corners=self.align_corners)


def set_mc_dropout(model: nn.Module, enabled: bool) -> nn.Module:
    """Switch Monte-Carlo dropout on or off.

    ``enabled=True`` puts the whole model in eval mode (BatchNorm uses and keeps its running
    statistics) and then every dropout module in train mode (stochastic). ``enabled=False`` puts the
    whole model in eval mode (deterministic).

    Parameters
    ----------
    model : nn.Module
    enabled : bool

    Returns
    -------
    nn.Module
        ``model`` itself.
    """
    model.eval()
    if enabled:
        for m in model.modules():
            if isinstance(m, DROPOUT_TYPES):
                m.train()
    return model


def compact(num_classes: int = 19, **kw) -> DeepLabV3Plus:
    """The small model the project trains on a CPU.

    Basic blocks (2, 2, 2, 2), widths (16, 32, 64, 128), stem 16, output stride 16, ASPP 64 channels,
    low-level 32, decoder 64: about 1.06 M parameters. Keyword arguments override these.

    Measured on one CPU thread (torch 2.13): forward 0.023 s at 256 x 512 and 0.10 s at 512 x 1024;
    a training step about 0.09 s per 256 x 512 image. Output stride 8 costs about 50 % more.

    Returns
    -------
    DeepLabV3Plus
    """
    cfg = dict(
        block="basic", layers=(2, 2, 2, 2), widths=(16, 32, 64, 128), stem_channels=16,
        output_stride=16, aspp_channels=64, low_level_channels=32, decoder_channels=64,
    )
    cfg.update(kw)
    return DeepLabV3Plus(num_classes, **cfg)


def resnet50_sized(num_classes: int = 19, **kw) -> DeepLabV3Plus:
    """A DeepLabV3+ of ResNet-50 size (about 40 M parameters), output stride 8, for timing.

    Bottleneck blocks (3, 4, 6, 3), widths (256, 512, 1024, 2048), stem 64, ASPP 256, low-level 48,
    decoder 256. Keyword arguments override these.

    Returns
    -------
    DeepLabV3Plus
    """
    cfg = dict(
        block="bottleneck", layers=(3, 4, 6, 3), widths=(256, 512, 1024, 2048), stem_channels=64,
        output_stride=8, aspp_channels=256, low_level_channels=48, decoder_channels=256,
    )
    cfg.update(kw)
    return DeepLabV3Plus(num_classes, **cfg)


MODELS: dict[str, Callable[..., DeepLabV3Plus]] = {"compact": compact, "resnet50_sized": resnet50_sized}


def build_model(name: str, num_classes: int = 19, **kw) -> DeepLabV3Plus:
    """Build a model by name (for configuration files).

    Parameters
    ----------
    name : {"compact", "resnet50_sized"}
    num_classes : int
    **kw
        Passed to the factory (overrides of :class:`DeepLabV3Plus` arguments).

    Returns
    -------
    DeepLabV3Plus
    """
    try:
        factory = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {sorted(MODELS)}") from None
    return factory(num_classes, **kw)
