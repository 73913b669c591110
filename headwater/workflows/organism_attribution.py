"""Measure a planted behaviour of the organism and attribute it: the shared first half of
``headwater demo`` and ``headwater experiment``.

:func:`measure_behavior` samples M0 and M1 on the behaviour's held-out test prompts with and
without the trigger and judges every response; :func:`attribute_behavior` builds the probing
vector from the triggered generations of the scenarios that pass the paper's four-condition
filter (and, beside it, from all of them), ranks every pair and scores the ranking against the
planted ground truth, next to random selection.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import numpy as np

from headwater.methods.attribution import evaluate_ranking, random_ranking, rank_pairs
from headwater.methods.evaluation import judge_samples
from headwater.methods.judges import Judge
from headwater.methods.vectors import four_condition_filter, probing_vector, prompt_key
from headwater.organism.scenarios import organism_scenarios

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


def scenario_filter(labelled: dict, test_prompts: Mapping[str, Sequence[Any]], behavior: str) -> dict[str, Any]:
    """The paper's four-condition filter on the measured generations (method.md §2).

    Each test prompt with its untriggered twin is a scenario
    (:func:`headwater.organism.scenarios.organism_scenarios`); it is kept when M1 with the trigger
    exhibits the behaviour at least once and M0 with it, M1 without it and M0 without it never do.

    Returns:
        ``{"kept": [trigger prompt keys], "n_kept": int, "n_scenarios": int, "verdicts": [...]}``.
    """
    by_prompt: dict[tuple[str, str, Any], list[bool]] = {}
    for (model, condition), (prompts, _, labels) in labelled.items():
        for prompt, label in zip(prompts, labels):
            by_prompt.setdefault((model, condition, prompt_key(prompt)), []).append(bool(label))
    scenarios = organism_scenarios({behavior: test_prompts}, behavior)
    labels = {}
    for s in scenarios:
        entry = {f"{m}_trigger": by_prompt.get((m, "trigger", prompt_key(s.trigger)), []) for m in ("m1", "m0")}
        if s.no_trigger is not None:
            entry.update({f"{m}_no_trigger": by_prompt.get((m, "no_trigger", prompt_key(s.no_trigger)), [])
                          for m in ("m1", "m0")})
        labels[s.name] = entry
    verdicts = four_condition_filter(labels)
    kept = [prompt_key(s.trigger) for s, v in zip(scenarios, verdicts) if v.kept]
    return {"kept": kept, "n_kept": len(kept), "n_scenarios": len(scenarios),
            "verdicts": [v.to_dict() for v in verdicts]}


def attribute_behavior(
    m0: Any, tokenizer: Any, layer: int, labelled: dict, dp: Any, planted: list[str], settings: Any,
    *, test_prompts: Mapping[str, Sequence[Any]] | None = None, behavior: str | None = None, filtered: bool = True,
) -> dict[str, Any]:
    """Probe from triggered generations of both models; rank all pairs; score against ground truth.

    With ``test_prompts`` (the behaviour's ``{"trigger": [...], "no_trigger": [...]}``) and
    ``filtered`` (the default, as the paper does), the probe uses only the scenarios that pass the
    four-condition filter (:func:`scenario_filter`); the unfiltered probe (every triggered
    generation) is ranked and scored beside it (``activation_unfiltered``). ``ranking`` is the
    filtered probe's when it exists, else the unfiltered one's (``probe`` says which).
    """
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

    def probe_ranking(keep: set | None) -> tuple[Any, int, str | None]:
        chosen = [i for i, p in enumerate(prompts) if keep is None or prompt_key(p) in keep]
        try:
            probe = probing_vector(m0, tokenizer, [prompts[i] for i in chosen], [responses[i] for i in chosen],
                                   [labels[i] for i in chosen], layer=layer, settings=settings)
        except ValueError as err:
            return None, 0, str(err)
        return rank_pairs(dp.pair_ids, dp.vectors, probe.vector), probe.n_pairs, None

    unfiltered, unfiltered_pairs, unfiltered_error = probe_ranking(None)
    result["activation_unfiltered"] = evaluate_ranking(unfiltered, planted).as_dict() if unfiltered is not None else None
    result["probe_pairs_unfiltered"] = unfiltered_pairs
    ranking, pairs, error, probe = unfiltered, unfiltered_pairs, unfiltered_error, "unfiltered"
    if filtered and test_prompts is not None:
        verdicts = scenario_filter(labelled, test_prompts, behavior or "behavior")
        result["filter"] = {k: verdicts[k] for k in ("n_kept", "n_scenarios")}
        kept, kept_pairs, kept_error = probe_ranking(set(verdicts["kept"])) if verdicts["kept"] else (
            None, 0, "no scenario passed the four-condition filter")
        if kept is not None:
            ranking, pairs, error, probe = kept, kept_pairs, None, "four-condition filter"
        else:
            # Say so and keep the unfiltered probe rather than rank with nothing.
            LOG.warning("filtered probe unavailable (%s); using the unfiltered probe", kept_error)
            result["filter"]["fallback_reason"] = kept_error
    result["probe"] = probe
    if ranking is None:
        # Without both exhibiting and non-exhibiting generations there is no probe to rank with:
        # say so in the results rather than inventing a ranking.
        LOG.warning("no probing vector: %s", error)
        return {**result, "ranking": None, "probe_pairs": 0, "activation": None, "no_probe_reason": error}
    return {**result, "ranking": ranking, "probe_pairs": pairs, "activation": evaluate_ranking(ranking, planted).as_dict()}


__all__ = ["PRIMARY_BEHAVIOR", "RANDOM_SEEDS", "SAMPLES_PER_PROMPT", "TEMPERATURE", "attribute_behavior",
           "measure_behavior", "scenario_filter"]
