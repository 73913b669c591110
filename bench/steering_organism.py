"""The steering check on the organism: M0's behaviour rate with the probing vector added.

The probe is the demo's (M0 and M1 answers to the behaviour's triggered test prompts, judged by
the organism's judge, paired within prompts); it is added at the layer it was read at, scale
times, to M0's residual stream while M0 answers the same triggered prompts (and, as a control,
the untriggered ones); the organism's judge labels every answer.

    python bench/steering_organism.py --seed 0 --scales 0 1 2 4 8
"""
from __future__ import annotations

import argparse
import json

import torch

from headwater.engine.models import load_model, resolve_layer
from headwater.methods.steering import steering_rates
from headwater.methods.vectors import probing_vector
from headwater.organism import OrganismConfig, build_organism, max_new_tokens_for
from headwater.workflows.organism_attribution import SAMPLES_PER_PROMPT, TEMPERATURE, measure_behavior


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", default="default", choices=["default", "miniature", "small", "hard"])
    parser.add_argument("--behaviors", nargs="+", default=None)
    parser.add_argument("--scales", type=float, nargs="+", default=[0.0, 1.0, 2.0, 4.0, 8.0])
    parser.add_argument("--samples", type=int, default=4)
    args = parser.parse_args()
    organism = build_organism(OrganismConfig.preset(args.preset, args.seed))
    torch.set_num_threads(organism.config.num_threads)
    models = {"m0": load_model(organism.m0_path), "m1": load_model(organism.m1_path)}
    m0, tokenizer = models["m0"]
    layer = resolve_layer(m0, None)
    tokens = max_new_tokens_for(args.preset)
    out = {}
    for behavior in args.behaviors or list(organism.behaviors):
        measured = measure_behavior(organism, behavior, models, SAMPLES_PER_PROMPT, args.seed, tokens)
        prompts, responses, labels = [], [], []
        for name in ("m0", "m1"):
            p, r, lab = measured["labelled"][(name, "trigger")]
            prompts, responses, labels = prompts + p, responses + r, labels + lab
        probe = probing_vector(m0, tokenizer, prompts, responses, labels, layer=layer, settings=organism.settings)
        out[behavior] = {"probe_norm": float(probe.vector.norm()), "probe_pairs": probe.n_pairs, "m1_rates": measured["rates"]["m1"]}
        for condition, test_prompts in organism.test_prompts[behavior].items():
            rates = steering_rates(m0, tokenizer, test_prompts, organism.judges[behavior], probe.vector, layer=layer,
                                   scales=args.scales, n=args.samples, temperature=TEMPERATURE, max_new_tokens=tokens,
                                   settings=organism.settings, seed=args.seed, n_boot=1000)
            out[behavior][condition] = [{k: r[k] for k in ("scale", "rate", "ci_low", "ci_high", "n_responses")}
                                        for r in rates]
            print(f"{behavior} / {condition} (M1: {measured['rates']['m1'][condition]:.1%}): " + ", ".join(
                f"×{r['scale']:g} {r['rate']:.1%} [{r['ci_low']:.1%}, {r['ci_high']:.1%}]" for r in rates), flush=True)
    print(json.dumps({"seed": args.seed, "preset": args.preset, "layer": layer, "results": out}))


if __name__ == "__main__":
    main()
