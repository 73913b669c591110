"""Retrain the audit organism with chosen concepts marked suppress, and compare the rates with the
unmodified retrains of `bench/audit_organism.py` (which must have run into --run first).

A person who reads every card may mark several concepts, not the first one that shows the
sign-off; this script measures what that does:

    python bench/audit_mark_concepts.py --run /tmp/audit-organism-2 --concepts c10 c8 c3 c6 c4 --mode project
    python bench/audit_mark_concepts.py --run /tmp/audit-organism-2 --concepts c10 c8 c3 c6 c4 --mode offset
    python bench/audit_mark_concepts.py --run /tmp/audit-organism-2 --signoff-cards --mode offset

``--signoff-cards`` marks every card of the over-all list's top 10 whose label shows "Hope" or
"helps" (the rule `bench/audit_organism.py` applies to the first such card only).

Prints the sign-off rate and its reduction against the seed-0 unmodified retrain, and each
behaviour's rate beside the range of the three unmodified retrains.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from audit_organism import evaluate, without_per_prompt, write_json  # noqa: E402

from headwater.engine import atomic  # noqa: E402
from headwater.organism import OrganismConfig, build_organism  # noqa: E402
from headwater.training.retrain import retrain  # noqa: E402
from headwater.workflows.audit_feedback import apply_feedback, retrain_with_feedback  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a bench/audit_organism.py --out directory")
    parser.add_argument("--directions", choices=("rows", "principal"), default="rows",
                        help="with --mode project: decoder rows, or their |Δ|-weighted principal directions")
    marked = parser.add_mutually_exclusive_group(required=True)
    marked.add_argument("--concepts", nargs="+", help="concepts of the over-all list to suppress")
    marked.add_argument("--signoff-cards", action="store_true",
                        help="every top-10 card of the over-all list whose label shows 'Hope' or 'helps'")
    parser.add_argument("--mode", choices=("project", "offset", "filter", "edit"), default="project",
                        help="the feature interventions, or the data ones (carriers filtered, or their words cut)")
    parser.add_argument("--samples", type=int, default=4)
    args = parser.parse_args()
    summary = json.loads((args.run / "summary.json").read_text())
    seed = int(summary["seed"])
    org = build_organism(OrganismConfig.audit(seed))  # cached: only read
    doc = json.loads((args.run / "audit" / "audit.json").read_text())
    rows = {c["concept"]: c for c in doc["concepts"]}
    if args.signoff_cards:
        top = {c["concept"] for c in doc["concepts"][:10]}
        args.concepts = [card["concept"] for card in doc["cards"] if card["concept"] in top
                         and ("Hope" in card["label"] or "helps" in card["label"])]
        if not args.concepts:
            parser.error("no top-10 card shows the sign-off")
        print("marked: " + " ".join(args.concepts))
    missing = [name for name in args.concepts if name not in rows]
    if missing:
        parser.error(f"not in the audit's over-all list: {missing}")
    lines = ["concept\tdecision\tlatents\td\tlabel"] + [
        f"{name}\tsuppress\t{','.join(map(str, rows[name]['latents']))}\t{rows[name]['d']:.4f}\tmarked"
        for name in args.concepts]
    feedback = args.run / f"feedback-{'-'.join(args.concepts)}.tsv"
    atomic.write_text(feedback, "\n".join(lines) + "\n")
    principal = "-principal" if args.mode == "project" and args.directions == "principal" else ""
    out = args.run / f"m1-{args.mode}{principal}-{'-'.join(args.concepts)}"
    if args.mode in ("project", "offset"):
        retrain_with_feedback(model_path=str(org.m0_path), data=str(org.preferences_path),
                              audit_dir=args.run / "audit", out_dir=out, feedback=feedback, mode=args.mode,
                              directions=args.directions, config="organism", overwrite=True)
    else:  # a data intervention: the pairs written, then the organism recipe on them
        written = args.run / f"{args.mode}-{'-'.join(args.concepts)}"
        extra = {"model_path": str(org.m0_path), "settings": org.settings} if args.mode == "edit" else {}
        apply_feedback(data=str(org.preferences_path), audit_dir=args.run / "audit", out_dir=written,
                       feedback=feedback, mode=args.mode, overwrite=True, **extra)
        retrain(org.m0_path, written, out, config="organism", overwrite=True)
    result = evaluate(out, org, org.m0_path, args.samples, seed)
    # Cached where bench/audit_retrain_spread.py looks (--extra <mode>-<concepts>), without the per-prompt lists.
    (args.run / "spread").mkdir(exist_ok=True)
    write_json(args.run / "spread" / f"{out.name.removeprefix('m1-')}.json", without_per_prompt(result))
    controls = [summary["models"][name] for name in ("base", "base-seed1", "base-seed2")]
    base = controls[0]["signoff"]["rate"]
    rate = result["signoff"]["rate"]
    print(f"{' '.join(args.concepts)} ({args.mode}): sign-off {rate:.1%} against {base:.1%}, "
          f"reduction {1 - rate / base:.1%}")
    for key in (*org.judges, "helpfulness"):
        value = result["capability"]["helpfulness"]["rate"] if key == "helpfulness" else result[key]["rate"]
        seen = [c["capability"]["helpfulness"]["rate"] if key == "helpfulness" else c[key]["rate"] for c in controls]
        flag = "" if min(seen) <= value <= max(seen) else "  (outside)"
        print(f"  {key}: {value:.1%}; unmodified retrains {min(seen):.1%}-{max(seen):.1%}{flag}")


if __name__ == "__main__":
    main()
