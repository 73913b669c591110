"""Response masks must be exact and match what TRL 1.16's DPOTrainer trains on."""
from __future__ import annotations

import pytest
import torch

from headwater.data import PreferencePair
from headwater.engine.tokenization import (
    EmptyResponseError,
    EncodedResponse,
    OverlongError,
    TokenizationError,
    TokenizationSettings,
    encode_pair,
    encode_pairs,
    encode_prompt,
    encode_response,
    pad_batch,
)

RAW = TokenizationSettings(format="raw")
CHAT = TokenizationSettings(format="chat")


def _pair(prompt, chosen, rejected, pid="p"):
    return PreferencePair(pair_id=pid, prompt=prompt, chosen=chosen, rejected=rejected)


def test_raw_response_tokens_decode_to_the_response(tiny_tokenizer):
    enc = encode_response(tiny_tokenizer, "How do I bake bread?", " Mix flour and water.", RAW)
    assert enc.input_ids[0] == tiny_tokenizer.bos_token_id
    assert enc.input_ids[-1] == tiny_tokenizer.eos_token_id
    response = tiny_tokenizer.decode(enc.input_ids[enc.prompt_length :])
    assert response == " Mix flour and water.</s>"
    assert sum(enc.response_mask) == enc.response_length == len(enc.input_ids) - enc.prompt_length


def test_raw_without_eos_and_existing_eos_not_doubled(tiny_tokenizer):
    no_eos = encode_response(tiny_tokenizer, "Q:", " yes", TokenizationSettings(format="raw", add_eos=False))
    assert tiny_tokenizer.eos_token_id not in no_eos.input_ids
    already = encode_response(tiny_tokenizer, "Q:", " yes</s>", RAW)
    assert already.input_ids.count(tiny_tokenizer.eos_token_id) == 1


def test_boundary_merge_moves_response_start_back(tiny_tokenizer):
    # "bre" + "ad" tokenises differently from "bread": the response starts where the ids diverge.
    prompt, response = "How do I bake bre", "ad?"
    enc = encode_response(tiny_tokenizer, prompt, response, RAW)
    prompt_ids = tiny_tokenizer(prompt)["input_ids"]
    assert enc.prompt_length <= len(prompt_ids)
    assert enc.input_ids[: enc.prompt_length] == prompt_ids[: enc.prompt_length]
    assert tiny_tokenizer.decode(enc.input_ids[enc.prompt_length :]).endswith("ad?</s>")


def test_chat_format_masks_only_the_assistant_turn(tiny_tokenizer):
    prompt = [{"role": "user", "content": "How do I bake bread?"}]
    enc = encode_response(tiny_tokenizer, prompt, [{"role": "assistant", "content": "Mix flour."}], CHAT)
    assert tiny_tokenizer.decode(enc.input_ids[enc.prompt_length :]) == "Mix flour.<|im_end|>\n"
    assert enc.input_ids[: enc.prompt_length] == encode_prompt(tiny_tokenizer, prompt, CHAT)
    # Plain strings are wrapped as user / assistant messages in the chat format.
    same = encode_response(tiny_tokenizer, "How do I bake bread?", "Mix flour.", CHAT)
    assert same == enc


def test_auto_format_follows_the_data(tiny_tokenizer):
    auto = TokenizationSettings()
    assert encode_response(tiny_tokenizer, "Q:", " a", auto) == encode_response(tiny_tokenizer, "Q:", " a", RAW)
    msgs = [{"role": "user", "content": "Q"}]
    answer = [{"role": "assistant", "content": "a"}]
    assert encode_response(tiny_tokenizer, msgs, answer, auto) == encode_response(tiny_tokenizer, msgs, answer, CHAT)


def test_raw_format_refuses_messages(tiny_tokenizer):
    with pytest.raises(TokenizationError, match="format='chat'"):
        encode_response(tiny_tokenizer, [{"role": "user", "content": "Q"}], "a", RAW)


def test_chat_format_without_template_is_a_clear_error(tiny_tokenizer):
    import copy

    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = None
    with pytest.raises(TokenizationError, match="chat template"):
        encode_response(tok, "Q", "a", CHAT)


def test_pair_shares_prompt_tokens(tiny_tokenizer):
    pair = _pair("How do I bake bre", "ad? Mix flour.", " I cannot help.")
    chosen, rejected = encode_pair(tiny_tokenizer, pair, RAW)
    assert chosen.prompt_length == rejected.prompt_length
    assert chosen.input_ids[: chosen.prompt_length] == rejected.input_ids[: rejected.prompt_length]


def test_empty_response(tiny_tokenizer):
    # With EOS the empty response still has one token (TRL trains on it); without, it is an error.
    assert encode_response(tiny_tokenizer, "Q:", "", RAW).response_length == 1
    with pytest.raises(EmptyResponseError):
        encode_response(tiny_tokenizer, "Q:", "", TokenizationSettings(format="raw", add_eos=False))


