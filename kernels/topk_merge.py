"""Running top-k lists shared by every top-k backend: empty results, ordering, merging.

A top-k list is ``(scores [Q, k] float32, indices [Q, k] int64)`` ordered by score descending,
equal scores by index ascending; missing slots hold ``MISSING_SCORE`` (-inf) and
``MISSING_INDEX`` (-1) and sort last.
"""
from __future__ import annotations

import torch

MISSING_SCORE = float("-inf")
MISSING_INDEX = -1


def empty_result(q: int, k: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    scores = torch.full((q, k), MISSING_SCORE, dtype=torch.float32, device=device)
    indices = torch.full((q, k), MISSING_INDEX, dtype=torch.int64, device=device)
    return scores, indices


def sort_by_score_then_index(
    scores: torch.Tensor, indices: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows reordered by (score descending, index ascending); missing slots (-inf, -1) go last.

    Two passes: sort by index, then a *stable* sort by score keeps equal scores in index order.
    """
    by_index = torch.where(indices < 0, torch.iinfo(torch.int64).max, indices)
    by_index, order = torch.sort(by_index, dim=1)
    scores = scores.gather(1, order)
    scores, order = torch.sort(scores, dim=1, descending=True, stable=True)
    indices = by_index.gather(1, order)
    indices = torch.where(indices == torch.iinfo(torch.int64).max, MISSING_INDEX, indices)
    return scores, indices


def merge_topk(
    run_s: torch.Tensor, run_i: torch.Tensor, new_s: torch.Tensor, new_i: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    scores, indices = sort_by_score_then_index(
        torch.cat([run_s, new_s], dim=1), torch.cat([run_i, new_i], dim=1)
    )
    return scores[:, :k].contiguous(), indices[:, :k].contiguous()
