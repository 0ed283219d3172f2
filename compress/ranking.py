"""The one lowest-k rule every pruner selects with: stable, so ties go to the earlier index."""
from __future__ import annotations

import torch


def lowest(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Indices (ascending) of the `count` lowest entries of the flattened `scores`."""
    count = max(0, min(int(count), scores.numel()))
    return torch.argsort(scores.flatten(), stable=True)[:count].sort().values


def lowest_mask(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Boolean tensor shaped like `scores`, True at its `count` lowest entries."""
    mask = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    mask[lowest(scores, count)] = True
    return mask.view_as(scores)
