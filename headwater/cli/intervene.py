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
    from headwater.methods.attribution import Ranking
    from headwater.methods.interventions import drop_source, intervene, write_intervention

    if args.rankings is None and not args.drop_source:
        raise ValueError("give --rankings with --top, or --drop-source")
    if args.rankings is not None and args.top is None:
        raise ValueError("--top is required with --rankings")
    dataset = load_preferences(args.data, on_error=args.on_error)
    manifests = []
    if args.drop_source:
        dataset, m = drop_source(dataset, args.drop_source, column=args.source_column)
        manifests.append(m)
    if args.rankings is not None:
        if args.drop_source:  # pairs dropped by source are gone; rank only what is left
            ranking = Ranking.load(args.rankings)
            keep = [i for i, pid in enumerate(ranking.pair_ids) if pid in dataset]
            ranking = Ranking([ranking.pair_ids[i] for i in keep], ranking.scores[keep], ranking.method)
        else:
            ranking = args.rankings
        dataset, m = intervene(dataset, ranking, mode=args.mode, top=args.top, weight=args.weight)
        m["ranking"] = str(args.rankings)
        manifests.append(m)
    manifest = manifests[-1] if len(manifests) == 1 else {**manifests[-1], "steps": manifests}
    manifest["data"] = str(args.data)
    formats = ("jsonl", "parquet") if args.output_format == "both" else (args.output_format,)
    try:
        paths = write_intervention(args.out, dataset, manifest, formats=formats, overwrite=args.overwrite)
    except FileExistsError as err:  # the CLI reports ValueErrors as one line
        raise ValueError(f"{err} (--overwrite)") from None
    print(f"{manifest['mode']}: {manifest['n_changed']} pairs changed, {manifest['n_output']} of "
          f"{manifests[0]['n_input']} pairs written -> {', '.join(str(p) for p in paths.values())}")
    return 0
