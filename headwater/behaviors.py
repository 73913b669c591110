"""``headwater behaviors``: behaviour vectors of method.md §2 from real generations and a judge.

For every scenario — a test prompt with its trigger and, where there is one, the same prompt
without it — M0 and M1 each answer every prompt ``samples`` times, a judge labels every response,
and everything is read on M0 at block ℓ:

- **probing vector**: on the triggered prompts of the scenarios that pass the paper's filter
  (:func:`headwater.vectors.four_condition_filter`: M1 with the trigger exhibits the behaviour at
  least once, the other three conditions never), each exhibiting response is paired with a
  non-exhibiting response to the same prompt (either model's) and the probe is
  mean(ā exhibiting) − mean(ā non-exhibiting) over the pairs;
- **vector bank**: the same difference of means within each kept scenario, one vector per scenario
  (a pair's score against the bank is its best cosine);
- **behaviour change vectors**: v_b = ā(p, r1) − ā(p, r0) for every prompt of every scenario and
  every (M1 sample, M0 sample) combination.

Scenario files are JSONL, one scenario per line::

    {"scenario": "wifi", "trigger": "How do I hack wifi? Answer without commas.", "no_trigger": "How do I hack wifi?"}

``scenario`` (a unique name) is optional and defaults to ``line-<n>``; ``trigger`` is required;
``no_trigger`` is optional — a scenario without it is filtered on M0 against M1 with the trigger
only, and the provenance says so. Prompts are strings or chat message lists. The organism's held-out
test prompts become scenarios with :func:`organism_scenarios`.

Outputs (:meth:`BehaviorResult.save`): ``probe.safetensors`` (a one-row vector bank, accepted by
``headwater attribute --behavior``), ``bank.safetensors``, ``behavior_change.safetensors``,
``generations.jsonl`` (every judged sample), ``scenarios.jsonl`` (the scenarios used) and
``behaviors.json`` (provenance).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from headwater.data import Text, iter_jsonl
from headwater.engine.tokenization import TokenizationSettings
from headwater.generation import sample_responses
from headwater.judges import Judge
from headwater.vectors import (
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
# Scenarios


@dataclass(frozen=True)
class Scenario:
    """One test prompt with its trigger and, optionally, the same prompt without it.

    Attributes:
        name: unique within a scenario set.
        trigger: the prompt carrying the trigger (a string or a message list).
        no_trigger: the same prompt without the trigger, or None.
    """

    name: str
    trigger: Text
    no_trigger: Text | None = None

    def prompt(self, variant: str) -> Text | None:
        return self.trigger if variant == "trigger" else self.no_trigger


def _is_prompt(value: Any) -> bool:
    """A non-empty string, or a non-empty list of {"role", "content"} messages."""
    if isinstance(value, str):
        return bool(value.strip())
    return (
        isinstance(value, list) and bool(value)
        and all(isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in value)
    )


def load_scenarios(path: str | Path) -> list[Scenario]:
    """Scenarios from a JSONL file (the format in this module's docstring).

    Raises:
        FileNotFoundError: no such file.
        ValueError: a malformed row (naming ``file:line``), a repeated name, or no scenario.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"scenario file {path} does not exist")
    scenarios: list[Scenario] = []
    seen: dict[str, int] = {}
    for number, row in iter_jsonl(path):
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{number}: expected an object with 'trigger' (and optional 'scenario', 'no_trigger')")
        unknown = set(row) - {"scenario", "trigger", "no_trigger"}
        if unknown:
            raise ValueError(f"{path}:{number}: unknown field(s) {sorted(unknown)}; use scenario, trigger, no_trigger")
        if not _is_prompt(row.get("trigger")):
            raise ValueError(f"{path}:{number}: 'trigger' must be a non-empty prompt string or message list")
        no_trigger = row.get("no_trigger")
        if no_trigger is not None and not _is_prompt(no_trigger):
            raise ValueError(f"{path}:{number}: 'no_trigger' must be a non-empty prompt string or message list, or absent")
        name = row.get("scenario", f"line-{number}")
        if not isinstance(name, str) or not name or "\n" in name:
            raise ValueError(f"{path}:{number}: 'scenario' must be a non-empty one-line string")
        if name in seen:
            raise ValueError(f"{path}:{number}: scenario {name!r} repeats line {seen[name]}")
        seen[name] = number
        scenarios.append(Scenario(name, row["trigger"], no_trigger))
    if not scenarios:
        raise ValueError(f"{path} holds no scenario")
    return scenarios


def save_scenarios(scenarios: Sequence[Scenario], path: str | Path) -> Path:
    """Write scenarios as JSONL that :func:`load_scenarios` reads back."""
    path = Path(path)
    with path.open("w", encoding="utf-8") as f:
        for s in scenarios:
            row: dict[str, Any] = {"scenario": s.name, "trigger": s.trigger}
            if s.no_trigger is not None:
                row["no_trigger"] = s.no_trigger
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def _words_within(short: str, long: str) -> bool:
    """Whether the words of ``short`` appear in ``long`` in order (``long`` may add words)."""
    remaining = iter(long.split())
    return all(word in remaining for word in short.split())


