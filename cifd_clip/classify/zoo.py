"""The CIFAR-100 model zoo the distillation literature uses (RepDistiller's definitions, written here), the
paper's plain CNNs, and ImageNet models from torchvision / timm by name.

Every model is a `ClassifierNet`: `forward(images) -> (features, logits)`, where `features` is the
penultimate embedding after global pooling (what RDMs read and the IBM regularises) and `logits` the
classifier's output; `feature_dim` is its width. `stage_maps(images)` is the output map of each stage after the
stem (RepDistiller's `feats[1:-1]`, for losses on every stage), the last one being `feature_map(images)`.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError


class ClassifierNet(nn.Module):
    """A backbone to its last feature map, global pooling (+ `after_pool`), then one linear head."""

    feature_dim: int
    num_classes: int

    def stage_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        raise NotImplementedError

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.stage_maps(x)[-1]

    def after_pool(self, pooled: torch.Tensor) -> torch.Tensor:
        return pooled

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.after_pool(F.adaptive_avg_pool2d(self.feature_map(x), 1).flatten(1))

    def forward_with_map(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(last feature map, pooled features, logits): for losses on spatial maps (attention transfer)."""
        fmap = self.feature_map(x)
        features = self.after_pool(F.adaptive_avg_pool2d(fmap, 1).flatten(1))
        return fmap, features, self.fc(features)

    def forward_with_stages(self, x: torch.Tensor) -> tuple[list, torch.Tensor, torch.Tensor]:
        """(every stage's map, pooled features, logits): for losses on every stage (attention transfer)."""
        maps = self.stage_maps(x)
        features = self.after_pool(F.adaptive_avg_pool2d(maps[-1], 1).flatten(1))
        return maps, features, self.fc(features)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.embed(x)
        return features, self.fc(features)


def run_stages(body: nn.Sequential, x: torch.Tensor, boundaries: tuple) -> list[torch.Tensor]:
    """`body(x)`, keeping the output after each layer count in `boundaries` (stage ends) and the final one."""
    maps = []
    for count, layer in enumerate(body, start=1):
        x = layer(x)
        if count in boundaries:
            maps.append(x)
    return maps + [x]


# ---------------------------------------------------------------- CIFAR ResNets (He et al., 3 stages)


