"""The streaming engine against transformers' own hidden states, and its store, resume and search."""
from __future__ import annotations

import json
import random

import pytest
import torch
import transformers

from headwater.data import PreferencePair
from headwater.engine.capture import response_activations
from headwater.engine.engine import Engine
from headwater.engine.pair_forward import FORWARDS, PairTokens, check_mode, pair_batches, prompt_sharing_mode
from headwater.engine.store import StoreError, VectorStore
from headwater.engine.tokenization import TokenizationSettings, encode_pair
from headwater.kernels import cosine_topk, cosine_topk_reference

WORDS = (
    "how do I bake bread the sea and sky are blue capital of France is Paris answer without commas "
    "sure mix flour water yeast then bake it for forty minutes I cannot help with that request reply"
).split()


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread; on a busy 2-core machine, OpenMP's second thread
    mostly waits (100x slower per small matmul, measured). Restored after each test."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_pairs(n: int, seed: int = 0, *, max_words: int = 14) -> list[PreferencePair]:
    """Pairs of random lengths (prompts 1..max_words words, responses 1..max_words+4 words)."""
    rng = random.Random(seed)

    def text(k: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(k))

    return [
        PreferencePair(
            f"pair{seed}-{i}",
            text(rng.randint(1, max_words)),
            " " + text(rng.randint(1, max_words + 4)),
            " " + text(rng.randint(1, max_words + 4)),
        )
        for i in range(n)
    ]


def reference_differences(model, tokenizer, pairs, layer, settings=TokenizationSettings()) -> torch.Tensor:
    """The papers' recipe in float64: full forward with output_hidden_states, one sequence at a
    time, the prompt recomputed for each side."""
    out = []
    for pair in pairs:
        sides = []
        for enc in encode_pair(tokenizer, pair, settings):
            with torch.no_grad():
                hidden = model(torch.tensor([enc.input_ids]), output_hidden_states=True).hidden_states[layer][0]
            sides.append(hidden.double()[enc.prompt_length :].mean(0))
        out.append(sides[0] - sides[1])
    return torch.stack(out)