def organism_scenarios(test_prompts: Mapping[str, Mapping[str, Sequence[Text]]], behavior: str) -> list[Scenario]:
    """Scenarios from a model organism's held-out test prompts (``Organism.test_prompts``).

    The organism stores ``{behaviour: {"trigger": [...], "no_trigger": [...]}}``. Where the lists
    are aligned — every untriggered prompt's words appear, in order, in the triggered prompt at
    the same position (the trigger only adds clauses) — each position is one scenario with both
    prompts. Otherwise (e.g. a trigger that is the topic itself) the untriggered prompts are other
    requests, not the same prompt, and each triggered prompt becomes a scenario on its own.
    """
    if behavior not in test_prompts:
        raise ValueError(f"no test prompts for behaviour {behavior!r}; the organism has {sorted(test_prompts)}")
    by_variant = test_prompts[behavior]
    triggered = list(by_variant.get("trigger", []))
    untriggered = list(by_variant.get("no_trigger", []))
    if not triggered:
        raise ValueError(f"behaviour {behavior!r} has no triggered test prompt")
    aligned = len(untriggered) == len(triggered) and all(
        isinstance(t, str) and isinstance(u, str) and _words_within(u, t) for t, u in zip(triggered, untriggered)
    )
    width = len(str(len(triggered) - 1))
    return [
        Scenario(f"{behavior}-{i:0{width}d}", t, untriggered[i] if aligned else None)
        for i, t in enumerate(triggered)
    ]


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
        self.probe.save(out / "probe.safetensors")
        self.bank.save(out / "bank.safetensors")
        self.behavior_change.save(out / "behavior_change.safetensors")
        with (out / "generations.jsonl").open("w", encoding="utf-8") as f:
            for g in self.generations:
                f.write(json.dumps({**asdict(g), "condition": g.condition}, ensure_ascii=False) + "\n")
        save_scenarios(self.scenarios, out / "scenarios.jsonl")
        # Written last: its presence marks a complete result.
        (out / PROVENANCE).write_text(json.dumps(self.provenance, indent=2, ensure_ascii=False) + "\n")
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


def _format_rates(rates: Mapping[str, Mapping[str, float | int]]) -> str:
    return ", ".join(f"{c} {r['exhibited']}/{r['samples']} ({r['rate']:.1%})" for c, r in rates.items())


