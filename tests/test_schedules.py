import math

import pytest

from compress.schedules import lr_at, lr_sum


def test_warmup_then_cosine():
    total, warm, base = 100, 10, 0.1
    lrs = [lr_at(s, total, base, "cosine", warm) for s in range(total)]
    assert lrs[:warm] == pytest.approx([base * (i + 1) / warm for i in range(warm)])
    assert lrs[warm] == pytest.approx(base)
    assert all(a >= b for a, b in zip(lrs[warm:], lrs[warm + 1:]))  # monotone decay
    assert lrs[-1] < 0.01 * base


def test_constant_and_lr_sum():
    assert lr_at(57, 100, 0.3, "constant") == 0.3
    assert lr_sum(0, 10, 10, 0.5, "constant") == pytest.approx(5.0)
    with pytest.raises(ValueError):
        lr_at(0, 10, 0.1, "triangle")


def test_cosine_end_value():
    assert lr_at(99, 100, 1.0, "cosine", final_fraction=0.1) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 99 / 100)))
