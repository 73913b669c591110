"""Retrain the audit organism with chosen concepts marked suppress, and compare the rates with the
unmodified retrains of `bench/audit_organism.py` (which must have run into --run first).

A person who reads every card may mark several concepts, not the first one that shows the
sign-off; this script measures what that does:

    python bench/audit_mark_concepts.py --run /tmp/audit-organism-2 --concepts c10 c8 c3 c6 c4 --mode project
    python bench/audit_mark_concepts.py --run /tmp/audit-organism-2 --concepts c10 c8 c3 c6 c4 --mode offset

Prints the sign-off rate and its reduction against the seed-0 unmodified retrain, and each
behaviour's rate beside the range of the three unmodified retrains.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from audit_organism import evaluate  # noqa: E402

from headwater.organism import OrganismConfig, build_organism  # noqa: E402
from headwater.workflows.audit_feedback import retrain_with_feedback  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a bench/audit_organism.py --out directory")
    parser.add_argument("--concepts", nargs="+", required=True, help="concepts of the over-all list to suppress")
    parser.add_argument("--mode", choices=("project", "offset"), default="project")
    parser.add_argument("--samples", type=int, default=4)
    args = parser.parse_args()
    summary = json.loads((args.run / "summary.json").read_text())
    seed = int(summary["seed"])
    org = build_organism(OrganismConfig.audit(seed))  # cached: only read
    doc = json.loads((args.run / "audit" / "audit.json").read_text())
    rows = {c["concept"]: c for c in doc["concepts"]}
    missing = [name for name in args.concepts if name not in rows]
    if missing:
        parser.error(f"not in the audit's over-all list: {missing}")
    lines = ["concept\tdecision\tlatents\td\tlabel"] + [
        f"{name}\tsuppress\t{','.join(map(str, rows[name]['latents']))}\t{rows[name]['d']:.4f}\tmarked"
        for name in args.concepts]
    feedback = args.run / f"feedback-{'-'.join(args.concepts)}.tsv"
    feedback.write_text("\n".join(lines) + "\n")
    out = args.run / f"m1-{args.mode}-{'-'.join(args.concepts)}"
    retrain_with_feedback(model_path=str(org.m0_path), data=str(org.preferences_path), audit_dir=args.run / "audit",
                          out_dir=out, feedback=feedback, mode=args.mode, config="organism", overwrite=True)
    result = evaluate(out, org, org.m0_path, args.samples, seed)
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
