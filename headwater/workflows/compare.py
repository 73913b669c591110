"""``headwater compare``: every attribution method on one dataset and one behaviour, side by side
with what each costs, measured in the same run on the same machine.

Methods (each a :class:`headwater.methods.attribution.Ranking` of the same pairs):

- ``activation``: cosine of each pair's datapoint vector (the engine's store on M0) with the
  probing vector from the labelled responses (method.md §2-3);
- ``bank``: best cosine over a bank of behaviour change vectors (M1 vs M0 answers to the
  behaviour's prompts; no judge);
- ``gradient``: LESS adapted to DPO (:mod:`headwater.baselines.gradient`), queries built from the
  labelled responses;
- ``judge``: judge(chosen) − judge(rejected) (:mod:`headwater.baselines.judge_ranking`);
- ``lexical``: TF-IDF of chosen − rejected against the lexical probe (:mod:`headwater.baselines.lexical`);
- ``random``: one seeded uniformly random order.

The labelled responses (and the bank's generations) are inputs shared by the methods that use
them; what they cost is reported once, as ``shared``, not charged to any method.

Cost per method, measured around exactly its own work: wall seconds, the peak resident memory
above what the process held when the method started (sampled every 5 ms from /proc), FLOPs
(``torch.utils.flop_counter`` on a sample of pairs, scaled by the method's token count: matrix
products and attention, which dominate; the sparse projection's adds are not counted), judge calls
and tokens. Quality where ground truth is given: precision@N and recall@N (N = the planted count)
with Wilson 95% intervals, AUROC with a 95% bootstrap interval over pairs, and the overlap of the
methods' top N.
"""
from __future__ import annotations

import importlib.util
import logging
import math
import os
import shutil
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from headwater.baselines.gradient import GradientConfig, behavior_query_pairs, gradient_ranking
from headwater.baselines.judge_ranking import judge_ranking
from headwater.baselines.lexical import lexical_ranking
from headwater.data import PreferencePair
from headwater.engine import Engine, atomic
from headwater.engine.tokenization import TokenizationSettings
from headwater.methods.attribution import Ranking, evaluate_ranking, random_ranking, rank_pairs
from headwater.methods.judges import Judge
from headwater.methods.vectors import probing_vector
from headwater.workflows.stages import write_json_atomic
from headwater.workflows.tables import html_table, text_table

LOG = logging.getLogger(__name__)

METHODS = ("activation", "bank", "gradient", "judge", "lexical", "random")
FLOP_SAMPLE_PAIRS = 32  # pairs run under the FLOP counter to measure FLOPs per token
N_BOOT = 1000


@dataclass
class Labelled:
    """Judged responses: the probe's, the lexical probe's and the gradient queries' input.

    Attributes:
        prompts, responses, labels: aligned; ``labels[i]`` says response i exhibits the behaviour.
        models: optional, which model wrote each response (``"m0"``/``"m1"``): gradient queries
            then pair M1's exhibiting responses with M0's non-exhibiting ones, as in the paper.
    """

    prompts: list[Any]
    responses: list[Any]
    labels: list[bool]
    models: list[str] | None = None

    def query_pairs(self) -> list[PreferencePair]:
        """Behaviour pairs for the gradient baseline's queries."""
        def side(label: bool, model: str) -> tuple[list[Any], list[Any]]:
            rows = [i for i, lab in enumerate(self.labels)
                    if lab == label and (self.models is None or self.models[i] == model)]
            return [self.prompts[i] for i in rows], [self.responses[i] for i in rows]

        return behavior_query_pairs(side(True, "m1"), side(False, "m0"))


