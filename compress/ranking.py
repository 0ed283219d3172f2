"""The one lowest-k rule every pruner selects with: stable, so ties go to the earlier index."""
from __future__ import annotations

import torch


def lowest(scores: torch.Tensor, count: int, blocks: int = 1, contiguous: bool = False) -> torch.Tensor:
    """Indices (ascending) of the `count` lowest entries of the flattened `scores`; with `blocks` > 1,
    count / blocks from each of that many equal contiguous blocks (a grouped conv's channel groups);
    with `contiguous`, from the two ends only, so that the rest stays one run (the split of `count`
    between the ends with the lowest sum, the earliest on ties)."""
    flat = scores.flatten()
    count = max(0, min(int(count), flat.numel()))
    if contiguous:
        n, sums = flat.numel(), torch.cat([flat.new_zeros(1, dtype=torch.float64), flat.double().cumsum(0)])
        cost = [float(sums[j] + sums[n] - sums[n - count + j]) for j in range(count + 1)]
        j = cost.index(min(cost))
        return torch.cat([torch.arange(j), torch.arange(n - count + j, n)])
    if blocks > 1:
        width, per = flat.numel() // blocks, count // blocks
        return torch.cat([b * width + torch.argsort(flat[b * width:(b + 1) * width], stable=True)[:per]
                          for b in range(blocks)]).sort().values
    return torch.argsort(flat, stable=True)[:count].sort().values


def lowest_mask(scores: torch.Tensor, count: int, blocks: int = 1, contiguous: bool = False) -> torch.Tensor:
    """Boolean tensor shaped like `scores`, True at its `count` lowest entries (per block, or at the ends:
    see `lowest`)."""
    mask = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    mask[lowest(scores, count, blocks, contiguous)] = True
    return mask.view_as(scores)
