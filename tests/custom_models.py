"""Users' own networks for arch=custom, as the README's example uses them:

    python -m phases.run arch=custom arch.target=tests.custom_models.TinyNet arch.kwargs={width:8}
"""

from __future__ import annotations

import torch
from torch import nn


class TinyNet(nn.Module):
    """Two conv blocks, global average pool, one Linear: the smallest network with a trunk and a classifier.
    It names num_classes and in_channels, so the dataset sets them; `width` comes from arch.kwargs."""

    def __init__(self, num_classes: int, in_channels: int, width: int = 4):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=3, stride=2, padding=1)
        self.norm1 = nn.BatchNorm2d(width)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(width, 2 * width, kernel_size=3, stride=2, padding=1)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.relu2(self.conv2(self.relu1(self.norm1(self.conv1(images)))))
        return self.fc(torch.flatten(self.pool(features), 1))


class SevenOutputs(TinyNet):
    """Ignores num_classes: its logits have the wrong width for a 10-class dataset."""

    def __init__(self, in_channels: int):
        super().__init__(num_classes=7, in_channels=in_channels)


class NeedsLargeImages(TinyNet):
    """A 5x5 valid convolution after two stride-2 convs: 8x8 images leave it 2x2, too small."""

    def __init__(self, num_classes: int, in_channels: int):
        super().__init__(num_classes, in_channels)
        self.conv3 = nn.Conv2d(8, 8, kernel_size=5)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.conv3(self.relu2(self.conv2(self.relu1(self.norm1(self.conv1(images))))))
        return self.fc(torch.flatten(self.pool(features), 1))
