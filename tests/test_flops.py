"""MAC counting: torch's FlopCounterMode, equal to the per-layer count on CNNs, right on tokens."""
import pytest
import torch
from torch import nn

from compress.flops import count_macs
from compress.models import ModelConfig, build_model


@pytest.mark.parametrize("name", ["mlp", "lenet5", "resnet20", "vgg16", "mobilenet_v1"])
def test_dense_count_equals_the_per_layer_count_on_cnns(name):
    model = build_model(ModelConfig(name=name), (1, 28, 28), 10)
    r = count_macs(model, (1, 28, 28))
    assert r["dense"] == sum(d for d, _ in r["per_layer"].values()) > 0


def test_a_linear_on_tokens_counts_once_per_token():
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    r = count_macs(model, (12, 16))  # 12 tokens of 16 features
    assert r["dense"] == 12 * (16 * 32 + 32 * 8)
    assert r["per_layer"]["0"] == (12 * 16 * 32, 12 * 16 * 32)


def test_transformer_attention_is_counted():
    layer = nn.TransformerEncoderLayer(d_model=32, nhead=4, dim_feedforward=64, batch_first=True)
    linear_only = 10 * (32 * 96 + 32 * 32 + 32 * 64 + 64 * 32)  # qkv, out projection, MLP; per token
    macs = count_macs(layer, (10, 32))["dense"]
    assert macs > linear_only  # plus the attention matmuls QKᵀ and AV: 2 · 10 · 10 · 32
    assert macs == linear_only + 2 * 10 * 10 * 32


def test_sparse_count_skips_zero_weights():
    model = nn.Linear(10, 4)
    with torch.no_grad():
        model.weight[:2] = 0
    r = count_macs(model, (10,))
    assert r["dense"] == 40 and r["sparse"] == 20
