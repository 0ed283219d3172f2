"""One-shot magnitude pruning's parts on hand-worked numbers: block scores (edges that do not fill a
block are averaged over the entries they have), the options' bounds and default timing, the scopes."""
import json

import pytest
import torch
from torch import nn

from compress.api import attach_pruner
from compress.errors import UserError
from compress.pruners.magnitude import block_scores, magnitude_masks


def test_block_scores_average_each_block_and_partial_blocks_over_what_they_hold():
    w = torch.tensor([[1., -2., 3., 4., 5.],
                      [-5., 6., 7., -8., 9.],
                      [10., 20., 30., 40., 50.]])
    # 2x2 blocks: rows {0,1} x cols {0,1}, {2,3}, {4}; row {2} x the same columns
    expected = torch.tensor([[3.5, 3.5, 5.5, 5.5, 7.0],
                             [3.5, 3.5, 5.5, 5.5, 7.0],
                             [15., 15., 35., 35., 50.]])
    assert torch.equal(block_scores(w, (2, 2)), expected)
    assert torch.equal(block_scores(w, (1, 1)), w.abs())
    assert torch.equal(block_scores(w, (1, 5)), w.abs().mean(1, keepdim=True).expand(3, 5))


def test_block_scores_of_a_conv_weight_use_its_output_rows():
    w = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(2, 3, 2, 2) - 10  # 2 rows of 12 inputs
    scores = block_scores(w, (1, 12))
    assert scores.shape == w.shape
    assert torch.equal(scores[0].flatten(), w[0].abs().mean().expand(12))
    assert torch.equal(scores[1].flatten(), w[1].abs().mean().expand(12))


def two_layers() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 4))
    with torch.no_grad():
        model[0].weight.mul_(10)  # layer 0 large, layer 1 small: a global cut takes layer 1 first
    return model


def test_scope_layer_cuts_every_layer_alike_even_from_a_parsed_config():
    scope = json.loads('"layer"')  # a string from a file, not the literal in the code
    masks = magnitude_masks(two_layers(), ["0", "1"], 0.5, scope)
    assert [int((~m).sum()) for m in masks.values()] == [32, 16]
    masks = magnitude_masks(two_layers(), ["0", "1"], 0.5, json.loads('"global"'))
    assert [int((~m).sum()) for m in masks.values()] == [16, 32]


def test_options_are_bounded_and_the_default_prunes_half_way():
    model = two_layers()
    with pytest.raises(UserError, match="sparsity"):
        attach_pruner(model, "magnitude", epochs=4, steps_per_epoch=1, lr=0.1, sparsity=1.0)
    with pytest.raises(UserError, match="prune_after"):
        attach_pruner(model, "magnitude", epochs=4, steps_per_epoch=1, lr=0.1, prune_after=1.0)
    pruner = attach_pruner(model, "magnitude", epochs=4, steps_per_epoch=1, lr=0.1, sparsity=0.25)
    assert pruner.prune_epoch == 2  # prune_after = 0.5 of 4 epochs
    for epoch in range(4):
        pruner.begin_epoch(epoch)
        zeros = sum(int((model.get_submodule(n).weight == 0).sum()) for n in pruner.layers)
        assert zeros == (0 if epoch < 2 else 24), epoch  # 25% of 96 weights, from epoch 2 on
