"""Model zoo by name. Input shape and class count always come from the data, never hard-coded."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn


from ..errors import UserError
from ..imports import call_user, load_object
from ..structured.attention import prepare_attention
from ..config.model import ModelConfig
from .mobilenet import MobileNetV1
from .resnet import CifarResNet
from .small import MLP, LeNet5, LeNet5Caffe
from .spiking import sew_resnet, spiking_cnn
from .vgg import VGG


MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": lambda cfg, shape, classes: MLP(shape, classes, cfg.hidden),
    "lenet5": lambda cfg, shape, classes: LeNet5(shape, classes),
    "lenet5_caffe": lambda cfg, shape, classes: LeNet5Caffe(shape, classes),
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


MAX_PARAMETERS = 1 << 30  # 4 GiB of float32 weights


def build_model(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Instantiate the configured model for data of `input_shape` with `num_classes` classes. Its
    nn.MultiheadAttention layers come as the equivalent HeadsAttention (same function, Parameters and
    state_dict keys; compress/structured/attention.py), so that every method sees the same layers
    (`in_proj` a Linear) and heads can be cut."""
    model = _build(cfg, input_shape, num_classes)
    prepare_attention(model, torch.zeros(2, *input_shape))
    return model


def _build(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    module_name, _, attr = cfg.name.partition(":")
    if cfg.name in MODELS or module_name == "torchvision":
        def make() -> nn.Module:
            if cfg.name in MODELS:
                return MODELS[cfg.name](cfg, tuple(input_shape), num_classes)
            return torchvision_model(attr, tuple(input_shape), num_classes)
        try:
            with torch.device("meta"):  # count the parameters before allocating any
                size = sum(p.numel() for p in make().parameters())
        except RuntimeError as e:  # "Storage size calculation overflowed": far too large
            size = MAX_PARAMETERS + 1 if "overflow" in str(e) else 0  # else: built for real, unchecked
        except Exception:
            size = 0
        if size > MAX_PARAMETERS:
            count = "more" if size == MAX_PARAMETERS + 1 else f"{size:,}"
            raise UserError(f"model: {cfg.name!r} with these settings has {count} parameters, more than the "
                            f"{MAX_PARAMETERS:,} sparsepipe builds (check model.hidden / model.width)")
        try:
            return make()
        except (MemoryError, RuntimeError) as e:
            if isinstance(e, RuntimeError) and "allocate" not in str(e):
                raise
            raise UserError(f"model: building {cfg.name!r} ran out of memory (check model.hidden / model.width)") \
                from None
    if module_name == "timm":
        return timm_model(attr, tuple(input_shape), num_classes)
    model = call_user(load_object(cfg.name, "model.name"), cfg.name, "model.name", input_shape=tuple(input_shape),
                      num_classes=num_classes)
    if not isinstance(model, nn.Module):
        raise UserError(f"model.name: {cfg.name!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model