@dataclass
class CompareInputs:
    """One dataset, one behaviour, and what the methods need.

    Attributes:
        model, tokenizer: M0.
        layer: the activation layer.
        settings: tokenisation of the pairs (and of the probe's responses).
        pairs: the preference pairs to rank.
        labelled: judged responses (activation, lexical and gradient need them).
        behavior: the behaviour's name (for the tables).
        bank: [S, d] behaviour change vectors for ``bank`` (None: the method is unavailable).
        judge: the judge for ``judge`` (None: unavailable).
        planted: ground-truth pair ids (None: no precision, recall or AUROC).
        shared_cost: what producing ``labelled`` and ``bank`` cost (reported, not charged).
    """

    model: Any
    tokenizer: Any
    layer: int
    settings: TokenizationSettings
    pairs: Sequence[PreferencePair]
    labelled: Labelled
    behavior: str
    bank: torch.Tensor | None = None
    judge: Judge | None = None
    planted: set[str] | None = None
    shared_cost: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Measuring cost


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@contextmanager
def measure(cost: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Fill ``cost`` with ``seconds`` and ``peak_memory_mb`` (peak RSS above the RSS at entry,
    sampled every 5 ms; where /proc is missing, None)."""
    try:
        base = _rss_bytes()
    except OSError:
        base = None
    peak = [base or 0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.005):
            peak[0] = max(peak[0], _rss_bytes())

    sampler = threading.Thread(target=sample, daemon=True) if base is not None else None
    if sampler is not None:
        sampler.start()
    start = time.perf_counter()
    try:
        yield cost
    finally:
        cost["seconds"] = round(time.perf_counter() - start, 3)
        if sampler is not None:
            stop.set()
            sampler.join()
            peak[0] = max(peak[0], _rss_bytes())
            cost["peak_memory_mb"] = round((peak[0] - base) / 2**20, 1)
        else:
            cost["peak_memory_mb"] = None


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of ``fn()`` as torch's FLOP counter sees them (matrix products and attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def _tokens(tokenizer: Any, pairs: Sequence[PreferencePair], settings: TokenizationSettings) -> int:
    from headwater.engine.tokenization import encode_pairs

    return sum(len(c.input_ids) + len(r.input_ids) for c, r in encode_pairs(tokenizer, pairs, settings).encoded)


# ---------------------------------------------------------------------------------------------
# The methods


def _encode(inputs: CompareInputs, work: Path, reuse: bool, progress: bool) -> Any:
    """The datapoint vectors' store; ``reuse`` keeps a finished one, else it is encoded again."""
    engine = Engine(inputs.model, inputs.tokenizer, layer=inputs.layer, settings=inputs.settings, on_error="skip")
    return engine.encode_pairs(inputs.pairs, work / "activation-store", resume=reuse, overwrite=not reuse,
                               progress=progress)


def _activation(inputs: CompareInputs, work: Path, cost: dict[str, Any], reuse: bool, progress: bool) -> Ranking:
    store = _encode(inputs, work, reuse, progress)
    lab = inputs.labelled
    probe = probing_vector(inputs.model, inputs.tokenizer, lab.prompts, lab.responses, lab.labels,
                           layer=inputs.layer, settings=inputs.settings)
    cost["tokens"] = int(store.manifest.get("n_tokens", 0))
    cost["probe_pairs"] = probe.n_pairs
    return rank_pairs(store.pair_ids, store.blocks(), probe.vector)


def _activation_flops_per_token(inputs: CompareInputs, sample: Sequence[PreferencePair], work: Path) -> float:
    engine = Engine(inputs.model, inputs.tokenizer, layer=inputs.layer, settings=inputs.settings, on_error="skip")
    flops = count_flops(lambda: engine.encode_pairs(sample, work / "flop-sample", overwrite=True, progress=False))
    return flops / max(1, _tokens(inputs.tokenizer, sample, inputs.settings))


def _bank(inputs: CompareInputs, work: Path, cost: dict[str, Any], reuse: bool, progress: bool) -> Ranking:
    store = _encode(inputs, work, reuse, progress)
    cost["tokens"] = int(store.manifest.get("n_tokens", 0))
    cost["bank_vectors"] = int(inputs.bank.shape[0])
    ranking = rank_pairs(store.pair_ids, store.blocks(), inputs.bank)
    return Ranking(ranking.pair_ids, ranking.scores, "bank")


def _gradient(inputs: CompareInputs, work: Path, cost: dict[str, Any], reuse: bool, progress: bool,
              config: GradientConfig) -> Ranking:
    queries = inputs.labelled.query_pairs()
    if not reuse and (work / "gradient").exists():
        shutil.rmtree(work / "gradient")  # measure the whole cost: warm-up and features included
    result = gradient_ranking(inputs.model, inputs.tokenizer, inputs.pairs, queries, config, work / "gradient",
                              progress=progress)
    cost.update(tokens=result.n_tokens, queries=result.n_queries, warmup_pairs=result.warmup_pairs,
                checkpoints=len(result.checkpoints), stages_seconds=result.seconds)
    return result.ranking


def _judge(inputs: CompareInputs, cost: dict[str, Any]) -> Ranking:
    judge = inputs.judge
    before = judge.stats.to_dict() if hasattr(judge, "stats") else None
    result = judge_ranking(inputs.pairs, judge)
    cost.update(judged_responses=result.n_judged, unscored_pairs=result.n_unscored)
    if before is not None:
        after = judge.stats.to_dict()
        for key in ("calls", "cached", "failed", "unparsable", "prompt_tokens", "completion_tokens"):
            cost[f"judge_{key}"] = after[key] - before[key]
    return result.ranking


def _lexical(inputs: CompareInputs) -> Ranking:
    lab = inputs.labelled
    return lexical_ranking(inputs.pairs, lab.prompts, lab.responses, lab.labels)


def available(inputs: CompareInputs, method: str) -> str | None:
    """Why ``method`` cannot run on ``inputs`` (None: it can)."""
    if method not in METHODS:
        return f"unknown method {method!r}; choose from {', '.join(METHODS)}"
    if method == "bank" and inputs.bank is None:
        return "no behaviour vectors given for the bank"
    if method == "judge" and inputs.judge is None:
        return "no judge given"
    if method == "gradient" and importlib.util.find_spec("peft") is None:
        return "needs peft: pip install 'headwater[baselines]'"
    return None


def rank_with(method: str, inputs: CompareInputs, work: Path, *, gradient: GradientConfig | None = None,
              seed: int = 0, reuse: bool = False, progress: bool = False) -> tuple[Ranking, dict[str, Any]]:
    """One method's ranking of ``inputs.pairs`` and its measured cost.

    ``reuse`` keeps finished work in ``work`` (vector stores, warm-up checkpoints) from an earlier
    call; without it every method computes from scratch, so its cost is its whole cost.
    """
    reason = available(inputs, method)
    if reason is not None:
        raise ValueError(f"{method}: {reason}")
    work.mkdir(parents=True, exist_ok=True)
    cost: dict[str, Any] = {}
    with measure(cost):
        if method == "activation":
            ranking = _activation(inputs, work, cost, reuse, progress)
        elif method == "bank":
            ranking = _bank(inputs, work, cost, reuse, progress)
        elif method == "gradient":
            ranking = _gradient(inputs, work, cost, reuse, progress, gradient or GradientConfig())
        elif method == "judge":
            ranking = _judge(inputs, cost)
        elif method == "lexical":
            ranking = _lexical(inputs)
        else:
            ranking = random_ranking([p.pair_id for p in inputs.pairs], seed=seed)
    return ranking, cost


def _gradient_flops_per_token(inputs: CompareInputs, sample: Sequence[PreferencePair], config: GradientConfig) -> float:
    from headwater.baselines.gradient import gradient_features, with_lora
    from headwater.baselines.projection import SparseProjection

    peft_model = with_lora(inputs.model, config)
    projection = SparseProjection(config.projection_dim, seed=config.seed, blocks=config.projection_blocks)
    flops = count_flops(lambda: gradient_features(peft_model, inputs.tokenizer, sample, projection, config))
    return flops / max(1, _tokens(inputs.tokenizer, sample, config.dpo.settings))


def estimate_flops(method: str, inputs: CompareInputs, cost: dict[str, Any], work: Path,
                   gradient: GradientConfig) -> dict[str, Any]:
    """FLOPs of a method's run from FLOPs per token measured on a sample of its pairs.

    activation and bank: one forward pass per token to the layer. gradient: per token, the reference
    forward, the policy forward and the backward to the adapters, at every checkpoint, plus the
    warm-up (the same passes over its subset, every epoch; the optimiser step is not counted).
    """
    sample = list(inputs.pairs[:FLOP_SAMPLE_PAIRS])
    if method in ("activation", "bank"):
        per_token = _activation_flops_per_token(inputs, sample, work)
        return {"flops": per_token * cost["tokens"], "flops_per_token": per_token}
    if method == "gradient":
        per_token = _gradient_flops_per_token(inputs, sample, gradient)
        settings = gradient.dpo.settings
        tokens = _tokens(inputs.tokenizer, inputs.pairs, settings)
        query_tokens = _tokens(inputs.tokenizer, inputs.labelled.query_pairs(), settings)
        warmup_tokens = tokens * cost["warmup_pairs"] / max(1, len(inputs.pairs)) * gradient.warmup_epochs
        total = per_token * ((tokens + query_tokens) * cost["checkpoints"] + warmup_tokens)
        return {"flops": total, "flops_per_token": per_token, "warmup_tokens": int(warmup_tokens)}
    return {"flops": 0 if method in ("lexical", "random") else None}


# ---------------------------------------------------------------------------------------------
# Quality


def wilson_interval(hits: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score 95% interval of a proportion hits / n."""
    if n == 0:
        return float("nan"), float("nan")
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # At 0 and n the interval touches the bound exactly (rounding would leave it a hair inside).
    low = 0.0 if hits == 0 else max(0.0, centre - half)
    high = 1.0 if hits == n else min(1.0, centre + half)
    return low, high


def auroc_interval(ranking: Ranking, planted: set[str], *, n_boot: int = N_BOOT, seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval of the AUROC, resampling planted and clean pairs separately."""
    scores = np.asarray(ranking.scores, np.float64)
    is_planted = np.array([p in planted for p in ranking.pair_ids])
    pos, neg = scores[is_planted], scores[~is_planted]
    if not len(pos) or not len(neg):
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        p = np.sort(rng.choice(pos, len(pos)))
        q = np.sort(rng.choice(neg, len(neg)))
        # AUROC = P(score_planted > score_clean) + ½ P(tie), from sorted arrays.
        below = np.searchsorted(q, p, side="left")
        ties = np.searchsorted(q, p, side="right") - below
        values.append(float((below + 0.5 * ties).sum() / (len(p) * len(q))))
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def quality(ranking: Ranking, planted: set[str] | None, n: int) -> dict[str, Any]:
    """P@N, R@N (Wilson intervals) and AUROC (bootstrap interval) against ``planted``; empty without it."""
    if not planted:
        return {}
    metrics = evaluate_ranking(ranking, planted & set(ranking.pair_ids) or planted, n)
    hits = round(metrics.precision_at_n * n)
    p_low, p_high = wilson_interval(hits, n)
    r_low, r_high = wilson_interval(hits, len(planted))
    a_low, a_high = auroc_interval(ranking, planted)
    return {**metrics.as_dict(), "precision_ci": [p_low, p_high], "recall_ci": [r_low, r_high],
            "auroc_ci": [a_low, a_high]}


def top_overlap(rankings: dict[str, Ranking], n: int) -> dict[str, dict[str, float]]:
    """|top-N(a) ∩ top-N(b)| / N for every two methods."""
    tops = {m: set(r.pair_ids[:n]) for m, r in rankings.items()}
    return {a: {b: len(tops[a] & tops[b]) / max(1, n) for b in tops} for a in tops}


# ---------------------------------------------------------------------------------------------
# The comparison


def compare(inputs: CompareInputs, methods: Sequence[str], out_dir: str | Path, *,
            gradient: GradientConfig | None = None, top: int | None = None, seed: int = 0,
            flops: bool = True, reuse: bool = False, work_dir: str | Path | None = None,
            progress: bool = False) -> dict[str, Any]:
    """Rank ``inputs.pairs`` with each of ``methods``; write rankings, ``compare.json`` and
    ``compare.html`` to ``out_dir``; return the JSON document.

    Args:
        inputs: the dataset, behaviour and what the methods need.
        methods: names from :data:`METHODS`, run in this order.
        out_dir: rankings (``rankings-<method>.parquet``), the method's work files and the tables.
        gradient: the gradient baseline's settings (default :class:`GradientConfig`).
        top: N for precision, recall and overlap (default: the planted count, else 100).
        seed: the random ranking's seed.
        flops: estimate FLOPs from a counted sample (adds a short uncounted pass per method).
        reuse: keep finished work of an earlier call in ``out_dir`` (vector stores, the gradient
            warm-up and features, which do not depend on the behaviour): faster, but the seconds
            and memory then measure only what was left to do (``doc["reused"]`` says so).
        work_dir: the methods' work files (default ``out_dir/work``; share it between behaviours
            of one dataset with ``reuse``).
        progress: progress bars on stderr.

    Raises:
        ValueError: an unknown method, or one whose inputs are missing (named).
    """
    problems = [f"{m}: {r}" for m in methods if (r := available(inputs, m)) is not None]
    if problems:
        raise ValueError("; ".join(problems))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    gradient = gradient or GradientConfig()
    work = Path(work_dir) if work_dir is not None else out / "work"
    n = top or (len(inputs.planted) if inputs.planted else min(100, len(inputs.pairs)))
    rankings: dict[str, Ranking] = {}
    rows: dict[str, Any] = {}
    for method in methods:
        LOG.info("ranking with %s", method)
        ranking, cost = rank_with(method, inputs, work, gradient=gradient, seed=seed, reuse=reuse,
                                  progress=progress)
        if flops:
            cost.update(estimate_flops(method, inputs, cost, work, gradient))
        ranking.save(out / f"rankings-{method}.parquet")
        rankings[method] = ranking
        rows[method] = {"quality": quality(ranking, inputs.planted, n), "cost": cost, "n_ranked": len(ranking.pair_ids)}
        LOG.info("%s: %s", method, {k: v for k, v in cost.items() if k in ("seconds", "peak_memory_mb")})
    doc = {
        "behavior": inputs.behavior,
        "n_pairs": len(inputs.pairs),
        "n_planted": len(inputs.planted) if inputs.planted else None,
        "top_n": n,
        "reused": reuse,
        "methods": rows,
        "overlap": top_overlap(rankings, n),
        "shared_cost": inputs.shared_cost,
        "gradient_config": gradient.to_dict() if "gradient" in methods else None,
        "machine": machine_description(),
    }
    doc["cost_ratios"] = cost_ratios(rows)
    write_json_atomic(out / "compare.json", doc, indent=2)
    atomic.write_text(out / "compare.html", render_html(doc))
    return doc


def cost_ratios(rows: dict[str, Any]) -> dict[str, Any]:
    """How many times more the gradient baseline costs than activation attribution (seconds, FLOPs)."""
    if "activation" not in rows or "gradient" not in rows:
        return {}
    act, grad = rows["activation"]["cost"], rows["gradient"]["cost"]
    out = {"gradient_over_activation_seconds": grad["seconds"] / max(act["seconds"], 1e-9)}
    if act.get("flops") and grad.get("flops"):
        out["gradient_over_activation_flops"] = grad["flops"] / act["flops"]
    return out


def machine_description() -> dict[str, Any]:
    """The CPU model, core count and library versions the figures were measured with."""
    import platform

    model = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import transformers

    return {"cpu": model, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


# ---------------------------------------------------------------------------------------------
# Tables


def _num(x: Any, fmt: str) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def _interval(q: dict[str, Any], key: str, ci: str) -> str:
    if key not in q:
        return "–"
    low, high = q[ci]
    return f"{_num(q[key], '.2f')} [{_num(low, '.2f')}, {_num(high, '.2f')}]"


def table_rows(doc: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The comparison as (header, rows): quality with intervals and cost, one row per method."""
    header = ["method", f"P@{doc['top_n']}", "AUROC", "seconds", "peak MB", "GFLOP", "judge tokens"]
    rows = []
    for method, row in doc["methods"].items():
        q, c = row["quality"], row["cost"]
        judge_tokens = c.get("judge_prompt_tokens", 0) + c.get("judge_completion_tokens", 0) if "judge_calls" in c else None
        rows.append([method, _interval(q, "precision_at_n", "precision_ci"), _interval(q, "auroc", "auroc_ci"),
                     _num(c.get("seconds"), ".1f"), _num(c.get("peak_memory_mb"), ".0f"),
                     _num(None if c.get("flops") is None else c["flops"] / 1e9, ".1f"),
                     _num(judge_tokens, ",d") if judge_tokens is not None else "–"])
    return header, rows


def render_text(doc: dict[str, Any]) -> str:
    header, rows = table_rows(doc)
    lines = [f"{doc['behavior']}: {doc['n_pairs']} pairs"
             + (f", {doc['n_planted']} planted" if doc["n_planted"] else "") + f", N = {doc['top_n']}",
             text_table(header, rows)]
    ratios = doc.get("cost_ratios") or {}
    if ratios:
        parts = [f"{ratios['gradient_over_activation_seconds']:.1f}× the seconds"]
        if "gradient_over_activation_flops" in ratios:
            parts.append(f"{ratios['gradient_over_activation_flops']:.1f}× the FLOPs")
        lines.append("gradient baseline vs activation attribution: " + ", ".join(parts))
    return "\n".join(lines)


def render_html(doc: dict[str, Any]) -> str:
    import html

    header, rows = table_rows(doc)
    methods = list(doc["overlap"])
    overlap = html_table([f"top {doc['top_n']} overlap"] + methods,
                         [[a] + [f"{doc['overlap'][a][b]:.2f}" for b in methods] for a in methods])
    machine = html.escape(", ".join(f"{k}: {v}" for k, v in doc["machine"].items()))
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>headwater compare: "
            f"{html.escape(doc['behavior'])}</title></head><body><h1>Attribution methods: "
            f"{html.escape(doc['behavior'])}</h1><pre>{html.escape(render_text(doc).splitlines()[0])}</pre>"
            f"{html_table(header, rows)}<h2>Overlap of the top N</h2>{overlap}<p>{machine}</p></body></html>")


__all__ = ["CompareInputs", "Labelled", "METHODS", "available", "compare", "rank_with", "render_text"]
