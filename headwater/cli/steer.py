"""``headwater steer``: the steering check, M0's behaviour rate with a probing vector added."""
from __future__ import annotations

import argparse
from pathlib import Path

from headwater.cli.options import (
    add_judge_option,
    add_layer_option,
    add_model_options,
    add_sampling_options,
    add_tokenization_options,
    judge_from,
    settings_from,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "steer", help="behaviour rate of M0 with a probing vector added to its residual stream (the steering check)",
        description="Add scale × a behaviour vector (e.g. `headwater behaviors`' probe.safetensors) to the output of "
                    "decoder block ℓ at every position, sample every test prompt, judge the responses, and report "
                    "the rate with a bootstrap interval at each scale. A probe that captures the behaviour raises "
                    "the rate as the scale grows.",
    )
    add_model_options(p, what="the model to steer (M0)", dtype=False)
    p.add_argument("--vector", required=True, type=Path,
                   help="a vector bank (.safetensors) holding the steering vector, e.g. probe.safetensors")
    p.add_argument("--name", default=None, help="which vector of the bank (default: the first)")
    add_layer_option(p)
    p.add_argument("--scales", type=float, nargs="+", default=[0.0, 2.0, 4.0, 8.0],
                   help="multiples of the vector to add (default 0 2 4 8; 0 is the unsteered model)")
    p.add_argument("--prompts", required=True, type=Path, help="test prompts: .txt (one per line) or .jsonl")
    add_judge_option(p, required=True)
    add_sampling_options(p, samples=4, samples_help="responses per prompt and scale")
    add_tokenization_options(p, lengths=False)
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples (default 2000)")
    p.add_argument("--json", type=Path, default=None, help="write the rates (with example responses) here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from headwater.data import load_prompts
    from headwater.engine.models import load_model, resolve_layer
    from headwater.engine.store import model_fingerprint
    from headwater.methods.steering import steering_rates
    from headwater.methods.vectors import VectorBank
    from headwater.workflows.stages import write_json_atomic

    judge = judge_from(args.judge, args)  # a bad judge fails before the model loads
    prompts = load_prompts(args.prompts)
    bank = VectorBank.load(args.vector)
    name = args.name if args.name is not None else bank.names[0]
    if name not in bank.names:
        raise ValueError(f"{args.vector} has no vector named {name!r}; it holds {bank.names[:10]}")
    vector = bank.vectors[bank.names.index(name)]
    model, tokenizer = load_model(args.model, device=args.device)
    saved_layer = bank.metadata.get("layer")
    layer = resolve_layer(model, args.layer if args.layer is not None else
                          (int(saved_layer) if saved_layer is not None and saved_layer.lstrip("-").isdigit() else None))
    if saved_layer is not None and saved_layer.lstrip("-").isdigit() and int(saved_layer) != layer:
        raise ValueError(f"{args.vector} holds vectors of layer {saved_layer}; steering at layer {layer} would add "
                         "them where they do not belong (drop --layer or make the vectors at that layer)")
    fingerprint = bank.metadata.get("model_fingerprint")
    if fingerprint is not None and fingerprint != model_fingerprint(model):
        print(f"note: {args.vector} was made on another model than {args.model} (fingerprints differ)")
    rates = steering_rates(model, tokenizer, prompts, judge, vector, layer=layer, scales=args.scales,
                           n_boot=args.n_boot, n=args.samples, temperature=args.temperature,
                           max_new_tokens=args.max_new_tokens, settings=settings_from(args), seed=args.seed,
                           batch_size=args.batch_size)
    print(f"steering {args.model} at layer {layer} with {name!r} ({judge.name}, {len(prompts)} prompts × "
          f"{args.samples} samples):")
    for row in rates:
        print(f"  scale {row['scale']:>6g}: {row['rate']:.1%} [{row['ci_low']:.1%}, {row['ci_high']:.1%}] "
              f"({row['n_exhibited']}/{row['n_responses']})")
    if args.json is not None:
        write_json_atomic(args.json, {"model": str(args.model), "vector": str(args.vector), "name": name,
                                      "layer": layer, "judge_spec": args.judge, "rates": rates}, indent=2)
    return 0
