"""Model zoo by name. Input shape and class count always come from the data, never hard-coded."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn


from ..errors import UserError
from ..imports import load_object
from ..config.model import ModelConfig
from .mobilenet import MobileNetV1
from .resnet import CifarResNet
from .small import MLP, LeNet5
from .spiking import sew_resnet, spiking_cnn
from .vgg import VGG


MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": lambda cfg, shape, classes: MLP(shape, classes, cfg.hidden),
    "lenet5": lambda cfg, shape, classes: LeNet5(shape, classes),
    "resnet20": lambda cfg, shape, classes: CifarResNet(20, shape[0], classes, cfg.width),
    "resnet32": lambda cfg, shape, classes: CifarResNet(32, shape[0], classes, cfg.width),
    "resnet56": lambda cfg, shape, classes: CifarResNet(56, shape[0], classes, cfg.width),
    "vgg16": lambda cfg, shape, classes: VGG(16, shape[0], classes, cfg.width),
    "vgg19": lambda cfg, shape, classes: VGG(19, shape[0], classes, cfg.width),
    "mobilenet_v1": lambda cfg, shape, classes: MobileNetV1(shape[0], classes, cfg.width),
    "spiking_cnn": lambda cfg, shape, classes: spiking_cnn(shape, classes, cfg.time_steps, cfg.neuron, cfg.width),
    "sew_resnet18": lambda cfg, shape, classes: sew_resnet(18, shape, classes, cfg.time_steps, cfg.neuron, cfg.cnf),
    "sew_resnet34": lambda cfg, shape, classes: sew_resnet(34, shape, classes, cfg.time_steps, cfg.neuron, cfg.cnf),
}


class RepeatChannels(nn.Module):
    """Feeds grey images to models built for RGB by repeating the channel."""

    def __init__(self, model: nn.Module, channels: int):
        super().__init__()
        self.model, self.channels = model, channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.expand(-1, self.channels, -1, -1))


def torchvision_model(name: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    import torchvision

    try:
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    except (ValueError, KeyError) as e:
        raise UserError(f"model.name: torchvision has no model {name!r} ({e})") from None
    return RepeatChannels(model, 3) if input_shape[0] == 1 else model


def timm_model(name: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """timm's model `name` (random weights; pass trained ones with model.weights) for this data: its
    input channels and classes, and its input size where the architecture fixes one (ViT, Swin)."""
    try:
        import timm
    except ImportError:
        raise UserError("model.name: 'timm:...' needs the timm package (pip install 'sparsepipe[timm]')") from None
    if not timm.is_model(name):
        raise UserError(f"model.name: timm has no model {name!r} (timm.list_models() lists them)")
    kwargs = dict(pretrained=False, num_classes=num_classes, in_chans=input_shape[0])
    try:
        return timm.create_model(name, img_size=tuple(input_shape[1:]), **kwargs)
    except TypeError:  # a convolutional model: any input size
        return timm.create_model(name, **kwargs)


def build_model(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Instantiate the configured model for data of `input_shape` with `num_classes` classes."""
    if cfg.name in MODELS:
        return MODELS[cfg.name](cfg, tuple(input_shape), num_classes)
    module_name, _, attr = cfg.name.partition(":")
    if module_name == "torchvision":
        return torchvision_model(attr, tuple(input_shape), num_classes)
    if module_name == "timm":
        return timm_model(attr, tuple(input_shape), num_classes)
    factory = load_object(cfg.name, "model.name")
    try:
        model = factory(input_shape=tuple(input_shape), num_classes=num_classes)
    except Exception as e:  # the user's code: say whose and what, in one line
        raise UserError(f"model.name: {cfg.name!r} raised {type(e).__name__}: {str(e)[:200]}") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"model.name: {cfg.name!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model
