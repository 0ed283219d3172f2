"""MAC counting: torch's FlopCounterMode, equal to the per-layer count on CNNs, right on tokens."""
import pytest
import torch
from torch import nn

from compress.flops import count_macs
from compress.models import ModelConfig, build_model


@pytest.mark.parametrize("name", ["mlp", "lenet5", "lenet5_caffe", "resnet20", "vgg16", "mobilenet_v1"])
def test_dense_count_equals_the_per_layer_count_on_cnns(name):
    model = build_model(ModelConfig(name=name), (1, 28, 28), 10)
    r = count_macs(model, (1, 28, 28))
    assert r["dense"] == sum(d for d, _ in r["per_layer"].values()) > 0


def test_the_caffe_lenet5_is_the_papers_431k_weight_network():
    """conv 20 → conv 50 → fc 500 → 10 on MNIST: 430,500 weights (431,080 with biases), 2.29 M MACs;
    it also builds for 8x8 digits."""
    model = build_model(ModelConfig(name="lenet5_caffe"), (1, 28, 28), 10)
    assert sum(m.weight.numel() for m in model.modules() if hasattr(m, "weight")) == 430_500
    assert sum(p.numel() for p in model.parameters()) == 431_080
    assert count_macs(model, (1, 28, 28))["dense"] == 20 * 25 * 24 * 24 + 50 * 500 * 8 * 8 + 800 * 500 + 5000
    assert build_model(ModelConfig(name="lenet5_caffe"), (1, 8, 8), 10)(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


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
