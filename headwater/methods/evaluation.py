"""Behaviour rates of a model with bootstrap confidence intervals (method.md §4, "Evaluate").

:func:`judge_samples` is the one path from a model to judged generations (sample ``n`` responses
per prompt, score each with a judge); :func:`evaluate_model` turns them into a rate with a
percentile bootstrap interval. The samples of one prompt are correlated (a prompt that triggers the
behaviour tends to trigger it in every sample), so the bootstrap resamples *prompts* with
replacement, each with all its samples (a cluster bootstrap); resampling individual responses would
give intervals that are too narrow.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Hashable, Sequence

import numpy as np

from headwater.data import Text
from headwater.engine.tokenization import TokenizationSettings
from headwater.methods.generation import sample_responses
from headwater.methods.judges import Judge


def bootstrap_ci(
    flags: Sequence[bool | float] | np.ndarray,
    *,
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
    groups: Sequence[Hashable] | None = None,
) -> tuple[float, float]:
    """Percentile bootstrap interval of a rate (the mean of ``flags``).

    Args:
        flags: [M] 0/1 outcomes (bools, ints or floats in [0, 1]), one per response.
        n_boot: bootstrap resamples.
        alpha: 1 − confidence level (0.05: a 95% interval).
        seed: the resampling seed (numpy's default generator).
        groups: [M] a label per response (e.g. its prompt index). When given, whole groups are
            resampled with replacement and the rate of a resample is its exhibiting responses over
            its responses; otherwise single responses are resampled.

    Returns:
        ``(low, high)``: the alpha/2 and 1 − alpha/2 quantiles of the resampled rates.
    """
    x = np.asarray(flags, dtype=np.float64).reshape(-1)
    if x.size == 0:
        raise ValueError("bootstrap_ci needs at least one outcome")
    if not np.all((x >= 0) & (x <= 1)):
        raise ValueError("flags must be 0/1 outcomes (or values in [0, 1])")
    if n_boot < 1:
        raise ValueError(f"`n_boot` must be at least 1, got {n_boot}")
    if not 0 < alpha < 1:
        raise ValueError(f"`alpha` must be in (0, 1), got {alpha}")
    rng = np.random.default_rng(seed)
    if groups is None:
        sums, counts = x, np.ones_like(x)
    else:
        if len(groups) != x.size:
            raise ValueError(f"{x.size} flags but {len(groups)} group labels")
        index: dict[Hashable, int] = {}
        inverse = np.fromiter((index.setdefault(g, len(index)) for g in groups), np.int64, count=x.size)
        sums = np.bincount(inverse, weights=x)
        counts = np.bincount(inverse).astype(np.float64)
    k = sums.size
    rates = np.empty(n_boot)
    chunk = max(1, 2_000_000 // k)  # bounded memory: [chunk, k] indices at a time
    for start in range(0, n_boot, chunk):
        idx = rng.integers(0, k, size=(min(chunk, n_boot - start), k))
        rates[start : start + idx.shape[0]] = sums[idx].sum(1) / counts[idx].sum(1)
    low, high = np.quantile(rates, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


@dataclass
class EvalResult:
    """A behaviour rate measured from real generations.

    Attributes:
        rate: exhibiting responses / all responses.
        ci_low, ci_high: the bootstrap interval over prompts (level 1 − alpha).
        n_responses, n_prompts, n_exhibited: the counts.
        per_prompt: [n_prompts] the rate among each prompt's samples.
        judge: the judge's name.
        alpha: 1 − the interval's level.
        responses: ``responses[i][j]``, the j-th judged sample for prompt i (kept for inspection).
        exhibited: ``exhibited[i][j]``, the judge's verdict on it.
        n_unjudged: samples the judge could not score (left out of the rate, never labelled).
    """

    rate: float
    ci_low: float
    ci_high: float
    n_responses: int
    n_prompts: int
    n_exhibited: int
    per_prompt: list[float]
    judge: str
    alpha: float = 0.05
    responses: list[list[str]] = field(default_factory=list, repr=False)
    exhibited: list[list[bool]] = field(default_factory=list, repr=False)
    n_unjudged: int = 0

    def to_dict(self, *, with_responses: bool = False) -> dict[str, Any]:
        d = asdict(self)
        if not with_responses:
            d.pop("responses"), d.pop("exhibited")
        return d


def rate_with_ci(
    exhibited: Sequence[Sequence[bool]], *, judge: str = "", n_boot: int = 2000, alpha: float = 0.05, seed: int = 0
) -> EvalResult:
    """An :class:`EvalResult` from judged samples ``exhibited[prompt][sample]``."""
    if not exhibited or any(len(row) == 0 for row in exhibited):
        raise ValueError("every prompt needs at least one judged response")
    flags = [bool(f) for row in exhibited for f in row]
    groups = [i for i, row in enumerate(exhibited) for _ in row]
    low, high = bootstrap_ci(flags, n_boot=n_boot, alpha=alpha, seed=seed, groups=groups)
    return EvalResult(
        rate=sum(flags) / len(flags), ci_low=low, ci_high=high, n_responses=len(flags), n_prompts=len(exhibited),
        n_exhibited=sum(flags), per_prompt=[sum(row) / len(row) for row in exhibited], judge=judge, alpha=alpha,
        exhibited=[[bool(f) for f in row] for row in exhibited],
    )


@dataclass
class JudgedSamples:
    """Sampled responses and their judge scores, prompt by prompt.

    Attributes:
        prompts: [P] the prompts.
        responses: ``responses[i][j]``, the j-th sample for prompt i.
        scores: ``scores[i][j]``, the judge's score of it.
        threshold: the judge's threshold (a score at or above it exhibits the behaviour).
        judge: the judge's name.
    """

    prompts: list[Text]
    responses: list[list[str]]
    scores: list[list[float]]
    threshold: float
    judge: str

    @property
    def exhibited(self) -> list[list[bool]]:
        """``exhibited[i]``: score ≥ threshold for each judged sample of prompt i. A sample the judge
        could not score (NaN: a failed call, an unparsable reply) is left out, never labelled."""
        return [[s >= self.threshold for s in row if not math.isnan(s)] for row in self.scores]

    @property
    def n_unjudged(self) -> int:
        """Samples the judge could not score."""
        return sum(math.isnan(s) for row in self.scores for s in row)

    def judged(self) -> tuple[list[Text], list[list[str]], list[list[bool]]]:
        """``(prompts, responses, exhibited)`` keeping only scored samples and the prompts that have one."""
        kept = [(p, [r for r, s in zip(rs, ss) if not math.isnan(s)], [s >= self.threshold for s in ss if not math.isnan(s)])
                for p, rs, ss in zip(self.prompts, self.responses, self.scores)]
        kept = [k for k in kept if k[1]]
        return [k[0] for k in kept], [k[1] for k in kept], [k[2] for k in kept]

    def flat(self) -> tuple[list[Text], list[str], list[bool]]:
        """``(prompt, response, exhibits)`` of every scored sample, prompt-major."""
        rows = [(p, r, e) for p, rs, es in zip(*self.judged()) for r, e in zip(rs, es)]
        return [p for p, _, _ in rows], [r for _, r, _ in rows], [e for _, _, e in rows]


def judge_samples(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Text],
    judge: Judge,
    *,
    n: int = 4,
    temperature: float = 0.7,
    max_new_tokens: int = 64,
    settings: TokenizationSettings = TokenizationSettings(format="raw"),
    seed: int = 0,
    batch_size: int = 64,
    progress: str | None = None,
) -> JudgedSamples:
    """Sample ``n`` responses per prompt (:func:`headwater.methods.generation.sample_responses`,
    deterministic for a seed and batch size) and score them all in one :meth:`Judge.score_batch`
    call (a batched or remote judge sees every response at once). ``progress``: a label for a
    progress bar over the sampling."""
    if not prompts:
        raise ValueError("judge_samples needs at least one prompt")
    prompts = list(prompts)
    responses = sample_responses(
        model, tokenizer, prompts, n=n, temperature=temperature, max_new_tokens=max_new_tokens,
        settings=settings, seed=seed, batch_size=batch_size, progress=progress,
    )
    flat = judge.score_batch([p for p, rs in zip(prompts, responses) for _ in rs], [r for rs in responses for r in rs])
    scores, start = [], 0
    for rs in responses:
        scores.append([float(x) for x in flat[start : start + len(rs)]])
        start += len(rs)
    return JudgedSamples(prompts, responses, scores, judge.threshold, judge.name)


def evaluate_model(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Text],
    judge: Judge,
    *,
    n_boot: int = 2000,
    alpha: float = 0.05,
    **sampling: Any,
) -> EvalResult:
    """Sample and judge (:func:`judge_samples`; ``sampling`` holds its keywords: ``n``,
    ``temperature``, ``max_new_tokens``, ``settings``, ``seed``, ``batch_size``, ``progress``)
    and bootstrap the rate over prompts; the bootstrap uses the sampling ``seed``."""
    if not prompts:
        raise ValueError("evaluate_model needs at least one prompt")
    judged = judge_samples(model, tokenizer, prompts, judge, **sampling)
    _, responses, exhibited = judged.judged()
    if not exhibited:
        raise ValueError(f"the judge {judge.name} could not score any of the {judged.n_unjudged} responses "
                         "(failed calls or unparsable replies); no rate without labels")
    result = rate_with_ci(exhibited, judge=judge.name, n_boot=n_boot, alpha=alpha, seed=sampling.get("seed", 0))
    result.responses = responses
    result.n_unjudged = judged.n_unjudged
    return result


def paired_bootstrap_ci(base: Sequence[float], cell: Sequence[float], *, statistic: str = "reduction",
                        weights: Sequence[float] | None = None, n_boot: int = 2000, alpha: float = 0.05,
                        seed: int = 0) -> tuple[float, float]:
    """Bootstrap interval of a comparison of two models measured on the same units (prompts or items).

    The units are resampled jointly, so what varies from unit to unit (an easy prompt, a long
    answer) cancels between the two models.

    Args:
        base, cell: [P] per-unit values of the baseline and the other model (per-prompt rates,
            or per-item mean log-probabilities).
        statistic: ``"reduction"``, 1 − mean(cell) / mean(base), or ``"difference"``,
            mean(cell) − mean(base).
        weights: [P] weight of each unit in both means (e.g. answer tokens); default equal.

    Returns:
        ``(low, high)``; NaN where the statistic is undefined (a reduction from a zero baseline).
    """
    b, c = np.asarray(base, np.float64), np.asarray(cell, np.float64)
    if b.shape != c.shape or b.ndim != 1 or b.size == 0:
        raise ValueError(f"per-unit values must be two equal non-empty vectors, got {b.shape} and {c.shape}")
    if statistic not in ("reduction", "difference"):
        raise ValueError(f"statistic must be 'reduction' or 'difference', got {statistic!r}")
    w = np.ones_like(b) if weights is None else np.asarray(weights, np.float64)
    if w.shape != b.shape or (w <= 0).any():
        raise ValueError(f"weights must be {b.size} positive numbers")
    idx = np.random.default_rng(seed).integers(0, b.size, size=(n_boot, b.size))
    total = w[idx].sum(1)
    mb, mc = (b * w)[idx].sum(1) / total, (c * w)[idx].sum(1) / total
    return _percentile_interval(mb, mc, statistic, alpha)


def _percentile_interval(mb: np.ndarray, mc: np.ndarray, statistic: str, alpha: float) -> tuple[float, float]:
    """The (alpha/2, 1 − alpha/2) quantiles of the statistic over resampled means of the baseline
    (``mb``) and the other model (``mc``); NaN when it is undefined in every resample."""
    if statistic == "difference":
        values = mc - mb
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            values = np.where(mb > 0, 1.0 - mc / mb, np.nan)
    if np.isnan(values).all():
        return float("nan"), float("nan")
    low, high = np.nanquantile(values, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def seeded_bootstrap_ci(base: Sequence[Sequence[float]], cell: Sequence[Sequence[float]], *, n_boot: int = 2000,
                        alpha: float = 0.05, seed: int = 0) -> tuple[float, float]:
    """Bootstrap interval of the reduction 1 − mean(cell) / mean(base) when each side was trained
    under several training seeds and every model answered the same prompts.

    Two levels: the prompts are resampled jointly for every model (paired, as in
    :func:`paired_bootstrap_ci`), and each side's seeds independently (the two sides' models share
    only the starting model and the prompts). So the interval covers the training noise, which
    moves a whole model's rate at once and which a bootstrap over prompts alone cannot see. With
    K seeds a side the seed level is coarse (a bootstrap over K values understates their spread by
    about (K − 1) / K): read it beside the per-seed rates.

    Args:
        base, cell: [K_b, P] and [K_c, P] per-prompt rates, one row per training seed.

    Returns:
        ``(low, high)``; NaN where the baseline's resampled mean is zero in every resample.
    """
    b, c = np.asarray(base, np.float64), np.asarray(cell, np.float64)
    if b.ndim != 2 or c.ndim != 2 or b.shape[1] != c.shape[1] or b.size == 0 or c.size == 0:
        raise ValueError(f"per-prompt rates must be [seeds, prompts] with the same prompts, got {b.shape} and {c.shape}")
    rng = np.random.default_rng(seed)
    prompts = rng.integers(0, b.shape[1], size=(n_boot, b.shape[1]))
    per_model_b = b[:, prompts].mean(-1)  # [K_b, n_boot]: each model's rate on each resample of prompts
    per_model_c = c[:, prompts].mean(-1)
    seeds_b = rng.integers(0, b.shape[0], size=(n_boot, b.shape[0]))
    seeds_c = rng.integers(0, c.shape[0], size=(n_boot, c.shape[0]))
    cols = np.arange(n_boot)[:, None]
    mb = per_model_b[seeds_b, cols].mean(1)
    mc = per_model_c[seeds_c, cols].mean(1)
    return _percentile_interval(mb, mc, "reduction", alpha)


__all__ = ["EvalResult", "JudgedSamples", "bootstrap_ci", "evaluate_model", "judge_samples", "paired_bootstrap_ci",
           "rate_with_ci", "seeded_bootstrap_ci"]
