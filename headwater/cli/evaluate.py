"""``headwater evaluate``: a model's behaviour rate with a bootstrap confidence interval."""
from __future__ import annotations

import argparse
from pathlib import Path

from headwater.cli.options import (
    add_judge_option,
    add_model_options,
    add_sampling_options,
    add_tokenization_options,
    judge_from,
    settings_from,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate", help="behaviour rate of a model from sampled responses, with a bootstrap confidence interval "
                         "over prompts",
        description="Sample every test prompt --samples times, judge each response, and report the rate of "
                    "exhibiting responses with a percentile bootstrap interval that resamples prompts.",
    )
    add_model_options(p, what="the model to evaluate", dtype=False)
    p.add_argument("--prompts", required=True, type=Path, help="test prompts: .txt (one per line) or .jsonl")
    add_judge_option(p, required=True)
    add_sampling_options(p, samples=4, samples_help="responses per prompt")
    add_tokenization_options(p, lengths=False)
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples (default 2000)")
    p.add_argument("--alpha", type=float, default=0.05, help="1 − confidence level (default 0.05)")
    p.add_argument("--json", type=Path, default=None, help="write the result (with every response) here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from headwater.data import load_prompts
    from headwater.engine.models import load_model
    from headwater.methods.evaluation import evaluate_model
    from headwater.workflows.stages import write_json_atomic

    judge = judge_from(args.judge, args)  # a bad judge fails before the model loads
    prompts = load_prompts(args.prompts)
    model, tokenizer = load_model(args.model, device=args.device)
    result = evaluate_model(
        model, tokenizer, prompts, judge, n=args.samples, temperature=args.temperature,
        max_new_tokens=args.max_new_tokens, settings=settings_from(args), seed=args.seed,
        batch_size=args.batch_size, n_boot=args.n_boot, alpha=args.alpha,
    )
    level = round(100 * (1 - args.alpha))
    print(f"{judge.name}: {result.rate:.2%} [{level}% CI {result.ci_low:.2%}, {result.ci_high:.2%}] "
          f"({result.n_exhibited}/{result.n_responses} responses, {result.n_prompts} prompts)")
    if args.json is not None:
        payload = {**result.to_dict(with_responses=True), "model": str(args.model), "prompts_file": str(args.prompts),
                   "judge_spec": args.judge, "samples": args.samples, "temperature": args.temperature,
                   "max_new_tokens": args.max_new_tokens, "seed": args.seed}
        write_json_atomic(args.json, payload, indent=2)
    return 0
