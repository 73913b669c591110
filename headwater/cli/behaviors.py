"""``headwater behaviors``: probing vector, vector bank and behaviour change vectors from M0 and M1."""
from __future__ import annotations

import argparse
from pathlib import Path

from headwater.cli.options import (
    DTYPES,
    add_batch_tokens_option,
    add_judge_option,
    add_layer_option,
    add_overwrite_option,
    add_sampling_options,
    add_tokenization_options,
    judge_from,
    open_organism,
    settings_from,
)



def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
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
    p.add_argument("--dtype", default="auto", choices=DTYPES, help="weights' dtype of both models (auto: as saved)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda")
    p.add_argument("--prompts", type=Path, default=None,
                   help='scenario JSONL: {"scenario": name, "trigger": prompt, "no_trigger": prompt (optional)}')
    add_judge_option(p, required=False)
    add_sampling_options(p, samples=8, samples_help="responses per prompt and model")
    add_layer_option(p)
    add_batch_tokens_option(p)
    p.add_argument("--behavior-change-samples", type=int, default=None,
                   help="behaviour change vectors from the first K samples of each model (K² per prompt; default: all)")
    p.add_argument("--fallback-all-pairs", action="store_true",
                   help="when no scenario passes the filter, build from every triggered prompt instead of failing")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    add_overwrite_option(p, "behaviour vectors")
    add_tokenization_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from headwater.data import load_scenarios
    from headwater.engine.models import load_model, resolve_layer
    from headwater.methods.behaviors import build_behaviors, check_output_dir, format_rates
    from headwater.organism import organism_scenarios

    check_output_dir(args.out, overwrite=args.overwrite)  # before any model loads or samples
    m0_path, m1_path, judge_spec, scenarios = args.m0, args.m1, args.judge, None
    if args.prompts is not None:
        scenarios = load_scenarios(args.prompts)
    if args.organism is not None:
        organism = open_organism(args.organism)
        m0_path, m1_path = m0_path or organism.m0_path, m1_path or organism.m1_path
        judge_spec = judge_spec or f"organism:{args.behavior}"
        if scenarios is None:
            scenarios = organism_scenarios(organism.test_prompts, args.behavior)
    missing = [flag for flag, value in (("--m0", m0_path), ("--m1", m1_path), ("--judge", judge_spec),
                                        ("--prompts", scenarios)) if value is None]
    if missing:
        raise ValueError(f"missing {', '.join(missing)} (or pass --organism)")
    judge = judge_from(judge_spec, args)
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
        max_new_tokens=args.max_new_tokens, seed=args.seed, settings=settings_from(args),
        fallback_all_pairs=args.fallback_all_pairs, behavior_change_samples=args.behavior_change_samples,
        batch_size=args.batch_size, max_tokens_per_batch=args.max_tokens_per_batch, sources=sources,
    )
    result.save(args.out, overwrite=args.overwrite)
    prov = result.provenance
    print(f"{len(prov['kept_scenarios'])} of {prov['n_scenarios']} scenarios kept ({prov['filter']}"
          f"{'; fallback: all triggered prompts' if prov['fallback_all_pairs'] else ''})")
    print("rates: " + format_rates(prov["rates"]))
    print(f"probe: {prov['probe']['n_pairs']} pairs over {prov['probe']['n_prompts']} prompts, layer {layer}; "
          f"bank: {prov['n_bank_vectors']} vectors; behaviour change: {prov['n_behavior_change_vectors']} vectors")
    print(f"-> {args.out} (rank pairs with: headwater attribute --bank {args.out / 'probe.safetensors'})")
    return 0
