"""Measure a planted behaviour of the organism and attribute it: the shared first half of
``headwater demo`` and ``headwater experiment``.

:func:`measure_behavior` samples M0 and M1 on the behaviour's held-out test prompts with and
without the trigger and judges every response; :func:`attribute_behavior` builds the probing
vector from the triggered generations, ranks every pair and scores the ranking against the
planted ground truth, next to random selection.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

from headwater.methods.attribution import evaluate_ranking, random_ranking, rank_pairs
from headwater.methods.evaluation import judge_samples
from headwater.methods.judges import Judge
from headwater.methods.vectors import probing_vector

LOG = logging.getLogger(__name__)

PRIMARY_BEHAVIOR = "distractor_compliance"
RANDOM_SEEDS = 20  # random selection is averaged over this many orders
SAMPLES_PER_PROMPT = 4
TEMPERATURE = 0.7  # the paper's evaluation temperature


def measure_behavior(
    organism: Any, behavior: str, models: dict[str, tuple[Any, Any]], samples: int, seed: int, max_new_tokens: int,
    judge: Judge | None = None,
) -> dict[str, Any]:
    """Generations of M0 and M1 on the behaviour's test prompts, judged (by the organism's judge of
    the behaviour unless ``judge`` is given); rates per condition.

    Returns:
        ``{"rates": {model: {condition: rate}}, "labelled": {(model, condition): (prompts,
        responses, exhibits)}}`` with one entry per sample.
    """
    judge = judge if judge is not None else organism.judges[behavior]
    rates: dict[str, dict[str, float]] = {}
    labelled: dict[tuple[str, str], tuple[list[Any], list[str], list[bool]]] = {}
    for model_name, (model, tokenizer) in models.items():
        rates[model_name] = {}
        for condition, prompts in organism.test_prompts[behavior].items():
            judged = judge_samples(model, tokenizer, prompts, judge, n=samples, temperature=TEMPERATURE,
                                   max_new_tokens=max_new_tokens, settings=organism.settings, seed=seed,
                                   progress=f"sampling {model_name.upper()}, {behavior}, {condition}")
            flat_prompts, flat_responses, labels = judged.flat()
            rates[model_name][condition] = float(np.mean(labels)) if labels else float("nan")
            labelled[(model_name, condition)] = (flat_prompts, flat_responses, labels)
    return {"rates": rates, "labelled": labelled}


def attribute_behavior(
    m0: Any, tokenizer: Any, layer: int, labelled: dict, dp: Any, planted: list[str], settings: Any
) -> dict[str, Any]:
    """Probe from triggered generations of both models; rank all pairs; score against ground truth."""
    prompts, responses, labels = [], [], []
    for model_name in ("m0", "m1"):
        p, r, lab = labelled[(model_name, "trigger")]
        prompts += p
        responses += r
        labels += lab
    randoms = [evaluate_ranking(random_ranking(dp.pair_ids, seed=s), planted) for s in range(RANDOM_SEEDS)]
    random_metrics = {
        key: float(np.mean([getattr(m, key) for m in randoms])) for key in ("precision_at_n", "recall_at_n", "auroc")
    }
    result: dict[str, Any] = {"random": {"n": len(planted), **random_metrics}}
    try:
        probe = probing_vector(m0, tokenizer, prompts, responses, labels, layer=layer, settings=settings)
    except ValueError as err:
        # Without both exhibiting and non-exhibiting generations there is no probe to rank with:
        # say so in the results rather than inventing a ranking.
        LOG.warning("no probing vector: %s", err)
        return {**result, "ranking": None, "probe_pairs": 0, "activation": None, "no_probe_reason": str(err)}
    ranking = rank_pairs(dp.pair_ids, dp.vectors, probe.vector)
    return {**result, "ranking": ranking, "probe_pairs": probe.n_pairs, "activation": evaluate_ranking(ranking, planted).as_dict()}


__all__ = ["PRIMARY_BEHAVIOR", "RANDOM_SEEDS", "SAMPLES_PER_PROMPT", "TEMPERATURE", "attribute_behavior",
           "measure_behavior"]
