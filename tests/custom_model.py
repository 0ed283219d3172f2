"""A user model factory, referenced from tests as model.name = 'custom_model:make'."""
import torch
from torch import nn


def make(input_shape, num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(int(input_shape[0] * input_shape[1] * input_shape[2]), 32),
                         nn.ReLU(), nn.Linear(32, num_classes))


def not_a_model(input_shape, num_classes):
    return "nope"


def broken(input_shape, num_classes):
    raise ValueError("the user's factory has a bug")


def no_kwargs(shape):
    return make(shape, 10)


class Inception(torch.nn.Module):
    """Concatenations along the channels: two branches side by side, BatchNorm over the joined tensor,
    a residual add of two equally concatenated tensors, and a Linear over the flattened concatenation."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        nn = torch.nn
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.a, self.b = nn.Conv2d(8, 6, 1), nn.Conv2d(8, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(10)
        self.a2, self.b2 = nn.Conv2d(10, 6, 1), nn.Conv2d(10, 4, 3, padding=1)
        self.mix = nn.Conv2d(10, 12, 3, padding=1)
        self.fc = nn.Linear(12 * 4 * 4 + 10, num_classes)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        y = torch.relu(self.bn(torch.cat([self.a(x), self.b(x)], 1)))
        z = torch.cat([self.a2(y), self.b2(y)], dim=1) + y  # a add of two [6 | 4] concatenations
        m = torch.nn.functional.adaptive_avg_pool2d(self.mix(z), 4)
        pooled = torch.flatten(torch.nn.functional.adaptive_avg_pool2d(z, 1), 1)
        return self.fc(torch.cat((torch.flatten(m, 1), pooled), 1))


def convnext_like(input_shape, num_classes):
    """torchvision's own ConvNeXt pieces (channels-first LayerNorm2d, CNBlock with its permutes,
    LayerNorm, layer scale and stochastic depth) on a small stem: a stream cut through LayerNorms."""
    from torchvision.models.convnext import CNBlock, LayerNorm2d
    return nn.Sequential(nn.Conv2d(input_shape[0], 32, 3, padding=1), LayerNorm2d(32),
                         CNBlock(32, 0.5, 0.0), CNBlock(32, 0.5, 0.0), nn.AdaptiveAvgPool2d(1), LayerNorm2d(32),
                         nn.Flatten(), nn.Linear(32, num_classes))


def exits(input_shape, num_classes):
    raise SystemExit(0)


class _FailsInTraining(nn.Module):
    def __init__(self, input_shape, num_classes):
        super().__init__()
        self.net = make(input_shape, num_classes)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if self.training and self.calls > 3:  # builds and traces fine, then fails mid-training
            raise RuntimeError("the user's forward has a bug")
        return self.net(x)


def fails_in_training(input_shape, num_classes):
    return _FailsInTraining(input_shape, num_classes)


def three_classes(input_shape, num_classes):
    return make(input_shape, 3)
