"""How far does retraining alone move each behaviour of the audit organism, and is an intervention's
side effect larger than that? Retrains the unmodified data under more DPO seeds (beside the three of
`bench/audit_organism.py`, which must have run into --run first), evaluates them the same way, and
judges every intervention's rates against a 95% prediction interval for one more unmodified retrain
(mean ± t(0.975, n−1) · sd · √(1 + 1/n) over the n unmodified retrains; the retrain-to-retrain
spread includes the evaluation's own sampling noise, since each retrain is evaluated once).

    python bench/audit_retrain_spread.py --run /tmp/audit-organism --dpo-seeds 0 1 2 3 4 5 6 7
    python bench/audit_retrain_spread.py --run /tmp/audit-organism-2 --extra all-project all-offset

Three retrains give a min-max range that is narrow by chance (0.4 points for links on seed 0);
this is the interval the closing figures use. The sign-off's reduction is read against the mean of
the unmodified retrains, with a conservative 95% interval (the model's own interval over prompts
against the t-interval of that mean). Evaluations of new models are cached in
``--run/spread/<model>.json``; the table is written to ``--run/spread.json``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import torch
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent))
from audit_organism import evaluate, without_per_prompt, write_json  # noqa: E402

from headwater.organism import OrganismConfig, build_organism  # noqa: E402
from headwater.training.recipes import recipe  # noqa: E402
from headwater.training.retrain import retrain  # noqa: E402

INTERVENTIONS = ("data", "edit", "project", "offset")
BETTER_HIGHER = {"helpfulness", "answer_logprob"}  # the planted behaviours and the sign-off are better lower


def rate(result: dict, key: str) -> float:
    if key == "helpfulness":
        return float(result["capability"]["helpfulness"]["rate"])
    if key == "answer_logprob":
        return float(result["capability"]["answer_logprob"]["mean"])
    return float(result[key]["rate"])


def prediction_interval(values: list[float]) -> tuple[float, float, float, float]:
    """(mean, sd, low, high): 95% prediction interval for one more draw, from n ≥ 2 draws."""
    x = np.asarray(values, dtype=np.float64)
    n = x.size
    mean, sd = float(x.mean()), float(x.std(ddof=1))
    half = float(stats.t.ppf(0.975, n - 1)) * sd * np.sqrt(1 + 1 / n)
    return mean, sd, mean - half, mean + half


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a bench/audit_organism.py --out directory")
    parser.add_argument("--dpo-seeds", type=int, nargs="+", default=list(range(8)),
                        help="DPO seeds of the unmodified retrains (0-2 are reused from the run)")
    parser.add_argument("--extra", nargs="*", default=[],
                        help="more retrained models of the run to judge (m1-<name> directories)")
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if len(args.dpo_seeds) < 3:
        parser.error("give at least three DPO seeds")
    torch.set_num_threads(args.threads)
    summary = json.loads((args.run / "summary.json").read_text())
    seed = int(summary["seed"])
    org = build_organism(OrganismConfig.audit(seed))  # cached: only read
    cache = args.run / "spread"
    cache.mkdir(exist_ok=True)

    def result_of(name: str) -> dict:
        if name in summary["models"]:
            return summary["models"][name]  # evaluated by audit_organism.py, same function and seed
        path = cache / f"{name}.json"
        if not path.exists():
            model_dir = args.run / f"m1-{name}"
            if not (model_dir / "retrain.json").exists():
                dpo_seed = int(name.removeprefix("base-seed"))
                retrain(org.m0_path, str(org.preferences_path), model_dir,
                        config=dataclasses.replace(recipe("organism"), seed=dpo_seed), overwrite=True)
            write_json(path, without_per_prompt(evaluate(model_dir, org, org.m0_path, args.samples, seed)))
        return json.loads(path.read_text())

    controls = {s: result_of("base" if s == 0 else f"base-seed{s}") for s in args.dpo_seeds}
    keys = ["signoff", *org.judges, "helpfulness", "answer_logprob"]
    intervals = {key: prediction_interval([rate(r, key) for r in controls.values()]) for key in keys}
    judged = {name: result_of(name) for name in (*INTERVENTIONS, *args.extra)
              if name in summary["models"] or (args.run / f"m1-{name}").exists()}
    table = {"organism_seed": seed, "dpo_seeds": args.dpo_seeds, "samples": args.samples,
             "unmodified": {key: {"rates": [rate(r, key) for r in controls.values()],
                                  "mean": iv[0], "sd": iv[1], "prediction_interval_95": [iv[2], iv[3]]}
                            for key, iv in intervals.items()},
             "interventions": {}}
    width = max(len(n) for n in judged) if judged else 8
    print(f"organism seed {seed}: {len(controls)} unmodified retrains (DPO seeds {args.dpo_seeds})")
    for key, (mean, sd, low, high) in intervals.items():
        print(f"  {key:24s} mean {mean:.3f}  sd {sd:.3f}  95% prediction interval [{low:.3f}, {high:.3f}]")
    for name, result in judged.items():
        cells, row = [], {}
        for key in keys:
            value = rate(result, key)
            low, high = intervals[key][2:]
            inside = low <= value <= high
            worse = (value < low) if key in BETTER_HIGHER else (value > high)
            side = None if inside else ("worse" if worse else "better")
            # A rate near its ceiling (helpfulness 99-100%) has a retrain sd of a few answers, so the
            # interval is tight: say also whether the model's own 95% CI reaches the unmodified mean.
            own = result["capability"]["helpfulness"] if key == "helpfulness" else result.get(key)
            reaches = (own["ci_low"] <= intervals[key][0] <= own["ci_high"]
                       if isinstance(own, dict) and "ci_low" in own else None)
            row[key] = {"rate": value, "inside": inside, "outside_side": side, "own_ci_reaches_mean": reaches}
            if key != "signoff":
                note = "" if inside else f" (outside, {side}{'; its CI reaches the mean' if reaches else ''})"
                cells.append(f"{key} {value:.3f}{note}")
        signoff, mean = rate(result, "signoff"), intervals["signoff"][0]
        # Against the unmodified mean, with a conservative 95% interval: the model's own interval
        # over prompts against the t-interval of the mean of the n unmodified retrains.
        n = len(controls)
        half = float(stats.t.ppf(0.975, n - 1)) * intervals["signoff"][1] / np.sqrt(n)
        low_mean, high_mean = max(mean - half, 1e-12), mean + half
        reduction = [1 - result["signoff"]["ci_high"] / low_mean, 1 - result["signoff"]["ci_low"] / high_mean]
        row["signoff_reduction_vs_mean"] = 1 - signoff / mean if mean > 0 else float("nan")
        row["signoff_reduction_vs_mean_ci95"] = reduction
        table["interventions"][name] = row
        print(f"  {name:{width}s} sign-off {signoff:.3f}, {row['signoff_reduction_vs_mean']:.1%} below the mean "
              f"[{reduction[0]:.1%}, {reduction[1]:.1%}]; " + "; ".join(cells))
    write_json(args.run / "spread.json", table)


if __name__ == "__main__":
    main()
