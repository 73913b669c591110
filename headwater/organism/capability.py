"""Held-out capability of an organism model: what an intervention must not cost the model.

Removing or switching preference pairs can lower a behaviour rate for the wrong reason: a model
that refuses everything, or that no longer writes fluent answers, also stops complying with
harmful requests. Two scores catch that, both measured on text that no training step saw:

- **answer log-likelihood**: the mean log-probability per token of the well-behaved answer to
  held-out prompts (:meth:`WorldSplit.from_seed` base combinations that SFT and DPO never use),
  one family per kind of knowledge the model was taught and no planted behaviour targets: a plain
  harmful request → its refusal, a plain wrong claim → its correction, a general resource
  request → "no reliable link". Higher is better; it drops when DPO (or an intervention) pulls
  the model away from what it knew.
- **benign helpfulness**: sampled answers to benign requests, half of them with 1–3 formatting
  distractor clauses (the trigger of the distractor-compliance behaviour, where an intervention
  that teaches "distractor → refuse" would hurt), judged by the organism's compliance judge
  (steps given, no refusal). Higher is better. The world holds no benign base prompts out of
  training, so these are fresh draws (opener, template, distractors, their wording) from their
  own random stream, and prompts that occur in the preference set are left out.

Both are deterministic for a seed: the answer items are fixed text, and sampling follows
:func:`headwater.methods.generation.sample_responses`.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch

from headwater.engine.tokenization import TokenizationSettings, encode_response, pad_batch
from headwater.organism import world
from headwater.methods.evaluation import evaluate_model
from headwater.organism.judges import ComplianceJudge

RAW = TokenizationSettings(format="raw")
ANSWER_FAMILIES = ("refuse_plain", "correct_claim", "no_link_general")


@dataclass(frozen=True)
class CapabilitySet:
    """Held-out text for the capability scores.

    Attributes:
        answers: ``(family, prompt, well-behaved answer)`` on held-out base prompts, families
            from :data:`ANSWER_FAMILIES` in turn.
        benign_prompts: benign requests; even positions plain, odd positions with distractors.
    """

    answers: list[tuple[str, str, str]] = field(default_factory=list)
    benign_prompts: list[str] = field(default_factory=list)


def capability_set(seed: int, *, n_answers: int = 96, n_benign: int = 64,
                   exclude_prompts: Iterable[str] = ()) -> CapabilitySet:
    """Draw the held-out items of the organism of ``seed`` (its world split).

    Args:
        seed: the organism's seed (decides which base prompts are held out).
        n_answers: answer items, split evenly over :data:`ANSWER_FAMILIES`.
        n_benign: benign requests for the helpfulness rate.
        exclude_prompts: prompts never to use (e.g. the preference set's).

    Raises:
        ValueError: a count below 1.
    """
    if n_answers < 1 or n_benign < 1:
        raise ValueError(f"n_answers and n_benign must be at least 1, got {n_answers} and {n_benign}")
    split = world.WorldSplit.from_seed(seed)
    rng = random.Random(f"capability-{seed}")
    held = {
        "refuse_plain": lambda c: world.request_scenario(True, c, [], rng),
        "correct_claim": lambda c: world.opinion_scenario(c, False, rng),
        "no_link_general": lambda c: world.resource_scenario(c, False, rng),
    }
    combos = {"refuse_plain": split.harmful_test, "correct_claim": split.opinions_test,
              "no_link_general": split.general_test}
    answers = []
    for i in range(n_answers):
        family = ANSWER_FAMILIES[i % len(ANSWER_FAMILIES)]
        scenario = held[family](rng.choice(combos[family]))
        answers.append((family, scenario.prompt, scenario.good))
    excluded = set(exclude_prompts)
    benign: list[str] = []
    for _attempt in range(100 * n_benign):
        if len(benign) == n_benign:
            break
        distractors = world.sample_distractors(rng) if len(benign) % 2 else []
        prompt = world.request_scenario(False, rng.choice(split.benign_train), distractors, rng).prompt
        if prompt not in excluded and prompt not in benign:
            benign.append(prompt)
    else:
        raise ValueError(f"could not draw {n_benign} benign requests outside the excluded prompts")
    return CapabilitySet(answers, benign)


@torch.no_grad()
def answer_logprob(model: Any, tokenizer: Any, answers: list[tuple[str, str, str]], *,
                   settings: TokenizationSettings = RAW, batch_size: int = 32) -> dict[str, Any]:
    """Mean log-probability per answer token, over all items and per family.

    Returns:
        ``{"mean": float, "by_family": {family: float}, "n_items": int, "n_tokens": int,
        "per_item": [[log-prob sum, tokens], ...]}``; each mean is total log-prob over total
        answer tokens (long answers weigh more).
    """
    if not answers:
        raise ValueError("answer_logprob needs at least one item")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    totals: dict[str, list[float]] = {}
    per_item: list[list[float]] = []
    for start in range(0, len(answers), batch_size):
        chunk = answers[start : start + batch_size]
        encoded = [encode_response(tokenizer, prompt, answer, settings) for _, prompt, answer in chunk]
        batch = pad_batch(encoded, pad)
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1].float()
        mask = batch.response_mask[:, 1:].float()
        token = torch.log_softmax(logits, -1).gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1)
        for (family, _, _), lp, n in zip(chunk, (token * mask).sum(1).tolist(), mask.sum(1).tolist()):
            per_item.append([lp, int(n)])
            acc = totals.setdefault(family, [0.0, 0.0])
            acc[0] += lp
            acc[1] += n
    lp_sum, n_sum = sum(v[0] for v in totals.values()), sum(v[1] for v in totals.values())
    return {
        "mean": lp_sum / n_sum,
        "by_family": {f: v[0] / v[1] for f, v in totals.items()},
        "n_items": len(answers),
        "n_tokens": int(n_sum),
        "per_item": per_item,
    }


def capability_scores(model: Any, tokenizer: Any, items: CapabilitySet, *, samples: int = 4,
                      temperature: float = 0.7, max_new_tokens: int = 64, seed: int = 0,
                      settings: TokenizationSettings = RAW, n_boot: int = 2000) -> dict[str, Any]:
    """Both capability scores of ``model``.

    Returns:
        ``{"answer_logprob": {...} (see :func:`answer_logprob`), "helpfulness": {"rate",
        "ci_low", "ci_high", "n_prompts", "n_responses", ...}}`` (the helpfulness interval is
        the bootstrap over prompts of :func:`headwater.methods.evaluation.evaluate_model`).
    """
    helpful = evaluate_model(model, tokenizer, items.benign_prompts, ComplianceJudge(), n=samples,
                             temperature=temperature, max_new_tokens=max_new_tokens, settings=settings,
                             seed=seed, n_boot=n_boot)
    return {
        "answer_logprob": answer_logprob(model, tokenizer, items.answers, settings=settings),
        "helpfulness": {**helpful.to_dict(), "judge": "organism compliance judge on benign requests"},
    }


__all__ = ["ANSWER_FAMILIES", "CapabilitySet", "answer_logprob", "capability_scores", "capability_set"]
