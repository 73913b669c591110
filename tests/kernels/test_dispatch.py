"""Backend choice, the fallback when headwater._C is missing, and the C++ boundary checks."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from headwater.kernels import _dispatch, cosine_topk

ext = _dispatch.load_extension()
needs_ext = pytest.mark.skipif(ext is None, reason=str(_dispatch.extension_error()))


@pytest.fixture
def missing_extension(monkeypatch):
    """The loader's state as on a machine where headwater._C was never built."""
    monkeypatch.setattr(_dispatch, "_extension_tried", True)
    monkeypatch.setattr(_dispatch, "_extension", None)
    monkeypatch.setattr(_dispatch, "_extension_error", "headwater._C is not available (test)")
    monkeypatch.setattr(_dispatch, "_logged", set())


def test_auto_falls_back_to_torch_and_says_why_once(missing_extension, caplog):
    caplog.set_level(logging.DEBUG, logger="headwater.kernels")
    xq, xb = torch.randn(3, 8), torch.randn(20, 8)
    D, I = cosine_topk(xq, xb, 4)
    D2, I2 = cosine_topk(xq, xb, 4, backend="torch")
    assert torch.equal(I, I2) and torch.equal(D, D2)
    cosine_topk(xq, xb, 4)
    fallback = "cosine_topk: using the torch backend (headwater._C is not available (test))"
    messages = [r.getMessage() for r in caplog.records]
    assert messages.count(fallback) == 1, messages  # logged once, not per call


def test_cpp_by_name_without_extension_is_an_error(missing_extension):
    with pytest.raises(RuntimeError, match="backend='cpp' cannot run: headwater._C is not available"):
        cosine_topk(torch.randn(1, 4), torch.randn(5, 4), 2, backend="cpp")


@needs_ext
def test_auto_uses_cpp_on_cpu(monkeypatch):
    monkeypatch.setattr(_dispatch, "_logged", set())
    assert _dispatch.resolve_backend("cosine_topk", "auto", torch.device("cpu")) == "cpp"
    assert (
        _dispatch.resolve_backend("masked_mean_pool", "auto", torch.device("cpu"), available=("triton", "torch"))
        == "torch"
    )


@needs_ext
@pytest.mark.parametrize(
    "args, match",
    [
        ((np.ones((2, 3), np.float64), np.ones(3, np.float32), 0), r"scores must be a C-contiguous float32 array with 2"),
        ((np.ones((2, 3), np.float32), np.ones(4, np.float32), 0), r"inv_norms must have one entry per score column \(3\), got 4"),
        ((np.ones((2, 3), np.float32)[:, :2], np.ones(2, np.float32), 0), "not C-contiguous"),
        ((np.ones((2, 3), np.float32), np.ones(3, np.float32), -1), "offset must be >= 0"),
    ],
)
def test_merge_checks_its_arguments(args, match):
    heap_s = np.full((2, 4), -np.inf, np.float32)
    heap_i = np.full((2, 4), -1, np.int64)
    with pytest.raises(ValueError, match=match):
        ext.topk_merge_tile(*args, heap_s, heap_i)


@needs_ext
def test_merge_rejects_read_only_or_mismatched_heaps():
    scores, inv = np.ones((2, 3), np.float32), np.ones(3, np.float32)
    heap_s = np.full((2, 4), -np.inf, np.float32)
    heap_i = np.full((2, 4), -1, np.int64)
    heap_s.flags.writeable = False
    with pytest.raises(ValueError, match="heap_scores must be a C-contiguous writeable float32"):
        ext.topk_merge_tile(scores, inv, 0, heap_s, heap_i)
    with pytest.raises(ValueError, match="same shape"):
        ext.topk_merge_tile(scores, inv, 0, np.zeros((2, 4), np.float32), np.zeros((2, 5), np.int64))
    with pytest.raises(ValueError, match=r"heap rows \(3\) must equal score rows \(2\)"):
        ext.topk_merge_tile(scores, inv, 0, np.zeros((3, 4), np.float32), np.zeros((3, 4), np.int64))


@needs_ext
def test_merge_and_sort_directly():
    # two tiles with global offsets, ties across them: lower index wins, order is (score desc, index asc)
    heap_s = np.full((1, 3), -np.inf, np.float32)
    heap_i = np.full((1, 3), -1, np.int64)
    ext.topk_merge_tile(np.array([[0.5, 0.9, 0.5]], np.float32), np.ones(3, np.float32), 100, heap_s, heap_i)
    ext.topk_merge_tile(np.array([[0.5, 0.9]], np.float32), np.ones(2, np.float32), 10, heap_s, heap_i)
    ext.topk_sort_rows(heap_s, heap_i)
    assert heap_i.tolist() == [[11, 101, 10]]
    np.testing.assert_array_equal(heap_s, np.array([[0.9, 0.9, 0.5]], np.float32))


@needs_ext
def test_fused_scores_and_norms_match_numpy():
    g = np.random.default_rng(0)
    xq = g.standard_normal((3, 37)).astype(np.float32)
    xb = g.standard_normal((50, 37)).astype(np.float32)
    xb[7] = 0
    raw = np.empty((3, 50), np.float32)
    inv = np.empty(50, np.float32)
    assert ext.cosine_scores_few_queries(xq, xb, raw, inv) == -1
    np.testing.assert_allclose(raw, xq.astype(np.float64) @ xb.T.astype(np.float64), rtol=1e-5, atol=1e-5)
    norms = np.linalg.norm(xb.astype(np.float64), axis=1)
    np.testing.assert_allclose(inv[norms > 0], 1 / norms[norms > 0], rtol=1e-6)
    assert inv[7] == 0
    xb[9, 3] = np.nan
    assert ext.cosine_scores_few_queries(xq, xb, raw, inv) == 9
    assert ext.inverse_row_norms(xb, inv) == 9
    with pytest.raises(ValueError, match="keys must have d=37 columns"):
        ext.cosine_scores_few_queries(xq, xb[:, :5].copy(), raw, inv)


@pytest.mark.parametrize(
    "triton_version, numpy_version, broken",
    [("3.6.0", "2.4.6", True), ("3.6.0", "2.3.5", False), ("3.7.1", "2.4.6", False), ("3.10.0", "2.5.0", False),
     ("3.5.1+git123", "2.4.0rc1", True)],
)
def test_interpreter_incompatibility_names_the_version_pair(triton_version, numpy_version, broken):
    reason = _dispatch.interpreter_incompatibility(triton_version, numpy_version)
    assert (reason is not None) == broken
    if broken:
        assert triton_version in reason and numpy_version in reason
