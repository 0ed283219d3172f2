"""The [model] section."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..errors import UserError
from ..schema import opt

ZOO = ("mlp", "lenet5", "lenet5_caffe", "resnet20", "resnet32", "resnet56", "vgg16", "vgg19", "mobilenet_v1", "spiking_cnn",
       "sew_resnet18", "sew_resnet34")


@dataclass
class ModelConfig:
    name: str = opt("mlp", "Model: mlp, lenet5, lenet5_caffe (the papers' 431K LeNet-5), resnet20/32/56, vgg16/19, mobilenet_v1, spiking_cnn, "
                    "sew_resnet18/34, 'torchvision:NAME' "
                    "(e.g. torchvision:resnet18), 'timm:NAME' (e.g. timm:efficientnet_b0; needs timm), or 'package.module:factory' called as "
                    "factory(input_shape=..., num_classes=...).")
    hidden: list[int] = opt([256, 256], "mlp: widths of the hidden layers.", lo=1)
    width: float = opt(1.0, "resnet/vgg/mobilenet_v1/spiking_cnn: channel width multiplier.", lo=0.0, lo_open=True)
    time_steps: int = opt(4, "Spiking models: time steps T (the image is repeated over T: direct encoding).", lo=1)
    neuron: Literal["if", "lif"] = opt("if", "Spiking models: integrate-and-fire (default; learns fastest here) or leaky IF (tau 2).")
    weights: str = opt("", "Trained weights to start from: a .safetensors file, or a .pt/.pth state_dict "
                       "(also {'state_dict': ...} / {'model': ...}, DDP's 'module.' prefixes), loaded with "
                       "weights_only=True. Relative paths are taken from the working directory.")
    baseline: Literal["given", "trained"] = opt(
        "given", "With weights: 'given' uses that model unchanged as the dense baseline (evaluated and "
        "exported, not retrained); 'trained' fine-tunes it with the same budget as the pruned model.")
    cnf: Literal["ADD", "IAND"] = opt("ADD", "SEW ResNet: connect function of the spike-element-wise blocks.")

    def check(self, where: str) -> None:
        if len(self.hidden) > 64:
            raise UserError(f"{where}.hidden: {len(self.hidden)} hidden layers, at most 64")
        if self.name not in ZOO and ":" not in self.name:
            raise UserError(f"{where}.name: unknown model {self.name!r} "
                            f"(expected one of: {', '.join(ZOO)}, or 'package.module:factory')")

