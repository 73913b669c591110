"""Sampling responses from a causal LM: the real generations behind behaviour rates and probes."""
from __future__ import annotations

from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from headwater.data import Text
from headwater.engine.tokenization import TokenizationSettings, encode_prompt


def sample_responses(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Text],
    *,
    n: int = 1,
    temperature: float = 0.7,
    max_new_tokens: int = 100,
    settings: TokenizationSettings = TokenizationSettings(),
    seed: int = 0,
    batch_size: int = 64,
    progress: str | None = None,
) -> list[list[str]]:
    """Sample ``n`` responses to each prompt with ``model.generate``.

    Prompts are encoded with :func:`headwater.engine.tokenization.encode_prompt` (the ids a model
    continues from in the raw or chat format) and left-padded into batches. Each response is
    decoded from the new tokens only, up to the first EOS, without special tokens.

    Sampling is plain temperature sampling (top-k and top-p off); ``temperature=0`` is greedy.
    The result is deterministic for a given seed and batch size: batch ``b`` is sampled under
    the torch seed ``seed + b``, and the global random state is left untouched.

    Args:
        model: a transformers causal LM.
        tokenizer: its tokenizer; needs a pad or an EOS token.
        prompts: raw strings or message lists.
        n: responses per prompt.
        temperature: sampling temperature (0 for greedy decoding).
        max_new_tokens: the most new tokens per response.
        settings: the tokenisation format of the prompts.
        seed: the sampling seed.
        batch_size: sequences per ``generate`` call (a prompt's n samples count n times).
        progress: a label: show a progress bar (sequences, rate, time left) with it on stderr.

    Returns:
        ``responses[i][j]``: the j-th response to ``prompts[i]``.
    """
    if n < 1:
        raise ValueError(f"`n` must be at least 1, got {n}")
    if temperature < 0:
        raise ValueError(f"`temperature` must be ≥ 0, got {temperature}")
    if max_new_tokens < 1:
        raise ValueError(f"`max_new_tokens` must be at least 1, got {max_new_tokens}")
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be at least 1, got {batch_size}")
    eos_id = tokenizer.eos_token_id
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
    if pad_id is None:
        raise ValueError("the tokenizer has neither a pad nor an EOS token; generation cannot pad or stop")

    encoded = [encode_prompt(tokenizer, p, settings) for p in prompts]
    for i, ids in enumerate(encoded):
        if not ids:
            raise ValueError(f"prompt {i} encodes to no token; generation needs at least one")
    # Every (prompt, sample) is one row; rows of one prompt stay together.
    rows = [i for i in range(len(encoded)) for _ in range(n)]
    responses: list[list[str]] = [[] for _ in encoded]
    device = next(model.parameters()).device
    sampling = temperature > 0
    options: dict[str, Any] = dict(
        max_new_tokens=max_new_tokens,
        do_sample=sampling,
        pad_token_id=pad_id,
        eos_token_id=eos_id,
    )
    if sampling:
        options.update(temperature=temperature, top_k=0, top_p=1.0)
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(rows), desc=progress, unit="seq", disable=progress is None, leave=False)
    try:
        for b, start in enumerate(range(0, len(rows), batch_size)):
            chunk = rows[start : start + batch_size]
            width = max(len(encoded[i]) for i in chunk)
            input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            attention_mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for r, i in enumerate(chunk):  # left padding: new tokens follow every prompt directly
                ids = encoded[i]
                input_ids[r, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
                attention_mask[r, width - len(ids) :] = 1
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
                torch.manual_seed(seed + b)
                out = model.generate(
                    input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), **options
                )
            new_tokens = out[:, width:].tolist()
            for r, i in enumerate(chunk):
                tokens = new_tokens[r]
                if eos_id is not None and eos_id in tokens:
                    tokens = tokens[: tokens.index(eos_id)]
                responses[i].append(tokenizer.decode(tokens, skip_special_tokens=True))
            bar.update(len(chunk))
    finally:
        bar.close()
        model.train(was_training)
    return responses
