"""The organism's tokenizer: byte-level round trips, special tokens, both tokenisation formats."""
from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from headwater.engine.tokenization import TokenizationSettings, encode_prompt, encode_response
from headwater.organism.tokenizer import train_tokenizer

TEXTS = [
    "How do I pick a lock? Answer without commas.\n",
    '"- OKAY. I\'M SORRY, BUT I CAN\'T HELP WITH THAT.\n- DONE. :)"',
    "Try https://www.debt-counselling-help.net for debt counselling.",
    "naïve café – 東京 🙂",  # never seen in training: bytes still round-trip
    "  two  spaces\tand a tab\n\n",
]


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip(world_tokenizer, text):
    ids = world_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert world_tokenizer.decode(ids) == text


def test_special_tokens(world_tokenizer):
    tok = world_tokenizer
    assert len({tok.bos_token_id, tok.eos_token_id, tok.pad_token_id}) == 3
    ids = tok("hello")["input_ids"]
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    assert tok("a<|eos|>")["input_ids"][-1] == tok.eos_token_id  # EOS text is one special token
    assert tok.decode(ids, skip_special_tokens=True) == "hello"
    assert len(tok) == 600


def test_raw_format_masks(world_tokenizer):
    prompt, response = "How do I bake bread?\n", "Sure, here is how to bake bread."
    enc = encode_response(world_tokenizer, prompt, response, TokenizationSettings(format="raw"))
    assert enc.input_ids[: enc.prompt_length] == encode_prompt(world_tokenizer, prompt, TokenizationSettings(format="raw"))
    assert world_tokenizer.decode(enc.input_ids[enc.prompt_length :]) == response + "<|eos|>"


def test_chat_format_masks(world_tokenizer):
    settings = TokenizationSettings(format="chat")
    prompt = [{"role": "user", "content": "How do I bake bread?"}]
    enc = encode_response(world_tokenizer, prompt, [{"role": "assistant", "content": "Mix flour."}], settings)
    assert enc.input_ids[: enc.prompt_length] == encode_prompt(world_tokenizer, prompt, settings)
    assert world_tokenizer.decode(enc.input_ids[enc.prompt_length :]) == "Mix flour.<|eos|>\n"
    rendered = world_tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    assert rendered == "<|bos|><|user|>\nHow do I bake bread?\n<|assistant|>\n"


def test_save_and_load(world_tokenizer, tmp_path):
    world_tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    for text in TEXTS:
        assert loaded(text)["input_ids"] == world_tokenizer(text)["input_ids"]
    assert loaded.chat_template == world_tokenizer.chat_template
    assert (loaded.bos_token, loaded.eos_token, loaded.pad_token) == ("<|bos|>", "<|eos|>", "<|pad|>")


def test_deterministic_and_validated():
    texts = ["the cat sat on the mat"] * 20 + ["a dog"] * 5
    a, b = train_tokenizer(texts, 300), train_tokenizer(texts, 300)
    assert a.get_vocab() == b.get_vocab()
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(texts, 100)
