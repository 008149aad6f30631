"""The two CIFAR-10 networks of the course: the ResNet-9 of "How to train your ResNet" and a CIFAR
ResNet-18, and the two steps around them: `to_input` (uint8 images -> normalised batch) and
`class_probabilities` (logits -> softmax).

Both networks take normalised 3x32x32 images and return logits (no softmax), so CrossEntropyLoss and
GradCAM use them as is.
"""

from contextlib import contextmanager

import torch
from torch import nn


def conv_bn_relu(c_in, c_out, pool=False):
    """3x3 conv -> (MaxPool 2) -> BN -> ReLU, the building unit of the ResNet-9."""
    layers = [nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    layers += [nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class ResBlock(nn.Module):
    """Two conv-BN-ReLU units at constant width; the caller adds their output to the input."""

    def __init__(self, channels):
        super().__init__()
        self.conv1 = conv_bn_relu(channels, channels)
        self.conv2 = conv_bn_relu(channels, channels)

    def forward(self, x):
        return self.conv2(self.conv1(x))


class CustomResNet(nn.Module):
    """ResNet-9 (David Page): prep 64, layer1 128 + res, layer2 256, layer3 512 + res, MaxPool(4),
    FC.

    `logit_scale` multiplies the logits (Page's recipe uses 0.125); 1.0 leaves the plain network.
    """

    def __init__(self, num_classes=10, logit_scale=1.0):
        super().__init__()
        self.logit_scale = logit_scale
        self.prep = conv_bn_relu(3, 64)
        self.layer1 = conv_bn_relu(64, 128, pool=True)
        self.res1 = ResBlock(128)
        self.layer2 = conv_bn_relu(128, 256, pool=True)
        self.layer3 = conv_bn_relu(256, 512, pool=True)
        self.res3 = ResBlock(512)
        self.pool = nn.MaxPool2d(4)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        x = self.prep(x)
        x = self.layer1(x)
        x = x + self.res1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = x + self.res3(x)
        x = self.pool(x).flatten(1)
        return self.fc(x) * self.logit_scale


class BasicBlock(nn.Module):
    """ResNet basic block; a 1x1 conv + BN shortcut where stride or width changes."""

    def __init__(self, c_in, c_out, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """CIFAR ResNet-18: 3x3 stride-1 stem, no max-pool, BasicBlocks [2, 2, 2, 2], global average
    pool, FC."""

    def __init__(self, num_classes=10, logit_scale=1.0):
        super().__init__()
        self.logit_scale = logit_scale
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True)
        )
        self.layer1 = self._stage(64, 64, stride=1)
        self.layer2 = self._stage(64, 128, stride=2)
        self.layer3 = self._stage(128, 256, stride=2)
        self.layer4 = self._stage(256, 512, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    @staticmethod
    def _stage(c_in, c_out, stride):
        return nn.Sequential(BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out, 1))

    def forward(self, x):
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.pool(x).flatten(1)) * self.logit_scale


MODELS = {"custom_resnet": CustomResNet, "resnet18": ResNet18}
# Layers worth a GradCAM look (gradcam.py, the app), deepest first, with their feature-map size for
# 32x32 inputs.
GRADCAM_LAYERS = {
    "custom_resnet": {"layer3": "4x4", "layer2": "8x8", "res1": "16x16", "layer1": "16x16"},
    "resnet18": {"layer4": "4x4", "layer3": "8x8", "layer2": "16x16", "layer1": "32x32"},
}
# The 8x8 stage: the last 4x4 one is too coarse to tell which part of a 32x32 image counted.
DEFAULT_LAYERS = {"custom_resnet": "layer2", "resnet18": "layer3"}


def build_model(name, num_classes=10, logit_scale=1.0):
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}: choose one of {', '.join(MODELS)}")
    return MODELS[name](num_classes=num_classes, logit_scale=logit_scale)


def count_parameters(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def to_input(images, mean, std):
    """uint8 images as stored (N, H, W, 3: a NumPy array or a tensor on any device) -> the float32
    (N, 3, H, W) batch the networks take: each channel minus the training set's mean, over its std
    (pixels scaled to [0, 1]).

    The same float32 arithmetic as albumentations' Normalize (utils.eval_transforms), so both give
    the same bits; written with torch alone because the exported Space has no albumentations."""
    images = torch.as_tensor(images)
    if images.dtype != torch.uint8:
        raise ValueError(f"to_input expects uint8 images, got {images.dtype}")

    def per_channel(values):
        return torch.as_tensor(values, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)

    scale = torch.reciprocal(per_channel(std) * 255.0)
    return (images.permute(0, 3, 1, 2).float() - per_channel(mean) * 255.0) * scale


@contextmanager
def eval_mode(model):
    """Run the block with the model in eval mode (BatchNorm uses its running statistics and leaves
    them alone), then put it back in the train/eval mode it was in."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@torch.no_grad()
def class_probabilities(model, inputs):
    """Softmax of the logits, in float32: how sure the network is of each class (the networks return
    logits)."""
    return torch.softmax(model(inputs).float(), dim=1)
