"""Gradual magnitude pruning: its option ranges and when its masks move (on weights, hand-counted)."""
import pytest
import torch
from torch import nn

from compress.config.prune import PruneConfig
from compress.pruners import TrainPlan
from compress.pruners.gmp import GMPOptions, GMPPruner
from compress.schema import parse


def parse_gmp(**options) -> GMPOptions:
    return parse(PruneConfig, {"method": "gmp", "gmp": options}, "prune").gmp


def test_options_accept_their_documented_ranges_and_refuse_outside():
    defaults = parse_gmp()
    assert (defaults.sparsity, defaults.start, defaults.end, defaults.frequency, defaults.block) == \
        (0.9, 0.1, 0.7, 20, [1, 1])
    for ok in ({"sparsity": 0.0}, {"sparsity": 0.99}, {"start": 0.0}, {"start": 0.5}, {"end": 1.0},
               {"block": [1, 4]}, {"block": [2, 2]}):
        parse_gmp(**ok)
    for bad in ({"sparsity": 1.0}, {"sparsity": -0.1}, {"start": 1.0}, {"start": -0.1}, {"end": 0.0},
                {"frequency": 0}, {"block": [0, 1]}, {"block": [4]}, {"block": [1, 1, 1]}):
        with pytest.raises(Exception, match="gmp." + next(iter(bad)) + ": expected"):
            parse_gmp(**bad)


def zeros_after_each_step(pruner, layer: nn.Module, steps: int) -> tuple[list[int], list[int], list[dict]]:
    """Step a mask pruner without training: the zeros in `layer` after each step, the steps where
    that count moved, and the pruner's log after each step."""
    zeros, moved, logs = [], [], []
    for step in range(steps):
        pruner.after_step(step, 0.1)
        zeros.append(int((layer.weight == 0).sum()))
        logs.append(pruner.log_state())
        if step and zeros[-1] != zeros[-2]:
            moved.append(step)
    return zeros, moved, logs


def test_the_masks_move_every_frequency_steps_from_start_and_at_end_only():
    """20 steps, start 0.2 (step 4), end 0.6 (step 12), every 3 steps: the cubic ramp is 0 at step 4, so
    the zeros change at steps 7, 10 and 12 and nowhere else, ending at 90% of 200 weights."""
    torch.manual_seed(0)
    layer = nn.Linear(20, 10, bias=False)
    pruner = GMPPruner(GMPOptions(sparsity=0.9, start=0.2, end=0.6, frequency=3))
    pruner.attach(nn.Sequential(layer), ["0"], TrainPlan(1, 20, lambda s: 0.1))
    zeros, moved, logs = zeros_after_each_step(pruner, layer, 20)
    assert [log["masked"] for log in logs] == [step >= 7 for step in range(20)]  # no mask while the ramp is 0
    assert moved == [7, 10, 12] and zeros[:7] == [0] * 7 and zeros[-1] == 180, (moved, zeros)
    # s(t) = 0.9 (1 − (1 − (t − 4) / 8)³) of 200 weights, rounded: 136 at step 7, 177 at step 10
    assert (zeros[7], zeros[10]) == (136, 177), zeros


def test_the_final_sparsity_is_set_at_the_end_step_even_off_the_frequency_grid():
    """1000 steps, end 0.7 (step 700), every 250 steps from step 100: the grid's last update is at step
    600 (s = 0.9·(1 − (100/600)³) = 0.89583: 8958 of 10,000 weights); only the rule 'and at end' brings
    the mask to 9000 at step 700."""
    torch.manual_seed(0)
    layer = nn.Linear(100, 100, bias=False)
    pruner = GMPPruner(GMPOptions(sparsity=0.9, start=0.1, end=0.7, frequency=250))
    pruner.attach(nn.Sequential(layer), ["0"], TrainPlan(1, 1000, lambda s: 0.1))
    for step in range(701):
        pruner.after_step(step, 0.1)
        if step == 699:
            assert int((layer.weight == 0).sum()) == 8958
    assert int((layer.weight == 0).sum()) == 9000
