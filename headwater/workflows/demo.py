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

import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from headwater.data import load_preferences
from headwater.engine.models import load_model, resolve_layer
from headwater.methods.vectors import datapoint_vectors
from headwater.organism import OrganismConfig, build_organism, max_new_tokens_for
from headwater.workflows.organism_attribution import (
    PRIMARY_BEHAVIOR,
    SAMPLES_PER_PROMPT,
    attribute_behavior,
    measure_behavior,
)
from headwater.workflows.tables import text_table


def run_demo(
    *,
    preset: str = "default",
    cache_dir: str | Path | None = None,
    seed: int = 0,
    samples: int | None = None,
    out_dir: str | Path | None = None,
    filtered_probe: bool = True,
) -> dict[str, Any]:
    """Run the demo and return its results (the ``--json`` document).

    ``filtered_probe``: build each probe from the scenarios that pass the paper's four-condition
    filter (the default); the unfiltered probe's attribution is reported beside it either way.
    """
    start = time.perf_counter()
    config = OrganismConfig.preset(preset, seed)
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
        attributed = attribute_behavior(m0, tokenizer, layer, measured["labelled"], dp, planted, organism.settings,
                                        test_prompts=organism.test_prompts[behavior], behavior=behavior,
                                        filtered=filtered_probe)
        behaviors[behavior] = {
            "behavior_rate": measured["rates"],
            "n_planted": len(planted),
            "probe": attributed["probe"],
            "filter": attributed.get("filter"),
            "probe_pairs": attributed["probe_pairs"],
            "probe_pairs_unfiltered": attributed["probe_pairs_unfiltered"],
            "attribution": {"activation": attributed["activation"],
                            "activation_unfiltered": attributed["activation_unfiltered"],
                            "random": attributed["random"]},
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
    rows, notes = [], []
    for name, b in results["behaviors"].items():
        r, a = b["behavior_rate"], b["attribution"]
        act, unf = a["activation"], a.get("activation_unfiltered")
        kept = b.get("filter") or {}
        rows.append([
            name, f"{r['m0']['trigger']:.1%}", f"{r['m0']['no_trigger']:.1%}", f"{r['m1']['trigger']:.1%}",
            f"{r['m1']['no_trigger']:.1%}", b["n_planted"],
            f"{kept['n_kept']}/{kept['n_scenarios']}" if kept else "-",
            f"{act['precision_at_n']:.2f}" if act else "n/a", f"{unf['precision_at_n']:.2f}" if unf else "n/a",
            f"{a['random']['precision_at_n']:.2f}", f"{act['auroc']:.3f}" if act else "n/a",
        ])
        if act and b.get("probe") != "four-condition filter":
            notes.append(f"{name}: the probe is unfiltered ({(b.get('filter') or {}).get('fallback_reason', 'as asked')})")
        if not act:
            notes.append(f"{name}: no probing vector: {b['no_probe_reason']}")
    header = ["behaviour", "M0 trig", "M0 none", "M1 trig", "M1 none", "planted", "kept", "P@N act", "P@N unfilt.",
              "P@N rand", "AUROC"]
    lines = [
        f"model organism: {results['n_pairs']} preference pairs, layer {results['layer']}, "
        f"{results['samples_per_prompt']} samples per test prompt; probe from the scenarios that pass the "
        "four-condition filter (kept), the unfiltered probe beside it",
        "",
        text_table(header, rows),
        *notes,
        f"\nwall time: {results['seconds']:.1f} s",
    ]
    return "\n".join(lines)


__all__ = ["format_results", "run_demo"]