def build_arch(arch: str, tokenizer, *, layers: int = 3, seed: int = 0, **extra) -> torch.nn.Module:
    """A tiny random model of a real architecture sized for the tiny tokenizer."""
    torch.manual_seed(seed)
    ids = dict(
        vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    common = dict(
        hidden_size=32, num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, max_position_embeddings=256, **ids, **extra,
    )
    if arch == "gpt2":
        return transformers.GPT2LMHeadModel(
            transformers.GPT2Config(n_embd=32, n_layer=layers, n_head=4, n_positions=256, **ids)
        ).eval()
    config_class, model_class = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "olmo2": (transformers.Olmo2Config, transformers.Olmo2ForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
    }[arch]
    return model_class(config_class(**common)).eval()


# ---------------------------------------------------------------------------------------------
# vectors


@pytest.mark.parametrize("arch", ["llama", "olmo2", "qwen2", "gpt2"])
@pytest.mark.parametrize("mode", ["packed", "kv_cache"])
def test_shared_prompt_equals_separate_sequences_and_the_reference(arch, mode, tiny_tokenizer):
    model = build_arch(arch, tiny_tokenizer)
    pairs = make_pairs(7, seed=1)
    pairs[3] = PreferencePair("no-prompt", "", " sure mix flour", " no")  # only BOS before the responses
    encoded = [encode_pair(tiny_tokenizer, p) for p in pairs]
    pad = tiny_tokenizer.pad_token_id
    assert check_mode(model, 2, mode, pad_token_id=pad) == (True, "ok")
    shared = FORWARDS[mode](model, encoded, 2, pad_token_id=pad)
    separate = FORWARDS["separate"](model, encoded, 2, pad_token_id=pad)
    assert shared.dtype == torch.float32 and shared.shape == (7, 32)
    torch.testing.assert_close(shared, separate, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(shared.double(), reference_differences(model, tiny_tokenizer, pairs, 2), atol=1e-5, rtol=1e-4)
    # extra right padding (widths rounded up to a multiple) changes nothing but the rounding
    for name in (mode, "separate"):
        padded = FORWARDS[name](model, encoded, 2, pad_token_id=pad, pad_multiple=16)
        torch.testing.assert_close(padded, shared, atol=1e-5, rtol=1e-4)


def test_packed_pairs_with_eager_attention(tiny_tokenizer):
    model = build_arch("llama", tiny_tokenizer)
    model.config._attn_implementation = "eager"  # takes an additive float mask instead of a boolean one
    encoded = [encode_pair(tiny_tokenizer, p) for p in make_pairs(5, seed=14)]
    pad = tiny_tokenizer.pad_token_id
    torch.testing.assert_close(
        FORWARDS["packed"](model, encoded, 3, pad_token_id=pad), FORWARDS["separate"](model, encoded, 3, pad_token_id=pad),
        atol=1e-5, rtol=1e-4,
    )


def test_sliding_window_models_fall_back_to_separate_sequences(tiny_tokenizer, tmp_path):
    model = build_arch("mistral", tiny_tokenizer, sliding_window=8)
    mode, reasons = prompt_sharing_mode(model, 2, pad_token_id=tiny_tokenizer.pad_token_id)
    assert mode == "separate" and all("sliding window" in r for r in reasons) and len(reasons) == 2
    pairs = make_pairs(6, seed=2)
    engine = Engine(model, tiny_tokenizer, layer=2)
    assert engine.prompt_sharing == "separate" and engine.share_prompt is False
    store = engine.encode_pairs(pairs, tmp_path / "s", progress=False)
    torch.testing.assert_close(store.vectors().double(), reference_differences(model, tiny_tokenizer, pairs, 2), atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="sliding window"):
        _ = Engine(model, tiny_tokenizer, layer=2, share_prompt=True).prompt_sharing
    with pytest.raises(ValueError, match="share_prompt='packed' does not work"):
        _ = Engine(model, tiny_tokenizer, layer=2, share_prompt="packed").prompt_sharing


def test_pair_batches_cover_every_pair_once_within_budget():
    rng = random.Random(3)
    p = [rng.randint(1, 40) for _ in range(200)]
    c = [rng.randint(1, 60) for _ in range(200)]
    r = [rng.randint(1, 60) for _ in range(200)]
    for mode in ("packed", "kv_cache", "separate"):
        batches = list(pair_batches(p, c, r, 256, mode=mode))
        assert sorted(i for b in batches for i in b) == list(range(200))
        assert batches == list(pair_batches(p, c, r, 256, mode=mode))  # a function of the lengths alone
        for b in batches:
            pm, sm = max(p[i] for i in b), max(max(c[i], r[i]) for i in b)
            cost = {
                "packed": len(b) * max(p[i] + c[i] + r[i] for i in b),
                "kv_cache": max(len(b) * pm, 2 * len(b) * sm),
                "separate": 2 * len(b) * max(p[i] + max(c[i], r[i]) for i in b),
            }[mode]
            assert len(b) == 1 or cost <= 256
    with pytest.raises(ValueError, match="positive"):
        list(pair_batches(p, c, r, 0, mode="packed"))


def test_pair_batches_with_rounded_widths_fit_the_budget_and_bound_the_shapes():
    rng = random.Random(5)
    n, m, budget = 2000, 32, 4096
    p = [rng.randint(1, 80) for _ in range(n)]
    c = [rng.randint(1, 120) for _ in range(n)]
    r = [rng.randint(1, 120) for _ in range(n)]

    def up(x: int) -> int:
        return -(-x // m) * m

    shapes = {}
    for rounding in (1, m):
        batches = list(pair_batches(p, c, r, budget, mode="packed", pad_multiple=rounding))
        assert sorted(i for b in batches for i in b) == list(range(n))
        widths = [max(p[i] + c[i] + r[i] for i in b) for b in batches]
        if rounding == m:
            widths = [up(w) for w in widths]
        assert all(len(b) * w <= budget for b, w in zip(batches, widths))
        shapes[rounding] = {(len(b), w) for b, w in zip(batches, widths)}
    assert len(shapes[m]) <= 2 * len({up(x) for x in range(1, 321)}) < len(shapes[1])
    for mode in ("kv_cache", "separate"):
        for b in pair_batches(p, c, r, budget, mode=mode, pad_multiple=m):
            pm, sm = up(max(p[i] for i in b)), up(max(max(c[i], r[i]) for i in b))
            width = up(max(p[i] + max(c[i], r[i]) for i in b))
            assert len(b) == 1 or (max(len(b) * pm, 2 * len(b) * sm) if mode == "kv_cache" else 2 * len(b) * width) <= budget
    with pytest.raises(ValueError, match="pad_multiple"):
        list(pair_batches(p, c, r, budget, mode="packed", pad_multiple=0))


def test_pair_tokens_round_trip_in_four_bytes_a_token(tiny_tokenizer):
    pairs = make_pairs(12, seed=8)
    pairs[2] = PreferencePair("no-prompt", "", " sure mix flour", " no")
    encoded = [encode_pair(tiny_tokenizer, p) for p in pairs]
    encoded[2] = encode_pair(tiny_tokenizer, pairs[2], TokenizationSettings(max_length=3))  # BOS + 2 tokens
    tokens = PairTokens()
    for chosen, rejected in encoded:
        tokens.append(chosen, rejected)
    assert len(tokens) == 12
    assert tokens.pairs(range(12)) == encoded and tokens.pairs([5, 0]) == [encoded[5], encoded[0]]
    assert any(c.truncated for c, _ in encoded)  # the truncation flags come back too
    assert tokens.n_tokens() == sum(len(c.input_ids) + len(r.input_ids) for c, r in encoded)
    stored = sum(len(c.input_ids) + r.response_length for c, r in encoded)  # the prompt once per pair
    assert tokens.nbytes <= 4 * stored + 8 * 13 + 13 * 12
    chosen, rejected = encoded[0]
    other = type(rejected)([chosen.input_ids[0] + 1] + rejected.input_ids[1:], rejected.prompt_length)
    with pytest.raises(ValueError, match="same prompt tokens"):
        tokens.append(chosen, other)


@pytest.mark.parametrize("mode", ["packed", "kv_cache", False])
def test_every_mode_encodes_the_same_store(tiny_llama, tiny_tokenizer, tmp_path, mode):
    pairs = make_pairs(15, seed=15)
    store = Engine(tiny_llama, tiny_tokenizer, layer=2, share_prompt=mode, max_tokens_per_batch=128).encode_pairs(
        pairs, tmp_path / "s", shard_pairs=6, progress=False
    )
    assert store.manifest["prompt_sharing"] == (mode or "separate")
    torch.testing.assert_close(
        store.vectors().double(), reference_differences(tiny_llama, tiny_tokenizer, pairs, 2), atol=1e-5, rtol=1e-4
    )


@pytest.mark.parametrize("budget", [1, 64, 100_000])
def test_encode_pairs_equals_the_reference_recipe_in_input_order(tiny_llama, tiny_tokenizer, tmp_path, budget):
    pairs = make_pairs(23, seed=4)
    engine = Engine(tiny_llama, tiny_tokenizer, layer=2, max_tokens_per_batch=budget)
    store = engine.encode_pairs(pairs, tmp_path / "s", shard_pairs=5, progress=False)
    assert store.pair_ids == [p.pair_id for p in pairs]
    assert len(store.shards) == 5 and [s["rows"] for s in store.shards] == [5, 5, 5, 5, 3]
    torch.testing.assert_close(
        store.vectors().double(), reference_differences(tiny_llama, tiny_tokenizer, pairs, 2), atol=1e-5, rtol=1e-4
    )
    assert store.summary["n_encoded"] == 23 and store.summary["prompt_sharing"] == "packed"


def test_chat_format_pairs_and_bfloat16_store(tiny_llama, tiny_tokenizer, tmp_path):
    pairs = [
        PreferencePair(p.pair_id, [{"role": "user", "content": p.prompt}], [{"role": "assistant", "content": p.chosen}],
                       [{"role": "assistant", "content": p.rejected}])
        for p in make_pairs(9, seed=5)
    ]
    engine = Engine(tiny_llama, tiny_tokenizer, layer=-1)
    store = engine.encode_pairs(pairs, tmp_path / "s", store_dtype="bfloat16", progress=False)
    assert store.dtype == torch.bfloat16 and store.manifest["tokenization"]["format"] == "chat"  # as used, not "auto"
    # layer -1 is the last block's raw output, before the final norm (hidden_states[-1] is after it)
    expected = torch.stack([_last_block_difference(tiny_llama, tiny_tokenizer, pair) for pair in pairs])
    torch.testing.assert_close(store.vectors(torch.float32), expected.to(torch.bfloat16).float(), atol=1e-6, rtol=0)


def _last_block_difference(model, tokenizer, pair) -> torch.Tensor:
    sides = []
    for enc in encode_pair(tokenizer, pair):
        captured = {}
        handle = model.model.layers[-1].register_forward_hook(lambda m, a, o: captured.setdefault("h", o[0] if isinstance(o, tuple) else o))
        with torch.no_grad():
            model(torch.tensor([enc.input_ids]))
        handle.remove()
        sides.append(captured["h"][0, enc.prompt_length :].mean(0))
    return sides[0] - sides[1]


def test_skipped_pairs_are_recorded_with_reasons(tiny_llama, tiny_tokenizer, tmp_path):
    pairs = make_pairs(6, seed=6)
    pairs[2] = PreferencePair("empty", "Q:", "", "")
    pairs[4] = PreferencePair("long", " ".join(["bread"] * 120), " a", " b")
    settings = TokenizationSettings(format="raw", add_eos=False, max_length=100, overlong="skip")
    engine = Engine(tiny_llama, tiny_tokenizer, layer=1, settings=settings)
    store = engine.encode_pairs(pairs, tmp_path / "s", shard_pairs=4, progress=False)
    assert store.pair_ids == [p.pair_id for i, p in enumerate(pairs) if i not in (2, 4)]
    skipped = store.manifest["skipped_pairs"]
    assert [(s["position"], s["pair_id"]) for s in skipped] == [(2, "empty"), (4, "long")]
    assert "empty response" in skipped[0]["reason"] and "overlong" in skipped[1]["reason"]
    kept = [p for i, p in enumerate(pairs) if i not in (2, 4)]
    torch.testing.assert_close(store.vectors().double(), reference_differences(tiny_llama, tiny_tokenizer, kept, 1, settings), atol=1e-5, rtol=1e-4)
    strict = Engine(tiny_llama, tiny_tokenizer, layer=1, settings=TokenizationSettings(max_length=100, overlong="error"))
    with pytest.raises(ValueError, match=r"pair 4 \(id long\)"):
        strict.encode_pairs(pairs, tmp_path / "e", progress=False)


def test_progress_bar_and_summary(tiny_llama, tiny_tokenizer, tmp_path, capsys, caplog):
    caplog.set_level("INFO", logger="headwater.engine.engine")
    Engine(tiny_llama, tiny_tokenizer, layer=2).encode_pairs(make_pairs(12, seed=7), tmp_path / "s", shard_pairs=4)
    err = capsys.readouterr().err
    assert "12/12" in err and "pair/s" in err and "tok/s" in err
    assert "encoded 12 of 12 pairs" in caplog.text and "tokens/s" in caplog.text


# ---------------------------------------------------------------------------------------------
# search


def test_top_k_over_a_store_streams_its_shards_exactly(tiny_llama, tiny_tokenizer, tmp_path):
    """Search is the kernel over the store's memory-mapped shards: global indices, exact scores."""
    pairs = make_pairs(40, seed=8)
    engine = Engine(tiny_llama, tiny_tokenizer, layer=2)
    store = engine.encode_pairs(pairs, tmp_path / "s", shard_pairs=7, progress=False)
    queries = response_activations(tiny_llama, tiny_tokenizer, ["Q:", "Reply in lowercase:"],
                                   [" sure mix flour", " I cannot help"], 2)
    assert len(list(store.blocks())) == 6
    scores, indices = cosine_topk(queries, store.blocks(), 5)
    ref_scores, ref_indices = cosine_topk_reference(queries, store.vectors(), 5)
    assert torch.equal(indices, ref_indices)
    torch.testing.assert_close(scores, ref_scores)
    _, wide = cosine_topk(queries[:1], store.blocks(), 50)  # k > N: missing slots
    assert wide[0, -1] == -1 and sorted(wide[0, :40].tolist()) == list(range(40))


# ---------------------------------------------------------------------------------------------
# runs: refusing, resuming, recovering


def test_an_existing_run_is_refused_unless_resumed_or_overwritten(tiny_llama, tiny_tokenizer, tmp_path):
    pairs = make_pairs(10, seed=9)
    engine = Engine(tiny_llama, tiny_tokenizer, layer=2)
    first = engine.encode_pairs(pairs, tmp_path / "s", shard_pairs=4, progress=False)
    with pytest.raises(StoreError, match="already holds a vector store.*--resume"):
        engine.encode_pairs(pairs, tmp_path / "s", shard_pairs=4, progress=False)
    again = engine.encode_pairs(pairs, tmp_path / "s", shard_pairs=4, progress=False, resume=True)
    assert again.summary["shards_resumed"] == 3 and torch.equal(again.vectors(), first.vectors())
    other = engine.encode_pairs(pairs[:5], tmp_path / "s", shard_pairs=4, progress=False, overwrite=True)
    assert len(other) == 5


@pytest.mark.parametrize("change", ["model", "layer", "dataset", "tokenization"])
def test_resume_refuses_a_run_made_differently(tiny_llama, tiny_tokenizer, tmp_path, change):
    from tiny_models import build_tiny_llama

    pairs = make_pairs(10, seed=10)
    Engine(tiny_llama, tiny_tokenizer, layer=2).encode_pairs(pairs, tmp_path / "s", shard_pairs=4, progress=False)
    model, layer, settings = tiny_llama, 2, TokenizationSettings()
    if change == "model":
        model = build_tiny_llama(tiny_tokenizer, seed=1)
    elif change == "layer":
        layer = 3
    elif change == "dataset":
        pairs = make_pairs(10, seed=11)
    else:
        settings = TokenizationSettings(format="raw", add_eos=False)
    key = {"model": "model_fingerprint", "layer": "layer: store has 2, expected 3", "dataset": "dataset_fingerprint",
           "tokenization": "tokenization"}[change]
    with pytest.raises(StoreError, match=key):
        Engine(model, tiny_tokenizer, layer=layer, settings=settings).encode_pairs(
            pairs, tmp_path / "s", shard_pairs=4, progress=False, resume=True
        )


def test_resume_recomputes_corrupt_and_torn_shards(tiny_llama, tiny_tokenizer, tmp_path):
    """A partial run whose records say 'complete' but whose bytes disagree is repaired, not used."""
    pairs = make_pairs(20, seed=12)
    engine = Engine(tiny_llama, tiny_tokenizer, layer=2)
    whole = engine.encode_pairs(pairs, tmp_path / "whole", shard_pairs=4, progress=False)

    seen = []
    partial = tmp_path / "partial"

    class Stop(Exception):
        pass

    def stop_after_three(record):
        seen.append(record.index)
        if len(seen) == 3:
            raise Stop

    with pytest.raises(RuntimeError, match="writing shards failed"):
        engine.encode_pairs(pairs, partial, shard_pairs=4, progress=False, on_shard=stop_after_three)
    assert (partial / "run.json").exists() and not (partial / "manifest.json").exists()
    # shard 0: flipped byte; shard 1: record without its vectors; shard 2: intact; a torn temp file
    data = bytearray((partial / "shard-00000.npy").read_bytes())
    data[-1] ^= 0xFF
    (partial / "shard-00000.npy").write_bytes(bytes(data))
    (partial / "shard-00001.npy").unlink()
    (partial / ".shard-00003.npy.tmp").write_bytes(b"torn")
    resumed = engine.encode_pairs(pairs, partial, shard_pairs=4, progress=False, resume=True)
    assert resumed.summary["shards_resumed"] == 1
    assert torch.equal(resumed.vectors(), whole.vectors())
    assert json.loads((partial / "manifest.json").read_text()) == json.loads((tmp_path / "whole" / "manifest.json").read_text())


def test_a_corrupt_finished_store_is_detected(tiny_llama, tiny_tokenizer, tmp_path):
    Engine(tiny_llama, tiny_tokenizer, layer=2).encode_pairs(make_pairs(8, seed=13), tmp_path / "s", shard_pairs=4, progress=False)
    path = tmp_path / "s" / "shard-00001.npy"
    data = bytearray(path.read_bytes())
    data[200] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="shard-00001.npy is corrupt"):
        VectorStore.open(tmp_path / "s")


@pytest.mark.parametrize("mode", ["packed", "kv_cache"])
def test_pairs_without_prompt_tokens(tiny_llama, tmp_path, mode):
    from tiny_models import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer(bos=False)  # an empty prompt then has no token at all
    pairs = make_pairs(5, seed=16) + [PreferencePair("empty-prompt", "", "sure mix flour", "no")]
    assert encode_pair(tokenizer, pairs[-1])[0].prompt_length == 0
    store = Engine(tiny_llama, tokenizer, layer=2, share_prompt=mode).encode_pairs(pairs, tmp_path / "s", progress=False)
    torch.testing.assert_close(
        store.vectors().double(), reference_differences(tiny_llama, tokenizer, pairs, 2), atol=1e-5, rtol=1e-4
    )


def test_a_pair_too_long_to_pack_runs_alone_without_a_mask(tiny_llama, tiny_tokenizer, tmp_path, monkeypatch):
    """Long pairs never get a [T, T] mask: each side runs alone and unpadded, and the vectors are
    still the reference recipe's."""
    import headwater.engine.pair_forward as pair_forward

    monkeypatch.setattr(pair_forward, "LONG_ROW_TOKENS", 24)
    calls = []
    original = pair_forward.FORWARDS["long"]
    monkeypatch.setitem(pair_forward.FORWARDS, "long", lambda *a, **k: calls.append(len(a[1])) or original(*a, **k))
    masks = []
    real_forward = pair_forward.forward_to_layer
    monkeypatch.setattr(pair_forward, "forward_to_layer",
                        lambda model, ids, mask, layer: masks.append(mask) or real_forward(model, ids, mask, layer))
    pairs = make_pairs(10, seed=12)
    settings = TokenizationSettings()
    store = Engine(tiny_llama, tiny_tokenizer, layer=2, settings=settings).encode_pairs(pairs, tmp_path / "s", progress=False)
    assert calls and all(n == 1 for n in calls)  # every long pair alone
    single = [m for m in masks if m.shape[0] == 1]  # the other paths run 2n rows at a time
    assert len(single) == 2 * len(calls) and all(bool(m.all()) for m in single)  # no padding: no mask to build
    torch.testing.assert_close(store.vectors().double(), reference_differences(tiny_llama, tiny_tokenizer, pairs, 2, settings),
                               atol=1e-5, rtol=1e-4)
