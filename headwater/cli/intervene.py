"""``headwater intervene``: filter, switch or reweight the top-ranked pairs, or drop a data source."""
from __future__ import annotations

import argparse
from pathlib import Path

from headwater.cli.options import add_on_error_option, add_overwrite_option
from headwater.methods.interventions import MODES


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "intervene", help="filter, switch or reweight the top-N ranked pairs; write a TRL-ready dataset and a manifest",
        description="Change the N highest-ranked pairs of a ranking (leave them out, swap chosen and rejected, or "
                    "give them a loss weight), and/or leave out the pairs of a data source; the modified dataset "
                    "is written in TRL's format with a manifest naming every changed pair.",
    )
    p.add_argument("--data", required=True, help="the preference data the ranking was computed from")
    p.add_argument("--rankings", type=Path, default=None, help="a ranking (.parquet/.jsonl) from `headwater attribute`")
    p.add_argument("--mode", choices=MODES, default="filter", help="what happens to the top-N pairs (default filter)")
    p.add_argument("--top", type=int, default=None, help="N: how many top-ranked pairs to change")
    p.add_argument("--weight", type=float, default=0.0, help="weight of the top-N pairs with --mode reweight")
    p.add_argument("--drop-source", action="append", default=None, metavar="VALUE",
                   help="leave out pairs whose --source-column holds VALUE (repeatable; applied first)")
    p.add_argument("--source-column", default="source", help="metadata column naming a pair's data source")
    p.add_argument("--output-format", choices=["jsonl", "parquet", "both"], default="jsonl",
                   help="file format of the written pairs (default jsonl)")
    add_on_error_option(p)
    p.add_argument("--out", required=True, type=Path, help="output directory")
    add_overwrite_option(p, "an intervention")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from headwater.data import load_preferences
    from headwater.methods.interventions import apply_interventions, write_intervention

    dataset = load_preferences(args.data, on_error=args.on_error)
    pairs, manifest = apply_interventions(
        dataset, ranking=args.rankings, mode=args.mode, top=args.top, weight=args.weight,
        drop_values=args.drop_source or (), source_column=args.source_column,
    )
    manifest["data"] = str(args.data)
    formats = ("jsonl", "parquet") if args.output_format == "both" else (args.output_format,)
    try:
        paths = write_intervention(args.out, pairs, manifest, formats=formats, overwrite=args.overwrite)
    except FileExistsError as err:  # the CLI reports ValueErrors as one line
        raise ValueError(f"{err} (--overwrite)") from None
    notes = []
    if manifest["skipped_rows"]:
        notes.append(f"{len(manifest['skipped_rows'])} malformed rows skipped (listed in the manifest)")
    for step in manifest.get("steps", [manifest]):
        if step.get("unmatched_values"):
            notes.append(f"no pair has {step['column']} = {step['unmatched_values']}")
        if step.get("n_ranked_dropped_with_source"):
            notes.append(f"{step['n_ranked_dropped_with_source']} ranked pairs were dropped with their source first")
    print(f"{manifest['mode']}: {manifest['n_changed']} pairs changed, {manifest['n_output']} of "
          f"{manifest['n_input']} pairs written -> {', '.join(str(p) for p in paths.values())}")
    for note in notes:
        print(f"note: {note}")
    return 0
