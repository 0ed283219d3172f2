"""MobileNet-V1 (Howard et al. 2017) with a width multiplier; stride-1 stem for small images."""
from __future__ import annotations

from torch import nn

BLOCKS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [(1024, 2), (1024, 1)]


def conv_bn(cin: int, cout: int, stride: int, groups: int = 1, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU())


class MobileNetV1(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, width: float = 1.0):
        super().__init__()
        c = lambda n: max(int(round(n * width)), 1)  # noqa: E731
        layers = [conv_bn(in_channels, c(32), 1)]
        cin = c(32)
        for cout, stride in BLOCKS:
            layers += [conv_bn(cin, cin, stride, groups=cin), conv_bn(cin, c(cout), 1, kernel=1)]
            cin = c(cout)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))
