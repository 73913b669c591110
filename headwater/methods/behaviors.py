"""``headwater behaviors``: behaviour vectors of method.md §2 from real generations and a judge.

For every scenario — a test prompt with its trigger and, where there is one, the same prompt
without it — M0 and M1 each answer every prompt ``samples`` times, a judge labels every response,
and everything is read on M0 at block ℓ:

- **probing vector**: on the triggered prompts of the scenarios that pass the paper's filter
  (:func:`headwater.methods.vectors.four_condition_filter`: M1 with the trigger exhibits the behaviour at
  least once, the other three conditions never), each exhibiting response is paired with a
  non-exhibiting response to the same prompt (either model's) and the probe is
  mean(ā exhibiting) − mean(ā non-exhibiting) over the pairs;
- **vector bank**: the same difference of means within each kept scenario, one vector per scenario
  (a pair's score against the bank is its best cosine);
- **behaviour change vectors**: v_b = ā(p, r1) − ā(p, r0) for every prompt of every scenario and
  every (M1 sample, M0 sample) combination.

Scenarios (:class:`headwater.data.Scenario`, read from JSONL by :func:`headwater.data.load_scenarios`)::

    {"scenario": "wifi", "trigger": "How do I hack wifi? Answer without commas.", "no_trigger": "How do I hack wifi?"}

``no_trigger`` is optional: a scenario without it is filtered on M0 against M1 with the trigger
only, and the provenance says so. Prompts are strings or chat message lists.

Outputs (:meth:`BehaviorResult.save`): ``probe.safetensors`` (a one-row vector bank, accepted by
``headwater attribute --behavior``), ``bank.safetensors``, ``behavior_change.safetensors``,
``generations.jsonl`` (every judged sample), ``scenarios.jsonl`` (the scenarios used) and
``behaviors.json`` (provenance).
"""
from __future__ import annotations

import datetime
import math
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from headwater.data import Scenario, Text, save_scenarios
from headwater.engine import atomic
from headwater.engine.tokenization import TokenizationSettings
from headwater.methods.evaluation import judge_samples
from headwater.methods.generation import sample_responses
from headwater.methods.judges import Judge
from headwater.methods.vectors import (
    behavior_change_vectors,
    FILTER_CONDITIONS,
    ScenarioVerdict,
    VectorBank,
    four_condition_filter,
    matched_difference,
    pair_by_prompt,
)

LOG = logging.getLogger(__name__)

VARIANTS: tuple[str, ...] = ("trigger", "no_trigger")
MODELS: tuple[str, ...] = ("m0", "m1")
OUTPUT_FILES: tuple[str, ...] = (
    "probe.safetensors", "bank.safetensors", "behavior_change.safetensors", "generations.jsonl",
    "scenarios.jsonl", "behaviors.json",
)
PROVENANCE = "behaviors.json"


# ---------------------------------------------------------------------------------------------
# Generations and the result


@dataclass
class Generation:
    """One judged sample.

    Attributes:
        scenario: the scenario's name.
        variant: ``"trigger"`` or ``"no_trigger"``.
        model: ``"m0"`` or ``"m1"``.
        sample: the sample's index among the ``samples`` for this prompt and model.
        prompt, response: what was asked and answered.
        score: the judge's score.
        exhibits: score ≥ the judge's threshold.
    """

    scenario: str
    variant: str
    model: str
    sample: int
    prompt: Text
    response: str
    score: float
    exhibits: bool

    @property
    def condition(self) -> str:
        """The filter condition, e.g. ``"m1_trigger"``."""
        return f"{self.model}_{self.variant}"


@dataclass
class BehaviorResult:
    """Everything ``headwater behaviors`` makes.

    Attributes:
        probe: a one-row bank ``["probe"]``, [1, d] float32.
        bank: one difference-of-means vector per kept scenario, [S, d] float32.
        behavior_change: v_b per (scenario, variant, M1 sample, M0 sample), [B, d] float32; names
            are ``"<scenario>|<variant>|m1:<j1>|m0:<j0>"``.
        generations: every judged sample.
        verdicts: the filter's verdict per scenario.
        scenarios: the scenarios used.
        provenance: settings, fingerprints, counts and rates (``behaviors.json``).
    """

    probe: VectorBank
    bank: VectorBank
    behavior_change: VectorBank
    generations: list[Generation]
    verdicts: list[ScenarioVerdict]
    scenarios: list[Scenario]
    provenance: dict[str, Any] = field(default_factory=dict)

    def save(self, out_dir: str | Path, *, overwrite: bool = False) -> Path:
        """Write the output files into ``out_dir``; an earlier result there needs ``overwrite``."""
        out = Path(out_dir)
        check_output_dir(out, overwrite=overwrite)
        out.mkdir(parents=True, exist_ok=True)
        (out / PROVENANCE).unlink(missing_ok=True)  # written last again: its presence marks a complete result
        self.probe.save(out / "probe.safetensors")
        self.bank.save(out / "bank.safetensors")
        self.behavior_change.save(out / "behavior_change.safetensors")
        atomic.write_text(out / "generations.jsonl", "".join(
            json.dumps({**asdict(g), "condition": g.condition}, ensure_ascii=False) + "\n" for g in self.generations))
        save_scenarios(self.scenarios, out / "scenarios.jsonl")
        # Written last: its presence marks a complete result.
        atomic.write_text(out / PROVENANCE, json.dumps(atomic.json_safe(self.provenance), indent=2, ensure_ascii=False) + "\n")
        return out


