"""The freeze stage's latency check: the stop rule on paired ratios, and a decision that stops early
when the answer is clear (the models differ ~100x in work, so the decision does not hang on timing)."""
import torch
from torch import nn

from deploy.cut_check import median_interval, time_cuts


def test_median_interval_is_order_statistics_around_the_median():
    assert median_interval([0.5] * 40) == (0.5, 0.5)
    lo, hi = median_interval([float(i) for i in range(1, 31)])  # n = 30: k = floor(15 − 0.98·√30) = 9
    assert (lo, hi) == (10.0, 21.0)
    lo, hi = median_interval([float(i) for i in range(1, 301)])  # more rounds: a narrower interval
    assert hi - lo < 0.2 * 300 and lo <= 150.5 <= hi


def test_a_clear_cut_is_decided_before_the_round_limit():
    torch.manual_seed(0)
    big = nn.Sequential(nn.Linear(64, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 4)).eval()
    small = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    timed = time_cuts(big, {"small": small}, torch.randn(4, 64), runs=400, decide_at=1.0, min_runs=30)
    assert timed["rounds"] < 400 and timed["cuts"]["small"]["ratio"] < 1.0