class BasicBlock(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or inplanes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(ClassifierNet):
    """resnet20/56 (filters 16-16-32-64) and resnet8x4/32x4 (32-64-128-256): (depth - 2) / 6 blocks per stage."""

    def __init__(self, depth: int, filters: tuple, num_classes: int = 100):
        super().__init__()
        if (depth - 2) % 6:
            raise UserError(f"a CIFAR ResNet needs depth 6n + 2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, filters[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(filters[0])
        layers, inplanes = [], filters[0]
        for stage, planes in enumerate(filters[1:]):
            for i in range(n):
                layers.append(BasicBlock(inplanes, planes, 2 if stage > 0 and i == 0 else 1))
                inplanes = planes
        self.layers = nn.Sequential(*layers)
        self.stage_ends = (n, 2 * n)
        self.feature_dim, self.num_classes = inplanes, num_classes
        self.fc = nn.Linear(inplanes, num_classes)

    def stage_maps(self, x):
        return run_stages(self.layers, F.relu(self.bn1(self.conv1(x))), self.stage_ends)


# ---------------------------------------------------------------- Wide ResNets (Zagoruyko & Komodakis)


class WideBlock(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(inplanes), nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(planes), nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut = None if inplanes == planes and stride == 1 else nn.Conv2d(inplanes, planes, 1, stride, bias=False)

    def forward(self, x):
        out = F.relu(self.bn1(x))
        residual = x if self.shortcut is None else self.shortcut(out)
        out = self.conv2(F.relu(self.bn2(self.conv1(out))))
        return out + residual


class WideResNet(ClassifierNet):
    def __init__(self, depth: int, widen: int, num_classes: int = 100):
        super().__init__()
        if (depth - 4) % 6:
            raise UserError(f"a Wide ResNet needs depth 6n + 4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        blocks, inplanes = [], widths[0]
        for stage, planes in enumerate(widths[1:]):
            for i in range(n):
                blocks.append(WideBlock(inplanes, planes, 2 if stage > 0 and i == 0 else 1))
                inplanes = planes
        self.blocks = nn.Sequential(*blocks)
        self.stage_ends = (n, 2 * n)
        self.bn = nn.BatchNorm2d(inplanes)
        self.feature_dim, self.num_classes = inplanes, num_classes
        self.fc = nn.Linear(inplanes, num_classes)

    def stage_maps(self, x):
        maps = run_stages(self.blocks, self.conv1(x), self.stage_ends)
        return maps[:-1] + [F.relu(self.bn(maps[-1]))]  # the last stage's map is the pooled one (after BN)


# ---------------------------------------------------------------- VGG with batch norm (CIFAR)


class CifarVGG(ClassifierNet):
    """vgg8: one conv per stage; vgg13: two (64-128-256-512-512 channels, max-pool between stages). Its stage
    maps are those of stages 1-4 before their pooling (stage 0 is the stem, as in RepDistiller)."""

    def __init__(self, convs_per_stage: tuple, num_classes: int = 100):
        super().__init__()
        layers, inplanes, ends = [], 3, []
        for stage, (planes, count) in enumerate(zip((64, 128, 256, 512, 512), convs_per_stage)):
            for _ in range(count):
                layers += [nn.Conv2d(inplanes, planes, 3, 1, 1), nn.BatchNorm2d(planes), nn.ReLU(inplace=True)]
                inplanes = planes
            if 0 < stage < 4:
                ends.append(len(layers))
            if stage < 4:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.stage_ends = tuple(ends)
        self.feature_dim, self.num_classes = 512, num_classes
        self.fc = nn.Linear(512, num_classes)

    def stage_maps(self, x):
        return run_stages(self.features, x, self.stage_ends)


# ---------------------------------------------------------------- MobileNetV2 (CIFAR: stride 1 stem)


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand: int):
        super().__init__()
        hidden = inp * expand
        self.use_residual = stride == 1 and inp == oup
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True), nn.Conv2d(hidden, oup, 1, bias=False), nn.BatchNorm2d(oup))

    def forward(self, x):
        return x + self.conv(x) if self.use_residual else self.conv(x)


class CifarMobileNetV2(ClassifierNet):
    """RepDistiller's `mobile_half`: MobileNetV2 with expansion 6 at width 0.5."""

    SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1)]

    def __init__(self, width: float = 0.5, num_classes: int = 100):
        super().__init__()
        inplanes = int(32 * width)
        layers = [nn.Conv2d(3, inplanes, 3, 1, 1, bias=False), nn.BatchNorm2d(inplanes), nn.ReLU6(inplace=True)]
        ends = []
        for group, (t, c, n, s) in enumerate(self.SETTINGS):
            planes = int(c * width)
            for i in range(n):
                layers.append(InvertedResidual(inplanes, planes, s if i == 0 else 1, t))
                inplanes = planes
            if group in (1, 2, 4):  # RepDistiller's stage ends; the last stage also takes the final 1x1 conv
                ends.append(len(layers))
        last = 1280 if width <= 1.0 else int(1280 * width)
        layers += [nn.Conv2d(inplanes, last, 1, bias=False), nn.BatchNorm2d(last), nn.ReLU6(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.stage_ends = tuple(ends)
        self.feature_dim, self.num_classes = last, num_classes
        self.fc = nn.Linear(last, num_classes)

    def stage_maps(self, x):
        return run_stages(self.features, x, self.stage_ends)


# ---------------------------------------------------------------- ShuffleNet V1 / V2 (CIFAR)


def _shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class ShuffleV1Block(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int, groups: int):
        super().__init__()
        self.stride, self.groups = stride, groups
        mid = planes // 4
        first_groups = 1 if inplanes == 24 else groups
        self.conv1 = nn.Conv2d(inplanes, mid, 1, groups=first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.out = planes - inplanes if stride == 2 else planes
        self.conv3 = nn.Conv2d(mid, self.out, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(self.out)

    def forward(self, x):
        out = _shuffle(F.relu(self.bn1(self.conv1(x))), self.groups)
        out = self.bn3(self.conv3(F.relu(self.bn2(self.conv2(out)))))
        if self.stride == 2:
            return F.relu(torch.cat([out, F.avg_pool2d(x, 3, 2, 1)], 1))
        return F.relu(out + x)


class ShuffleNetV1(ClassifierNet):
    def __init__(self, num_classes: int = 100, groups: int = 3, out_planes=(240, 480, 960), blocks=(4, 8, 4)):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 24, 1, bias=False), nn.BatchNorm2d(24)
        layers, inplanes = [], 24
        for planes, count in zip(out_planes, blocks):
            for i in range(count):
                layers.append(ShuffleV1Block(inplanes, planes, 2 if i == 0 else 1, groups))
                inplanes = planes
        self.layers = nn.Sequential(*layers)
        self.stage_ends = (blocks[0], blocks[0] + blocks[1])
        self.feature_dim, self.num_classes = inplanes, num_classes
        self.fc = nn.Linear(inplanes, num_classes)

    def stage_maps(self, x):
        return run_stages(self.layers, F.relu(self.bn1(self.conv1(x))), self.stage_ends)


class ShuffleV2Block(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int):
        super().__init__()
        self.stride = stride
        branch_in = inplanes if stride == 2 else inplanes // 2
        mid = planes // 2
        self.branch = nn.Sequential(
            nn.Conv2d(branch_in, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid),
            nn.Conv2d(mid, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True))
        self.shortcut = None
        if stride == 2:
            self.shortcut = nn.Sequential(
                nn.Conv2d(inplanes, inplanes, 3, 2, 1, groups=inplanes, bias=False), nn.BatchNorm2d(inplanes),
                nn.Conv2d(inplanes, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True))

    def forward(self, x):
        if self.stride == 2:
            out = torch.cat([self.shortcut(x), self.branch(x)], 1)
        else:
            keep, rest = x.chunk(2, dim=1)
            out = torch.cat([keep, self.branch(rest)], 1)
        return _shuffle(out, 2)


class ShuffleNetV2(ClassifierNet):
    def __init__(self, num_classes: int = 100, out_channels=(116, 232, 464, 1024), blocks=(3, 7, 3)):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 24, 3, 1, 1, bias=False), nn.BatchNorm2d(24)
        layers, inplanes = [], 24
        for planes, count in zip(out_channels[:3], blocks):
            layers.append(ShuffleV2Block(inplanes, planes, 2))
            layers += [ShuffleV2Block(planes, planes, 1) for _ in range(count)]
            inplanes = planes
        self.layers = nn.Sequential(*layers)
        self.stage_ends = (blocks[0] + 1, blocks[0] + blocks[1] + 2)
        self.conv2, self.bn2 = nn.Conv2d(inplanes, out_channels[3], 1, bias=False), nn.BatchNorm2d(out_channels[3])
        self.feature_dim, self.num_classes = out_channels[3], num_classes
        self.fc = nn.Linear(out_channels[3], num_classes)

    def stage_maps(self, x):
        maps = run_stages(self.layers, F.relu(self.bn1(self.conv1(x))), self.stage_ends)
        return maps[:-1] + [F.relu(self.bn2(self.conv2(maps[-1])))]  # the last stage ends with the 1x1 conv


# ---------------------------------------------------------------- plain CNNs (TAKD / the paper's simple CNNs)


class PlainCNN(ClassifierNet):
    """`cnn{L}`: L conv layers (3x3, BN, ReLU; channels 32, 64, 128 by thirds, max-pool after each third), global
    pooling, then FC 512 → FC 306 → features and a linear head: the layout of the plain CNNs that TAKD and
    the CIFD paper distil between (teacher cnn10, assistants cnn8/6, student cnn2)."""

    def __init__(self, conv_layers: int, num_classes: int = 100):
        super().__init__()
        if conv_layers < 2:
            raise UserError(f"a plain CNN needs at least 2 conv layers, got {conv_layers}")
        layers, inplanes, ends = [], 3, []
        widths = [32 * 2 ** min(2, 3 * i // conv_layers) for i in range(conv_layers)]
        for i, planes in enumerate(widths):
            layers += [nn.Conv2d(inplanes, planes, 3, 1, 1), nn.BatchNorm2d(planes), nn.ReLU(inplace=True)]
            if i == conv_layers - 1 or widths[i + 1] != planes:
                layers.append(nn.MaxPool2d(2))
                ends.append(len(layers))  # a stage: the convs of one width and their pooling
            inplanes = planes
        self.features = nn.Sequential(*layers)
        self.stage_ends = tuple(ends[:-1])
        self.mlp = nn.Sequential(nn.Linear(inplanes, 512), nn.ReLU(inplace=True), nn.Linear(512, 306),
                                 nn.ReLU(inplace=True))
        self.feature_dim, self.num_classes = 306, num_classes
        self.fc = nn.Linear(306, num_classes)

    def stage_maps(self, x):
        return run_stages(self.features, x, self.stage_ends)

    def after_pool(self, pooled):
        return self.mlp(pooled)


# ---------------------------------------------------------------- ImageNet models by name


class ExternalNet(ClassifierNet):
    """A torchvision or timm model, split into its pooled features and its own classifier head."""

    def __init__(self, source: str, name: str, num_classes: int = 1000):
        super().__init__()
        if source == "torchvision":
            import torchvision
            net = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
            head_name = "fc" if hasattr(net, "fc") else "classifier"
            head = getattr(net, head_name)
            setattr(net, head_name, nn.Identity())
        else:
            import timm
            net = timm.create_model(name, pretrained=False, num_classes=num_classes)
            head = net.get_classifier()
            net.reset_classifier(0)
        self.net, self.fc = net, head
        self.source, self.name = source, name
        self.feature_dim = head.in_features if isinstance(head, nn.Linear) else head[-1].in_features
        self.num_classes = num_classes

    def stage_maps(self, x):
        raise UserError(f"{self.source}:{self.name} exposes pooled features only; a loss on feature maps needs a "
                        f"model of this project's zoo")

    def embed(self, x):
        return self.net(x)


CIFAR_MODELS: dict[str, Callable[[int], ClassifierNet]] = {
    "resnet8x4": lambda c: CifarResNet(8, (32, 64, 128, 256), c),
    "resnet32x4": lambda c: CifarResNet(32, (32, 64, 128, 256), c),
    "resnet20": lambda c: CifarResNet(20, (16, 16, 32, 64), c),
    "resnet56": lambda c: CifarResNet(56, (16, 16, 32, 64), c),
    "wrn_40_2": lambda c: WideResNet(40, 2, c),
    "wrn_40_1": lambda c: WideResNet(40, 1, c),
    "wrn_16_2": lambda c: WideResNet(16, 2, c),
    "vgg13": lambda c: CifarVGG((2, 2, 2, 2, 2), c),
    "vgg8": lambda c: CifarVGG((1, 1, 1, 1, 1), c),
    "MobileNetV2": lambda c: CifarMobileNetV2(0.5, c),
    "ShuffleV1": lambda c: ShuffleNetV1(c),
    "ShuffleV2": lambda c: ShuffleNetV2(c),
    **{f"cnn{n}": (lambda n: lambda c: PlainCNN(n, c))(n) for n in (2, 4, 6, 8, 10)},
}
IMAGENET_MODELS = {"resnet18": "torchvision", "resnet34": "torchvision", "resnet50": "torchvision",
                   "mobilenetv1_100": "timm"}


def build_classifier(name: str, num_classes: int) -> ClassifierNet:
    """A zoo model by name: the CIFAR zoo, the plain CNNs, or torchvision/timm ImageNet models (also
    `torchvision:NAME` and `timm:NAME` for any other model of those libraries)."""
    if num_classes < 2:
        raise UserError(f"a classifier needs at least 2 classes, got {num_classes}")
    if name in CIFAR_MODELS:
        return CIFAR_MODELS[name](num_classes)
    source, _, bare = name.partition(":") if ":" in name else (IMAGENET_MODELS.get(name, ""), "", name)
    if source in ("torchvision", "timm"):
        try:
            return ExternalNet(source, bare, num_classes)
        except (ValueError, RuntimeError, KeyError) as e:
            raise UserError(f"{source} has no model {bare!r} ({str(e).splitlines()[0][:120]})") from None
    known = ", ".join([*CIFAR_MODELS, *IMAGENET_MODELS])
    raise UserError(f"unknown classifier {name!r}: use one of {known}, or torchvision:NAME / timm:NAME")

