"""The one lowest-k rule every pruner selects with: stable, so ties go to the earlier index."""
from __future__ import annotations

import torch


def lowest(scores: torch.Tensor, count: int, blocks: int = 1) -> torch.Tensor:
    """Indices (ascending) of the `count` lowest entries of the flattened `scores`; with `blocks` > 1,
    count / blocks from each of that many equal contiguous blocks (a grouped conv's channel groups)."""
    flat = scores.flatten()
    count = max(0, min(int(count), flat.numel()))
    if blocks > 1:
        width, per = flat.numel() // blocks, count // blocks
        return torch.cat([b * width + torch.argsort(flat[b * width:(b + 1) * width], stable=True)[:per]
                          for b in range(blocks)]).sort().values
    return torch.argsort(flat, stable=True)[:count].sort().values


def lowest_mask(scores: torch.Tensor, count: int, blocks: int = 1) -> torch.Tensor:
    """Boolean tensor shaped like `scores`, True at its `count` lowest entries (per block, see `lowest`)."""
    mask = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    mask[lowest(scores, count, blocks)] = True
    return mask.view_as(scores)
