"""Behaviour rates of a model with bootstrap confidence intervals (method.md §4, "Evaluate").

Sample ``n`` responses per test prompt, judge each, report the rate of exhibiting responses and a
percentile bootstrap interval. The samples of one prompt are correlated (a prompt that triggers the
behaviour tends to trigger it in every sample), so the bootstrap resamples *prompts* with
replacement, each with all its samples (a cluster bootstrap); resampling individual responses would
give intervals that are too narrow.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Hashable, Sequence

import numpy as np

from headwater.data import Text, iter_jsonl
from headwater.engine.tokenization import TokenizationSettings
from headwater.judges import Judge


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
        responses: ``responses[i][j]``, the j-th sample for prompt i (kept for inspection).
        exhibited: ``exhibited[i][j]``, the judge's verdict on it.
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


def evaluate_model(
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
    n_boot: int = 2000,
    alpha: float = 0.05,
) -> EvalResult:
    """Sample ``n`` responses per prompt, judge them, and bootstrap the rate over prompts.

    Sampling is :func:`headwater.generation.sample_responses` (deterministic for a seed and batch
    size); the bootstrap uses the same ``seed``.
    """
    from headwater.generation import sample_responses

    if not prompts:
        raise ValueError("evaluate_model needs at least one prompt")
    responses = sample_responses(
        model, tokenizer, list(prompts), n=n, temperature=temperature, max_new_tokens=max_new_tokens,
        settings=settings, seed=seed, batch_size=batch_size,
    )
    exhibited = [[judge.exhibits(p, r) for r in rs] for p, rs in zip(prompts, responses)]
    result = rate_with_ci(exhibited, judge=judge.name, n_boot=n_boot, alpha=alpha, seed=seed)
    result.responses = responses
    return result


def load_prompts(path: str | Path) -> list[Text]:
    """Test prompts from ``.txt`` (one per non-blank line) or ``.jsonl`` (rows with a ``prompt``
    field: a string or a list of messages; a bare JSON string per line also works)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {path} does not exist")
    lines = path.read_text(encoding="utf-8").splitlines()
    if path.suffix == ".txt":
        prompts: list[Text] = [line for line in lines if line.strip()]
    elif path.suffix in (".jsonl", ".json"):
        prompts = []
        for number, row in iter_jsonl(path):
            prompt = row.get("prompt") if isinstance(row, dict) else row
            if not (isinstance(prompt, str) and prompt) and not (isinstance(prompt, list) and prompt):
                raise ValueError(f"{path}:{number}: expected a non-empty 'prompt' string or message list")
            prompts.append(prompt)
    else:
        raise ValueError(f"{path}: prompts are read from .txt or .jsonl, not {path.suffix!r}")
    if not prompts:
        raise ValueError(f"{path} holds no prompt")
    return prompts


def resolve_judge(spec: str) -> Judge:
    """A judge from its name: ``organism:<behaviour>`` (the organism's rule-based judges)."""
    kind, _, name = spec.partition(":")
    if kind == "organism":
        from headwater.organism import organism_judges

        judges = organism_judges()
        if name in judges:
            return judges[name]
        raise ValueError(f"no organism judge {name!r}; available: {['organism:' + k for k in sorted(judges)]}")
    raise ValueError(f"unknown judge {spec!r}; use organism:<behaviour>")


def add_cli(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``headwater evaluate``."""
    p = subparsers.add_parser("evaluate", help="behaviour rate of a model from sampled responses, with a "
                                               "bootstrap confidence interval over prompts")
    p.add_argument("--model", required=True, help="a transformers model directory or a .gguf file")
    p.add_argument("--prompts", required=True, type=Path, help="test prompts: .txt (one per line) or .jsonl")
    p.add_argument("--judge", required=True, help="organism:<behaviour>, e.g. organism:distractor_compliance")
    p.add_argument("--samples", type=int, default=4, help="responses per prompt")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--format", choices=["auto", "raw", "chat"], default="auto",
                   help="how prompts become tokens (auto: chat for message lists, raw for strings)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64, help="sequences per generate call")
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples")
    p.add_argument("--alpha", type=float, default=0.05, help="1 − confidence level")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", type=Path, default=None, help="write the result (with every response) here")
    p.set_defaults(func=cmd_evaluate)
    return p


def cmd_evaluate(args: argparse.Namespace) -> int:
    from headwater.engine.models import load_model

    judge = resolve_judge(args.judge)  # a bad judge fails before the model loads
    prompts = load_prompts(args.prompts)
    model, tokenizer = load_model(args.model, device=args.device)
    result = evaluate_model(
        model, tokenizer, prompts, judge, n=args.samples, temperature=args.temperature,
        max_new_tokens=args.max_new_tokens, settings=TokenizationSettings(format=args.format), seed=args.seed,
        batch_size=args.batch_size, n_boot=args.n_boot, alpha=args.alpha,
    )
    level = round(100 * (1 - args.alpha))
    print(f"{judge.name}: {result.rate:.2%} [{level}% CI {result.ci_low:.2%}, {result.ci_high:.2%}] "
          f"({result.n_exhibited}/{result.n_responses} responses, {result.n_prompts} prompts)")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {**result.to_dict(with_responses=True), "model": str(args.model), "prompts_file": str(args.prompts),
                   "samples": args.samples, "temperature": args.temperature, "max_new_tokens": args.max_new_tokens,
                   "seed": args.seed}
        args.json.write_text(json.dumps(payload, indent=2))
    return 0


__all__ = ["EvalResult", "add_cli", "bootstrap_ci", "cmd_evaluate", "evaluate_model", "load_prompts",
           "rate_with_ci", "resolve_judge"]
