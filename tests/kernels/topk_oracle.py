"""Float64 oracle for cosine top-k results, tolerant only of documented near-ties."""
from __future__ import annotations

import numpy as np
import torch

# Scores are computed in float32 from inputs of at most a few thousand columns: the error of a
# float32 dot product of unit vectors stays far below this. Keys whose float64 cosines are closer
# than this may legitimately come out in either order.
TIE_TOL = 2e-5


def cosine64(queries: torch.Tensor, keys: torch.Tensor) -> np.ndarray:
    """Cosine matrix [Q, N] in float64 from the same (already rounded) input values; zero rows give 0."""
    q = queries.detach().cpu().to(torch.float64).numpy()
    b = keys.detach().cpu().to(torch.float64).numpy()
    qn = np.linalg.norm(q, axis=1, keepdims=True)
    bn = np.linalg.norm(b, axis=1, keepdims=True)
    q = np.divide(q, qn, out=np.zeros_like(q), where=qn > 0)
    b = np.divide(b, bn, out=np.zeros_like(b), where=bn > 0)
    return q @ b.T


def check_topk(
    D: torch.Tensor,
    I: torch.Tensor,
    queries: torch.Tensor,
    keys: torch.Tensor,
    k: int,
    tol: float = TIE_TOL,
    valid: np.ndarray | None = None,
) -> None:
    """Assert that (D, I) is an exact top-k of cos(queries, keys) up to near-ties of width ``tol``.

    ``valid`` [N] bool marks the key rows that exist (streamed blocks may leave gaps).
    """
    q, n = queries.shape[0], keys.shape[0]
    assert D.shape == (q, k) and I.shape == (q, k), (D.shape, I.shape)
    assert D.dtype == torch.float32 and I.dtype == torch.int64
    D = D.cpu().numpy()
    I = I.cpu().numpy()
    s64 = cosine64(queries, keys)
    valid = np.ones(n, dtype=bool) if valid is None else valid
    n_valid = int(valid.sum())
    found = min(k, n_valid)
    for row in range(q):
        d_row, i_row = D[row], I[row]
        assert np.all(i_row[found:] == -1), f"row {row}: missing slots must hold -1: {i_row}"
        assert np.all(np.isneginf(d_row[found:])), f"row {row}: missing slots must hold -inf"
        d_row, i_row = d_row[:found], i_row[:found]
        assert np.all(np.isfinite(d_row)), f"row {row}: non-finite score {d_row}"
        assert len(set(i_row.tolist())) == found, f"row {row}: repeated index {i_row}"
        assert np.all((i_row >= 0) & (i_row < n)) and np.all(valid[i_row]), f"row {row}: bad index {i_row}"
        assert np.all(np.diff(d_row) <= 0), f"row {row}: scores not sorted descending {d_row}"
        equal = np.diff(d_row) == 0
        assert np.all(np.diff(i_row)[equal] > 0), f"row {row}: equal scores not ordered by index {i_row}"
        truth = s64[row, i_row]
        np.testing.assert_allclose(d_row, truth, atol=tol, rtol=0, err_msg=f"row {row} scores")
        if found == 0:
            continue
        all_scores = np.where(valid, s64[row], -np.inf)
        kth = np.sort(all_scores)[::-1][found - 1]
        assert np.all(truth >= kth - tol), f"row {row}: returned a key below the k-th score"
        must = np.nonzero(all_scores > kth + tol)[0]
        missing = set(must.tolist()) - set(i_row.tolist())
        assert not missing, f"row {row}: keys {sorted(missing)} beat the k-th score but are missing"
        assert np.all(np.diff(truth) <= tol), f"row {row}: order disagrees with float64 {truth}"