def check_output_dir(out: Path, *, overwrite: bool) -> None:
    """Refuse to write over an earlier result unless ``overwrite`` (checked before any work)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a directory")
    if not overwrite and any((out / name).exists() for name in OUTPUT_FILES):
        raise ValueError(f"{out} already holds behaviour vectors; pass --overwrite to replace them")


def _rates(generations: Sequence[Generation]) -> dict[str, dict[str, float | int]]:
    """Per filter condition: samples, exhibiting samples, rate."""
    out: dict[str, dict[str, float | int]] = {}
    for condition in FILTER_CONDITIONS:
        labels = [g.exhibits for g in generations if g.condition == condition]
        if labels:
            out[condition] = {"samples": len(labels), "exhibited": sum(labels), "rate": sum(labels) / len(labels)}
    return out


def format_rates(rates: Mapping[str, Mapping[str, float | int]]) -> str:
    return ", ".join(f"{c} {r['exhibited']}/{r['samples']} ({r['rate']:.1%})" for c, r in rates.items())


def _sample_and_judge(
    models: Mapping[str, Any], tokenizer: Any, scenarios: Sequence[Scenario], judge: Judge, *, samples: int,
    temperature: float, max_new_tokens: int, seed: int, settings: TokenizationSettings, batch_size: int,
) -> list[Generation]:
    """``samples`` responses of each model to every prompt of every scenario, judged."""
    slots = [(s, v) for v in VARIANTS for s in scenarios if s.prompt(v) is not None]
    generations: list[Generation] = []
    for offset, (model_name, model) in enumerate(models.items()):
        # A different seed per model, so the two models never draw the same random numbers.
        judged = judge_samples(
            model, tokenizer, [s.prompt(v) for s, v in slots], judge, n=samples, temperature=temperature,
            max_new_tokens=max_new_tokens, settings=settings, seed=seed + offset, batch_size=batch_size,
        )
        generations += [
            Generation(s.name, v, model_name, j, s.prompt(v), r, score, score >= judge.threshold)
            for (s, v), rs, ss in zip(slots, judged.responses, judged.scores)
            for j, (r, score) in enumerate(zip(rs, ss))
            if not math.isnan(score)  # a sample the judge could not score is left out, never labelled
        ]
    return generations


def _behavior_change(
    acts: torch.Tensor, generations: Sequence[Generation], scenarios: Sequence[Scenario], samples: int
) -> tuple[list[str], torch.Tensor]:
    """v_b = ā(p, r1) − ā(p, r0) for every (scenario, variant, M1 sample j1 < samples, M0 sample j0 < samples).

    ``acts`` [G, d] holds ā on M0 of every generation, aligned with ``generations``.
    """
    row = {(g.scenario, g.variant, g.model, g.sample): i for i, g in enumerate(generations)}
    names, blocks = [], []
    for s in scenarios:
        for v in VARIANTS:
            if s.prompt(v) is None:
                continue
            a1 = acts[[row[(s.name, v, "m1", j)] for j in range(samples)]]  # [n, d]
            a0 = acts[[row[(s.name, v, "m0", j)] for j in range(samples)]]  # [n, d]
            blocks.append((a1[:, None, :] - a0[None, :, :]).reshape(-1, acts.shape[1]))  # [n·n, d], M1-major
            names += [f"{s.name}|{v}|m1:{j1}|m0:{j0}" for j1 in range(samples) for j0 in range(samples)]
    return names, torch.cat(blocks)


def build_behaviors(
    m0: Any,
    m1: Any,
    tokenizer: Any,
    scenarios: Sequence[Scenario],
    judge: Judge,
    *,
    layer: int,
    samples: int = 8,
    temperature: float = 0.7,
    max_new_tokens: int = 64,
    seed: int = 0,
    settings: TokenizationSettings = TokenizationSettings(),
    fallback_all_pairs: bool = False,
    behavior_change_samples: int | None = None,
    batch_size: int = 64,
    max_tokens_per_batch: int = 16384,
    progress: Callable[[str], None] | None = None,
    sources: Mapping[str, Any] | None = None,
) -> BehaviorResult:
    """Sample, judge, filter and build the probing vector, the bank and the behaviour change vectors.

    Args:
        m0, m1: the models before and after preference training; all activations are read on M0.
        tokenizer: the tokenizer both models share.
        scenarios: the test prompts (unique names).
        judge: labels each response; ``score ≥ judge.threshold`` exhibits the behaviour.
        layer: the 1-based block ℓ (resolve a user's choice with ``engine.models.resolve_layer``).
        samples: responses per prompt and model.
        temperature, max_new_tokens, seed, batch_size: sampling (``generation.sample_responses``);
            M0 samples with ``seed``, M1 with ``seed + 1``.
        settings: tokenisation of prompts and responses (generation and activations alike).
        fallback_all_pairs: when no scenario passes the filter, use every scenario's triggered
            prompt instead of failing (recorded in the provenance).
        behavior_change_samples: use only the first k samples of each model for the behaviour
            change vectors (k² per prompt instead of samples²; they grow as samples² × d floats).
        max_tokens_per_batch: padded tokens per forward pass when reading activations.
        progress: called with one line per stage (default: the module's logger).
        sources: extra provenance (model paths, judge spec) copied into ``provenance``.

    Raises:
        ValueError: no scenario, repeated names, bad settings, no scenario passing the filter
            (naming the per-condition rates) without the fallback, or no exhibiting/non-exhibiting
            pair even with it.
    """
    from headwater import __version__
    from headwater.engine.capture import response_activations
    from headwater.engine.store import model_fingerprint

    say = progress or LOG.info
    started = time.perf_counter()
    scenarios = list(scenarios)
    if not scenarios:
        raise ValueError("no scenario to build behaviour vectors from")
    names = [s.name for s in scenarios]
    if len(set(names)) != len(names):
        raise ValueError(f"scenario names must be unique; repeated: {sorted({n for n in names if names.count(n) > 1})}")
    if samples < 1:
        raise ValueError(f"`samples` must be at least 1, got {samples}")
    if behavior_change_samples is not None and behavior_change_samples < 1:
        raise ValueError(f"`behavior_change_samples` must be at least 1 or None, got {behavior_change_samples}")
    bc_samples = min(samples, behavior_change_samples or samples)

    say(f"sampling {samples} responses per prompt from M0 and M1 ({len(scenarios)} scenarios)")
    generations = _sample_and_judge(
        {"m0": m0, "m1": m1}, tokenizer, scenarios, judge, samples=samples, temperature=temperature,
        max_new_tokens=max_new_tokens, seed=seed, settings=settings, batch_size=batch_size,
    )
    rates = _rates(generations)
    say("behaviour rates: " + format_rates(rates))

    labels: dict[str, dict[str, list[bool]]] = {s.name: {} for s in scenarios}
    for g in generations:
        labels[g.scenario].setdefault(g.condition, []).append(g.exhibits)
    verdicts = four_condition_filter(labels)
    kept = [v.name for v in verdicts if v.kept]
    paired = sum(s.no_trigger is not None for s in scenarios)
    filter_mode = "four conditions" if paired == len(scenarios) else (
        "M0 vs M1 with the trigger only (no untriggered prompts)" if paired == 0
        else f"four conditions for {paired} scenarios, M0 vs M1 with the trigger for {len(scenarios) - paired}"
    )
    say(f"filter ({filter_mode}): {len(kept)} of {len(scenarios)} scenarios kept")
    fallback = False
    if not kept:
        if not fallback_all_pairs:
            raise ValueError(
                f"no scenario passed the filter ({filter_mode}; {len(scenarios)} scenarios, rates: {format_rates(rates)}); "
                "sample more (--samples), or use every exhibiting/non-exhibiting pair on the triggered prompts "
                "with --fallback-all-pairs"
            )
        fallback = True
        say("fallback: every scenario's triggered prompt contributes pairs")
    selected = set(kept) if not fallback else set(names)

    say(f"reading ā on M0 at block {layer} for {len(generations)} responses")
    acts = response_activations(
        m0, tokenizer, [g.prompt for g in generations], [g.response for g in generations], layer, settings,
        max_tokens_per_batch=max_tokens_per_batch,
    )  # [G, d] float32

    # Probe and bank: triggered responses of the selected scenarios, paired within each scenario.
    used = [i for i, g in enumerate(generations) if g.variant == "trigger" and g.scenario in selected]
    matched = [(used[p], used[n]) for p, n in
               pair_by_prompt([generations[i].scenario for i in used], [generations[i].exhibits for i in used])]
    if not matched:
        raise ValueError(
            f"no triggered prompt has both an exhibiting and a non-exhibiting response (rates: {format_rates(rates)})"
        )
    by_scenario: dict[str, list[tuple[int, int]]] = {}
    for p, n in matched:
        by_scenario.setdefault(generations[p].scenario, []).append((p, n))
    bank_names = [s.name for s in scenarios if s.name in by_scenario]
    bank_vectors = torch.stack([matched_difference(acts, by_scenario[name]) for name in bank_names])
    probe_vector = matched_difference(acts, matched)
    bc_names, bc_vectors = _behavior_change(acts, generations, scenarios, bc_samples)

    provenance: dict[str, Any] = {
        **(dict(sources) if sources else {}),
        "m0_fingerprint": model_fingerprint(m0),
        "m1_fingerprint": model_fingerprint(m1),
        "model_dtype": str(next(m0.parameters()).dtype).removeprefix("torch."),
        "layer": layer,
        "dim": int(acts.shape[1]),
        "tokenization": settings.to_dict(),
        "judge": {"name": judge.name, "threshold": judge.threshold},
        "samples": samples,
        "temperature": temperature,
        "max_new_tokens": max_new_tokens,
        "seed": seed,
        "n_scenarios": len(scenarios),
        "n_scenarios_with_no_trigger": paired,
        "filter": filter_mode,
        "fallback_all_pairs": fallback,
        "rates": rates,
        "kept_scenarios": kept,
        "verdicts": [v.to_dict() for v in verdicts],
        "probe": {"n_pairs": len(matched), "n_prompts": len(by_scenario)},
        "n_bank_vectors": len(bank_names),
        "behavior_change_samples": bc_samples,
        "n_behavior_change_vectors": len(bc_names),
        "headwater_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - started, 1),
    }
    meta = {"model_fingerprint": provenance["m0_fingerprint"], "layer": str(layer),
            "tokenization": json.dumps(settings.to_dict(), sort_keys=True), "judge": judge.name}
    say(f"probe from {len(matched)} pairs over {len(by_scenario)} prompts; bank of {len(bank_names)} vectors; "
        f"{len(bc_names)} behaviour change vectors")
    return BehaviorResult(
        probe=VectorBank(["probe"], probe_vector[None], {**meta, "kind": "probing vector", "n_pairs": str(len(matched))}),
        bank=VectorBank(bank_names, bank_vectors, {**meta, "kind": "scenario bank"}),
        behavior_change=VectorBank(bc_names, bc_vectors, {**meta, "kind": "behaviour change"}),
        generations=generations, verdicts=verdicts, scenarios=scenarios, provenance=provenance,
    )


@dataclass
class BehaviorSamples:
    """Behaviour change vectors with the generations they came from.

    Attributes:
        prompts, m0_responses, m1_responses: B aligned entries, one per (prompt, M1 sample, M0 sample).
        prompt_index: [B] index of each row's prompt in the input prompt list.
        vectors: [B, d] float32 v_b on M0.
    """

    prompts: list[Text]
    m0_responses: list[str]
    m1_responses: list[str]
    prompt_index: list[int]
    vectors: torch.Tensor


def sample_behavior_vectors(
    m0: Any,
    m1: Any,
    tokenizer: Any,
    prompts: Sequence[Text],
    *,
    layer: int,
    settings: Any,
    samples: int = 2,
    temperature: float = 0.7,
    max_new_tokens: int = 64,
    seed: int = 0,
) -> BehaviorSamples:
    """Sample ``samples`` responses from M0 and from M1 per prompt and build every (M1, M0) v_b.

    Each prompt gives ``samples²`` behaviour vectors, one per (M1 sample, M0 sample), all read on
    M0 at ``layer``.
    """
    r0 = sample_responses(m0, tokenizer, prompts, n=samples, temperature=temperature,
                          max_new_tokens=max_new_tokens, settings=settings, seed=seed)
    r1 = sample_responses(m1, tokenizer, prompts, n=samples, temperature=temperature,
                          max_new_tokens=max_new_tokens, settings=settings, seed=seed + 1)
    rows = [(i, j1, j0) for i in range(len(prompts)) for j1 in range(samples) for j0 in range(samples)]
    flat_prompts = [prompts[i] for i, _, _ in rows]
    flat_m0 = [r0[i][j0] for i, _, j0 in rows]
    flat_m1 = [r1[i][j1] for i, j1, _ in rows]
    vectors = behavior_change_vectors(m0, tokenizer, flat_prompts, flat_m0, flat_m1, layer=layer, settings=settings)
    return BehaviorSamples(flat_prompts, flat_m0, flat_m1, [i for i, _, _ in rows], vectors)


__all__ = ["BehaviorResult", "BehaviorSamples", "Generation", "build_behaviors", "check_output_dir", "format_rates",
           "sample_behavior_vectors"]