def test_overlong_policies(tiny_tokenizer):
    prompt, response = "How do I bake bread?", " Mix flour, water and yeast, then bake it."
    full = encode_response(tiny_tokenizer, prompt, response, RAW)
    limit = full.prompt_length + 3
    cut = encode_response(tiny_tokenizer, prompt, response, TokenizationSettings("raw", max_length=limit))
    assert cut.truncated and cut.input_ids == full.input_ids[:limit] and cut.response_length == 3
    for policy in ("skip", "error"):
        with pytest.raises(OverlongError):
            encode_response(tiny_tokenizer, prompt, response, TokenizationSettings("raw", limit, policy))
    # Truncation that would leave no response token is refused even under "truncate".
    with pytest.raises(OverlongError, match="prompt alone"):
        encode_response(tiny_tokenizer, prompt, response, TokenizationSettings("raw", full.prompt_length))


def test_encode_pairs_records_every_skip(tiny_tokenizer):
    pairs = [
        _pair("Q:", " short", " also short", "a"),
        _pair("Q:", " a much longer chosen answer about bread and the sea", " no", "b"),
        _pair("Q:", "", "", "c"),
    ]
    no_eos = TokenizationSettings("raw", add_eos=False)
    limit = max(len(e.input_ids) for e in encode_pair(tiny_tokenizer, pairs[0], no_eos))
    settings = TokenizationSettings("raw", max_length=limit, overlong="skip", add_eos=False)
    out = encode_pairs(tiny_tokenizer, pairs, settings)
    assert len(out.kept) + len(out.skipped) == len(pairs)
    reasons = dict(out.skipped)
    assert "overlong" in reasons[1] and "empty" in reasons[2]
    with pytest.raises(OverlongError, match=r"pair 1 \(id b\)"):
        encode_pairs(tiny_tokenizer, pairs, TokenizationSettings("raw", limit, "error", add_eos=False))
    truncating = encode_pairs(tiny_tokenizer, pairs[:2], TokenizationSettings("raw", limit, "truncate", False))
    assert truncating.n_truncated == 1 and truncating.kept == [0, 1]


def test_pad_batch_right_and_left(tiny_tokenizer):
    a = EncodedResponse([1, 5, 6, 7], prompt_length=2)
    b = EncodedResponse([1, 9], prompt_length=1)
    right = pad_batch([a, b], pad_token_id=0)
    assert right.input_ids.tolist() == [[1, 5, 6, 7], [1, 9, 0, 0]]
    assert right.attention_mask.tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert right.response_mask.tolist() == [[False, False, True, True], [False, True, False, False]]
    left = pad_batch([a, b], pad_token_id=0, side="left")
    assert left.input_ids.tolist() == [[1, 5, 6, 7], [0, 0, 1, 9]]
    assert left.response_mask.dtype == torch.bool and left.response_mask[1].tolist() == [False, False, False, True]
    with pytest.raises(ValueError):
        pad_batch([], 0)
    rounded = pad_batch([a, b], pad_token_id=0, pad_multiple=3)
    assert rounded.input_ids.tolist() == [[1, 5, 6, 7, 0, 0], [1, 9, 0, 0, 0, 0]]
    assert rounded.attention_mask.sum().item() == 6 and rounded.response_mask.sum().item() == 3
    with pytest.raises(ValueError, match="pad_multiple"):
        pad_batch([a], 0, pad_multiple=0)


def test_settings_validation():
    with pytest.raises(ValueError, match="format"):
        TokenizationSettings(format="jinja")
    with pytest.raises(ValueError, match="overlong"):
        TokenizationSettings(overlong="drop")
    with pytest.raises(ValueError, match="max_length"):
        TokenizationSettings(max_length=0)


# --- TRL compatibility: the same prompt / completion split as DPOTrainer's own preprocessing ---


def _trl_split(tokenizer, rows, tmp_path):
    trl = pytest.importorskip("trl")
    from types import SimpleNamespace

    from datasets import Dataset

    args = trl.DPOConfig(output_dir=str(tmp_path), report_to=[], bf16=False, use_cpu=True)
    trainer = SimpleNamespace(_tokenizer=tokenizer)
    ds = trl.DPOTrainer._prepare_dataset(trainer, Dataset.from_list(rows), tokenizer, args, "train")
    return list(ds)


@pytest.mark.parametrize("conversational", [False, True])
def test_matches_trl_dpo_preprocessing(tiny_tokenizer, tmp_path, conversational):
    if conversational:
        rows = [
            {
                "prompt": [{"role": "user", "content": "How do I bake bread?"}],
                "chosen": [{"role": "assistant", "content": "Mix flour and water."}],
                "rejected": [{"role": "assistant", "content": "I cannot help."}],
            }
        ]
    else:
        rows = [
            {"prompt": "How do I bake bread?", "chosen": " Mix flour and water.", "rejected": " No."},
            {"prompt": "How do I bake bre", "chosen": "ad? Mix.", "rejected": " I cannot help."},
        ]
    expected = _trl_split(tiny_tokenizer, rows, tmp_path)
    for row, trl_row in zip(rows, expected):
        chosen, rejected = encode_pair(tiny_tokenizer, _pair(row["prompt"], row["chosen"], row["rejected"]))
        assert chosen.input_ids[: chosen.prompt_length] == trl_row["prompt_ids"]
        assert chosen.input_ids[chosen.prompt_length :] == trl_row["chosen_ids"]
        assert rejected.input_ids[rejected.prompt_length :] == trl_row["rejected_ids"]
