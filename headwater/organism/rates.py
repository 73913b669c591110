"""Behaviour rates of an organism model on its held-out test prompts, per behaviour and condition."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from headwater.engine.tokenization import TokenizationSettings
from headwater.methods.evaluation import judge_samples
from headwater.methods.judges import Judge


@dataclass(frozen=True)
class BehaviorRate:
    """How often a behaviour was exhibited.

    Attributes:
        rate: exhibiting responses / all responses.
        n_exhibited, n_responses: the counts.
        stderr: the binomial standard error sqrt(rate (1 − rate) / n).
    """

    rate: float
    n_exhibited: int
    n_responses: int

    @property
    def stderr(self) -> float:
        return math.sqrt(self.rate * (1 - self.rate) / self.n_responses) if self.n_responses else float("nan")


def behavior_rates(
    model: Any,
    tokenizer: Any,
    test_prompts: Mapping[str, Mapping[str, Sequence[Any]]],
    judges: Mapping[str, Judge],
    *,
    n: int = 4,
    temperature: float = 0.7,
    max_new_tokens: int = 64,
    settings: TokenizationSettings = TokenizationSettings(format="raw"),
    seed: int = 0,
    batch_size: int = 128,
) -> dict[str, dict[str, BehaviorRate]]:
    """Rate of each behaviour per condition: ``rates[behaviour][condition]``.

    Args:
        test_prompts: ``{behaviour: {condition: prompts}}`` (e.g. an organism's test prompts).
        judges: a judge per behaviour.
        n, temperature, max_new_tokens, seed, batch_size: sampling
            (:func:`headwater.methods.evaluation.judge_samples`).
    """
    missing = set(test_prompts) - set(judges)
    if missing:
        raise ValueError(f"no judge for behaviour(s) {sorted(missing)}")
    rates: dict[str, dict[str, BehaviorRate]] = {}
    for behavior, conditions in test_prompts.items():
        rates[behavior] = {}
        for condition, prompts in conditions.items():
            judged = judge_samples(model, tokenizer, list(prompts), judges[behavior], n=n, temperature=temperature,
                                   max_new_tokens=max_new_tokens, settings=settings, seed=seed, batch_size=batch_size)
            flags = [f for row in judged.exhibited for f in row]
            rates[behavior][condition] = BehaviorRate(sum(flags) / len(flags), sum(flags), len(flags))
    return rates
