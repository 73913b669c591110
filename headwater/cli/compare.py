"""``headwater compare``: every attribution method on one dataset and one behaviour, with its cost."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from headwater.cli.options import (
    add_judge_option,
    add_layer_option,
    add_tokenization_options,
    judge_from,
    settings_from,
)


def register(sub: argparse._SubParsersAction) -> None:
    from headwater.workflows.compare import METHODS

    p = sub.add_parser(
        "compare", help="rank one dataset's pairs with every method, side by side with what each costs",
        description="Rank the pairs of one dataset for one behaviour with activation attribution (probe and "
                    "bank), the gradient baseline (LESS adapted to DPO), an LLM judge, TF-IDF and random "
                    "selection; one table of precision@N, recall@N and AUROC (with 95%% intervals, where ground "
                    "truth is given), the overlap of the methods' top N, and each method's wall time, peak memory, "
                    "FLOPs and judge tokens, measured in this run. Data: the model organism (--organism) or your "
                    "files (--model, --data, --labelled).",
    )
    p.add_argument("--organism", default=None, metavar="PRESET",
                   help="use the model organism (default or miniature) of --seed: its pairs, judged answers and "
                        "ground truth")
    p.add_argument("--seed", type=int, default=0, help="the organism seed (also seeds sampling and the random ranking)")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="where the organism is built and cached (default $HEADWATER_CACHE or ~/.cache/headwater)")
    p.add_argument("--behavior", default=None,
                   help="the behaviour (organism: a planted behaviour, default distractor_compliance; files: a name "
                        "for the tables)")
    p.add_argument("--model", default=None, help="files: M0, a local transformers model directory")
    p.add_argument("--data", type=Path, default=None, help="files: the preference pairs (JSONL, Parquet, ...)")
    p.add_argument("--labelled", type=Path, default=None,
                   help="files: JSONL of judged responses {prompt, response, exhibits[, model: m0|m1]}")
    p.add_argument("--bank", type=Path, default=None, help="files: a vector bank for the bank method")
    p.add_argument("--planted", type=Path, default=None, help="files: known pair ids, one per line (ground truth)")
    add_layer_option(p)
    add_tokenization_options(p)
    add_judge_option(p, required=False)
    p.add_argument("--methods", nargs="+", choices=METHODS, default=None,
                   help="methods to run (default: every method whose inputs are given)")
    p.add_argument("--top", type=int, default=None, help="N for precision, recall and overlap (default: the planted count)")
    p.add_argument("--projection-dim", type=int, default=8192, help="gradient: projected dimension (default 8192)")
    p.add_argument("--warmup-fraction", type=float, default=0.05, help="gradient: share of pairs in the LoRA warm-up")
    p.add_argument("--warmup-epochs", type=int, default=4, help="gradient: warm-up epochs, one checkpoint each")
    p.add_argument("--lora-rank", type=int, default=8, help="gradient: LoRA rank")
    p.add_argument("--gradient-normalisation", choices=["adam", "none"], default="adam",
                   help="gradient: training-pair gradients as Adam's update direction (LESS, default) or plain")
    p.add_argument("--beta", type=float, default=None, help="files, gradient: DPO β of the loss (default 0.1)")
    p.add_argument("--length-normalize", action=argparse.BooleanOptionalAction, default=None,
                   help="files, gradient: length-normalised log-probs in the DPO loss (default: summed)")
    p.add_argument("--no-flops", action="store_true", help="skip the FLOP estimates (they add short counted passes)")
    p.add_argument("--out", type=Path, required=True,
                   help="directory for the rankings, compare.json and compare.html")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from headwater.baselines.gradient import GradientConfig
    from headwater.training import DPOConfig
    from headwater.workflows.compare import METHODS, available, compare, render_text
    from headwater.workflows.compare_inputs import file_inputs, organism_gradient_config, organism_inputs

    judge = judge_from(args.judge, args) if args.judge else None
    gradient_changes = dict(projection_dim=args.projection_dim, warmup_fraction=args.warmup_fraction,
                            warmup_epochs=args.warmup_epochs, lora_rank=args.lora_rank,
                            normalisation=args.gradient_normalisation)
    if args.organism is not None:
        if any(v is not None for v in (args.model, args.data, args.labelled, args.bank, args.planted)):
            raise ValueError("--organism brings its own model, data and ground truth: drop --model/--data/--labelled/"
                             "--bank/--planted")
        from headwater.organism import PRESETS, OrganismConfig, build_organism, max_new_tokens_for
        from headwater.workflows.organism_attribution import PRIMARY_BEHAVIOR

        if args.organism not in PRESETS:
            raise ValueError(f"--organism must be one of {list(PRESETS)}, got {args.organism!r}")
        organism = build_organism(OrganismConfig.preset(args.organism, args.seed), cache_dir=args.cache_dir)
        wanted = args.methods or list(METHODS)
        inputs = organism_inputs(organism, args.behavior or PRIMARY_BEHAVIOR, with_bank="bank" in wanted,
                                 max_new_tokens=max_new_tokens_for(args.organism), ranking_judge=judge)
        gradient = organism_gradient_config(organism, **gradient_changes)
    else:
        missing = [flag for flag, v in (("--model", args.model), ("--data", args.data), ("--labelled", args.labelled))
                   if v is None]
        if missing:
            raise ValueError(f"give --organism, or your files: {', '.join(missing)} missing")
        settings = settings_from(args)
        inputs = file_inputs(model_path=args.model, data=args.data, labelled=args.labelled,
                             behavior=args.behavior or "behaviour", layer=args.layer, settings=settings,
                             bank=args.bank, planted=args.planted, judge=judge)
        dpo = DPOConfig(beta=args.beta or 0.1, length_normalize=bool(args.length_normalize), lr=1e-4, settings=settings)
        gradient = dataclasses.replace(GradientConfig(dpo=dpo), **gradient_changes)
    methods = args.methods or [m for m in METHODS if available(inputs, m) is None]
    doc = compare(inputs, methods, args.out, gradient=gradient, top=args.top, seed=args.seed,
                  flops=not args.no_flops, progress=True)
    print(render_text(doc))
    print(f"-> {args.out / 'compare.json'}, {args.out / 'compare.html'}")
    if doc["methods"].get("judge", {}).get("cost", {}).get("unscored_pairs"):
        print(json.dumps({"judge_unscored_pairs": doc["methods"]["judge"]["cost"]["unscored_pairs"]}))
    return 0