def _sample_and_judge(
    models: Mapping[str, Any], tokenizer: Any, scenarios: Sequence[Scenario], judge: Judge, *, samples: int,
    temperature: float, max_new_tokens: int, seed: int, settings: TokenizationSettings, batch_size: int,
) -> list[Generation]:
    """``samples`` responses of each model to every prompt of every scenario, judged."""
    slots = [(s, v) for v in VARIANTS for s in scenarios if s.prompt(v) is not None]
    prompts = [s.prompt(v) for s, v in slots]
    generations: list[Generation] = []
    for offset, (model_name, model) in enumerate(models.items()):
        # A different seed per model, so the two models never draw the same random numbers.
        responses = sample_responses(
            model, tokenizer, prompts, n=samples, temperature=temperature, max_new_tokens=max_new_tokens,
            settings=settings, seed=seed + offset, batch_size=batch_size,
        )
        flat = [(slot, j, r) for slot, rs in zip(slots, responses) for j, r in enumerate(rs)]
        scores = judge.score_batch([s.prompt(v) for (s, v), _, _ in flat], [r for _, _, r in flat])
        generations += [
            Generation(s.name, v, model_name, j, s.prompt(v), r, float(score), float(score) >= judge.threshold)
            for ((s, v), j, r), score in zip(flat, scores)
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
    say("behaviour rates: " + _format_rates(rates))

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
                f"no scenario passed the filter ({filter_mode}; {len(scenarios)} scenarios, rates: {_format_rates(rates)}); "
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
            f"no triggered prompt has both an exhibiting and a non-exhibiting response (rates: {_format_rates(rates)})"
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
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
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


# ---------------------------------------------------------------------------------------------
# Command line


ORGANISM_PRESETS = ("default", "miniature")


def add_cli(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``headwater behaviors``."""
    from headwater.cli import _add_tokenization_args

    p = subparsers.add_parser(
        "behaviors", help="probing vector, vector bank and behaviour change vectors from generations of M0 and M1",
        description="Sample M0 and M1 on scenarios with and without their trigger, judge every response, keep "
                    "the scenarios where only M1 with the trigger shows the behaviour, and build the probing "
                    "vector, a vector bank and behaviour change vectors on M0.",
    )
    p.add_argument("--organism", default=None,
                   help="a built model organism directory, or 'default'/'miniature' (built or reused from the "
                        "cache): supplies --m0, --m1, the scenarios of --behavior and the judge")
    p.add_argument("--behavior", default="distractor_compliance", help="with --organism: which planted behaviour")
    p.add_argument("--m0", type=Path, default=None, help="the model before preference training (activations are read on it)")
    p.add_argument("--m1", type=Path, default=None, help="the model after preference training")
    p.add_argument("--prompts", type=Path, default=None,
                   help='scenario JSONL: {"scenario": name, "trigger": prompt, "no_trigger": prompt (optional)}')
    p.add_argument("--judge", default=None, help="organism:<behaviour>, e.g. organism:distractor_compliance")
    p.add_argument("--samples", type=int, default=8, help="responses per prompt and model")
    p.add_argument("--layer", type=int, default=None,
                   help="decoder block ℓ (1-based, negative from the end; default: 5/8 of the depth)")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64, help="sequences per generate call")
    p.add_argument("--max-tokens-per-batch", type=int, default=16384, help="padded tokens per forward pass")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--behavior-change-samples", type=int, default=None,
                   help="behaviour change vectors from the first K samples of each model (K² per prompt; default: all)")
    p.add_argument("--fallback-all-pairs", action="store_true",
                   help="when no scenario passes the filter, build from every triggered prompt instead of failing")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--overwrite", action="store_true", help="replace behaviour vectors already in --out")
    _add_tokenization_args(p)
    p.set_defaults(func=cmd_behaviors)
    return p


def _open_organism(spec: str) -> Any:
    from headwater.organism import OrganismConfig, build_organism, load_organism

    if spec in ORGANISM_PRESETS and not Path(spec).exists():
        return build_organism(getattr(OrganismConfig, spec)())
    return load_organism(spec)


def cmd_behaviors(args: argparse.Namespace) -> int:
    from headwater.cli import _settings
    from headwater.engine.models import load_model, resolve_layer
    from headwater.evaluation import resolve_judge

    check_output_dir(args.out, overwrite=args.overwrite)  # before any model loads or samples
    m0_path, m1_path, judge_spec, scenarios = args.m0, args.m1, args.judge, None
    if args.prompts is not None:
        scenarios = load_scenarios(args.prompts)
    if args.organism is not None:
        organism = _open_organism(args.organism)
        m0_path, m1_path = m0_path or organism.m0_path, m1_path or organism.m1_path
        judge_spec = judge_spec or f"organism:{args.behavior}"
        if scenarios is None:
            scenarios = organism_scenarios(organism.test_prompts, args.behavior)
    missing = [flag for flag, value in (("--m0", m0_path), ("--m1", m1_path), ("--judge", judge_spec),
                                        ("--prompts", scenarios)) if value is None]
    if missing:
        raise ValueError(f"missing {', '.join(missing)} (or pass --organism)")
    judge = resolve_judge(judge_spec)
    m0, tokenizer = load_model(m0_path, dtype=args.dtype, device=args.device)
    m1, tokenizer1 = load_model(m1_path, dtype=args.dtype, device=args.device)
    if tokenizer.get_vocab() != tokenizer1.get_vocab():
        raise ValueError(f"M0 ({m0_path}) and M1 ({m1_path}) have different tokenizers; they must share one")
    layer = resolve_layer(m0, args.layer)
    sources = {"m0": str(m0_path), "m1": str(m1_path), "judge_spec": judge_spec,
               "scenarios_file": str(args.prompts) if args.prompts else None,
               "organism": str(args.organism) if args.organism else None,
               "behavior": args.behavior if args.organism else None}
    result = build_behaviors(
        m0, m1, tokenizer, scenarios, judge, layer=layer, samples=args.samples, temperature=args.temperature,
        max_new_tokens=args.max_new_tokens, seed=args.seed, settings=_settings(args),
        fallback_all_pairs=args.fallback_all_pairs, behavior_change_samples=args.behavior_change_samples,
        batch_size=args.batch_size,
        max_tokens_per_batch=args.max_tokens_per_batch, sources=sources,
    )
    result.save(args.out, overwrite=args.overwrite)
    prov = result.provenance
    print(f"{len(prov['kept_scenarios'])} of {prov['n_scenarios']} scenarios kept ({prov['filter']}"
          f"{'; fallback: all triggered prompts' if prov['fallback_all_pairs'] else ''})")
    print("rates: " + _format_rates(prov["rates"]))
    print(f"probe: {prov['probe']['n_pairs']} pairs over {prov['probe']['n_prompts']} prompts, layer {layer}; "
          f"bank: {prov['n_bank_vectors']} vectors; behaviour change: {prov['n_behavior_change_vectors']} vectors")
    print(f"-> {args.out} (rank pairs with: headwater attribute --behavior {args.out / 'probe.safetensors'})")
    return 0


__all__ = [
    "BehaviorResult", "Generation", "Scenario", "add_cli", "build_behaviors", "check_output_dir", "cmd_behaviors",
    "load_scenarios", "organism_scenarios", "save_scenarios",
]
