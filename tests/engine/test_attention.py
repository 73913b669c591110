"""Query-chunked attention of packed rows, and the CPU allocator setting."""
from __future__ import annotations

import contextlib
import sys

import pytest
import torch
from test_engine import build_arch, make_pairs, reference_differences
from transformers.integrations import sdpa_attention

import headwater.engine.pair_forward as pairs_module
from headwater.engine import allocator, attention
from headwater.engine.pair_forward import FORWARDS
from headwater.engine.tokenization import encode_pair


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("arch", ["llama", "olmo2", "qwen2"])
@pytest.mark.parametrize("chunk", [5, 64])
def test_chunked_packed_rows_equal_unchunked_separate_and_the_reference(arch, chunk, tiny_tokenizer, monkeypatch):
    model = build_arch(arch, tiny_tokenizer)
    pairs = make_pairs(6, seed=21, max_words=20)  # rows of 100-200 tokens: several chunks
    encoded = [encode_pair(tiny_tokenizer, p) for p in pairs]
    widths = [len(c.input_ids) + r.response_length for c, r in encoded]
    assert max(widths) > 2 * chunk
    pad = tiny_tokenizer.pad_token_id
    calls = []
    original = sdpa_attention.sdpa_attention_forward

    def counting(module, query, *args, **kwargs):
        calls.append(query.shape[2])
        return original(module, query, *args, **kwargs)

    monkeypatch.setattr(sdpa_attention, "sdpa_attention_forward", counting)
    monkeypatch.setattr(attention, "QUERY_CHUNK", chunk)
    chunked = FORWARDS["packed"](model, encoded, 2, pad_token_id=pad)
    assert len(calls) == 2 * -(-max(widths) // chunk) and max(calls) == chunk  # two blocks, every chunk
    assert model.config._attn_implementation == "sdpa"  # restored

    monkeypatch.setattr(pairs_module, "chunked_causal_attention", lambda model: contextlib.nullcontext())
    calls.clear()
    whole = FORWARDS["packed"](model, encoded, 2, pad_token_id=pad)
    assert calls == []  # transformers' registered sdpa function, whole rows
    torch.testing.assert_close(chunked, whole, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(chunked, FORWARDS["separate"](model, encoded, 2, pad_token_id=pad), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(chunked.double(), reference_differences(model, tiny_tokenizer, pairs, 2), atol=1e-5, rtol=1e-4)


def test_chunking_restores_the_attention_setting_and_leaves_eager_alone(tiny_tokenizer):
    model = build_arch("llama", tiny_tokenizer)
    with pytest.raises(RuntimeError, match="inside"):
        with attention.chunked_causal_attention(model):
            assert model.config._attn_implementation == attention.CHUNKED_SDPA
            raise RuntimeError("inside")
    assert model.config._attn_implementation == "sdpa"
    model.config._attn_implementation = "eager"
    with attention.chunked_causal_attention(model):
        assert model.config._attn_implementation == "eager"
    assert model.config._attn_implementation == "eager"


def test_short_rows_and_masks_without_chunks_take_sdpa_as_is(tiny_tokenizer):
    model = build_arch("llama", tiny_tokenizer)
    module = model.model.layers[0].self_attn
    q, k, v = torch.randn(2, 4, 7, 8), torch.randn(2, 2, 7, 8), torch.randn(2, 2, 7, 8)
    mask = torch.ones(7, 7, dtype=torch.bool).tril()[None, None].expand(2, 1, 7, 7)
    expected, _ = sdpa_attention.sdpa_attention_forward(module, q, k, v, mask, scaling=8**-0.5)
    got, weights = attention.chunked_sdpa_attention(module, q, k, v, mask, scaling=8**-0.5)
    assert weights is None and torch.equal(got, expected)  # 7 rows: one chunk, the same call


def test_keep_freed_memory_is_applied_once_on_glibc():
    first = allocator.keep_freed_memory()
    assert allocator.keep_freed_memory() is first
    if sys.platform.startswith("linux") and "glibc" in " ".join(__import__("platform").libc_ver()):
        assert first is True
