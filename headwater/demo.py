"""``headwater demo``: the whole attribution pipeline on the built-in model organism.

1. Build (or reuse from the cache) the organism: a tiny transformers model taught by SFT (M0),
   a preference set with planted contaminated pairs, DPO on it (M1).
2. Measure each planted behaviour: sample M0 and M1 on held-out test prompts with and without the
   trigger, judge every response, report the rates.
3. Build each behaviour's probing vector on M0 from those labelled generations (method.md §2).
4. Compute every pair's datapoint vector on M0, rank the pairs by cosine with the probe, and
   score the ranking against the planted ground truth (precision@N and recall@N with N = the
   number of planted pairs, AUROC), next to random selection.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from headwater.attribution import evaluate_ranking, random_ranking, rank_pairs
from headwater.data import load_preferences
from headwater.engine.models import load_model, resolve_layer
from headwater.generation import sample_responses
from headwater.organism import OrganismConfig, build_organism
from headwater.vectors import datapoint_vectors, probing_vector

LOG = logging.getLogger(__name__)

PRIMARY_BEHAVIOR = "distractor_compliance"
RANDOM_SEEDS = 20  # random selection is averaged over this many orders
SAMPLES_PER_PROMPT = 4
TEMPERATURE = 0.7  # the paper's evaluation temperature
MAX_NEW_TOKENS = 64  # organism answers are one to three short sentences


def organism_config(preset: str, seed: int) -> OrganismConfig:
    """The organism of a preset: ``"default"`` (the demo's) or ``"miniature"`` (seconds, for tests)."""
    if preset == "default":
        return OrganismConfig.default(seed=seed)
    if preset == "miniature":
        return OrganismConfig.miniature(seed=seed)
    raise ValueError(f"unknown preset {preset!r}; choose 'default' or 'miniature'")


def max_new_tokens_for(preset: str) -> int:
    """The miniature organism is too small to learn when to stop: its answers are capped short."""
    return MAX_NEW_TOKENS if preset == "default" else 16


def _rate(labels: list[bool]) -> float:
    return float(np.mean(labels)) if labels else float("nan")


def measure_behavior(
    organism: Any, behavior: str, models: dict[str, tuple[Any, Any]], samples: int, seed: int, max_new_tokens: int
) -> dict[str, Any]:
    """Generations of M0 and M1 on the behaviour's test prompts, judged; rates per condition."""
    judge = organism.judges[behavior]
    rates: dict[str, dict[str, float]] = {}
    labelled: dict[tuple[str, str], tuple[list[str], list[str], list[bool]]] = {}
    for model_name, (model, tokenizer) in models.items():
        rates[model_name] = {}
        for condition, prompts in organism.test_prompts[behavior].items():
            responses = sample_responses(
                model, tokenizer, prompts, n=samples, temperature=TEMPERATURE, max_new_tokens=max_new_tokens,
                settings=organism.settings, seed=seed,
            )
            flat_prompts = [p for p, rs in zip(prompts, responses) for _ in rs]
            flat_responses = [r for rs in responses for r in rs]
            labels = [s >= judge.threshold for s in judge.score_batch(flat_prompts, flat_responses)]
            rates[model_name][condition] = _rate(labels)
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


def run_demo(
    *,
    preset: str = "default",
    cache_dir: str | Path | None = None,
    seed: int = 0,
    samples: int | None = None,
    out_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Run the demo and return its results (the ``--json`` document)."""
    start = time.perf_counter()
    config = organism_config(preset, seed)
    samples = samples if samples is not None else SAMPLES_PER_PROMPT
    max_new_tokens = max_new_tokens_for(preset)
    organism = build_organism(config, cache_dir=cache_dir)
    # The organism's matrices are tiny: one thread beats two that wait on each other.
    torch.set_num_threads(config.num_threads)
    models = {"m0": load_model(organism.m0_path), "m1": load_model(organism.m1_path)}
    m0, tokenizer = models["m0"]
    layer = resolve_layer(m0, None)

    dataset = load_preferences(organism.preferences_path)
    with tqdm(total=2 * len(dataset), desc=f"datapoint vectors (layer {layer})", unit="seq", disable=None) as bar:
        dp = datapoint_vectors(m0, tokenizer, list(dataset), layer=layer, settings=organism.settings, progress=bar.update)

    behaviors: dict[str, Any] = {}
    for behavior in organism.behaviors:
        measured = measure_behavior(organism, behavior, models, samples, seed, max_new_tokens)
        planted = organism.planted_ids(behavior)
        attributed = attribute_behavior(m0, tokenizer, layer, measured["labelled"], dp, planted, organism.settings)
        behaviors[behavior] = {
            "behavior_rate": measured["rates"],
            "n_planted": len(planted),
            "probe_pairs": attributed["probe_pairs"],
            "attribution": {"activation": attributed["activation"], "random": attributed["random"]},
        }
        if attributed["activation"] is None:
            behaviors[behavior]["no_probe_reason"] = attributed["no_probe_reason"]
        if out_dir is not None and attributed["ranking"] is not None:
            attributed["ranking"].save(Path(out_dir) / f"rankings-{behavior}.parquet")

    primary = behaviors[PRIMARY_BEHAVIOR]
    results = {
        "behavior": PRIMARY_BEHAVIOR,
        "behavior_rate": primary["behavior_rate"],
        "attribution": primary["attribution"],
        "n_pairs": len(dataset),
        "n_planted": primary["n_planted"],
        "n_encoded": len(dp.pair_ids),
        "layer": layer,
        "samples_per_prompt": samples,
        "preset": preset,
        "seed": seed,
        "organism_cache": str(organism.root),
        "behaviors": behaviors,
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(format_results(results))
    return results


def format_results(results: dict[str, Any]) -> str:
    """A plain-text table of behaviour rates and attribution quality per planted behaviour."""
    lines = [
        f"model organism: {results['n_pairs']} preference pairs, layer {results['layer']}, "
        f"{results['samples_per_prompt']} samples per test prompt",
        "",
        f"{'behaviour':<24}{'M0 trig':>9}{'M0 none':>9}{'M1 trig':>9}{'M1 none':>9}"
        f"{'planted':>9}{'P@N act':>9}{'P@N rand':>9}{'AUROC':>8}",
    ]
    for name, b in results["behaviors"].items():
        r, a = b["behavior_rate"], b["attribution"]
        act = a["activation"]
        act_cols = f"{act['precision_at_n']:>9.2f}" if act else f"{'n/a':>9}"
        auroc = f"{act['auroc']:>8.3f}" if act else f"{'n/a':>8}"
        lines.append(
            f"{name:<24}{r['m0']['trigger']:>9.1%}{r['m0']['no_trigger']:>9.1%}{r['m1']['trigger']:>9.1%}"
            f"{r['m1']['no_trigger']:>9.1%}{b['n_planted']:>9}{act_cols}"
            f"{a['random']['precision_at_n']:>9.2f}{auroc}"
        )
        if not act:
            lines.append(f"{'':<24}no probing vector: {b['no_probe_reason']}")
    lines.append(f"\nwall time: {results['seconds']:.1f} s")
    return "\n".join(lines)
