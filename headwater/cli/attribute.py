"""``headwater attribute``: rank the pairs of a vector store by cosine with behaviour vectors."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "attribute", help="rank pairs by cosine with behaviour vectors",
        description="Score every pair of a vector store by its cosine with a probing vector (built from labelled "
                    "responses on the store's model and layer) or its best cosine over a vector bank, and write "
                    "the ranking. The store's shards are streamed, never loaded whole.",
    )
    p.add_argument("--vectors", required=True, type=Path, help="a vector store from `headwater encode`")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--bank", type=Path,
                     help="a vector bank (.safetensors) of behaviour or probing vectors, e.g. `headwater behaviors`' "
                          "probe.safetensors; a pair's score is its best cosine over the bank")
    src.add_argument("--probe-data", type=Path,
                     help="JSONL of labelled responses {prompt, response, exhibits}: builds the probing "
                          "vector on the store's model and layer")
    p.add_argument("--out", required=True, type=Path, help="rankings table: .parquet or .jsonl")
    p.add_argument("--show", type=int, default=20, metavar="N", help="print the N best-ranked pairs (default 20)")
    p.add_argument("--data", type=Path, default=None,
                   help="the preference data of the store: the printed pairs then show their prompt and chosen answer")
    p.add_argument("--planted", type=Path, default=None,
                   help="a file of known pair ids (one per line) to report precision/recall/AUROC against")
    p.set_defaults(func=run)


def _snippet(text, width: int) -> str:
    s = text if isinstance(text, str) else " | ".join(m["content"] for m in text)
    s = " ".join(s.split())
    return repr(s if len(s) <= width else s[: width - 1] + "…")


def run(args: argparse.Namespace) -> int:
    from headwater.engine.atomic import json_safe
    from headwater.methods.attribution import evaluate_ranking
    from headwater.workflows.encode import attribute_store

    ranking = attribute_store(args.vectors, behavior=args.bank, probe_data=args.probe_data)
    ranking.save(args.out)
    print(f"ranked {len(ranking.pair_ids)} pairs -> {args.out}")
    pairs = None
    if args.data is not None:
        from headwater.data import load_preferences

        pairs = load_preferences(args.data, on_error="skip")
    for row in ranking.rows()[: args.show]:
        line = f"{row['rank']:>6}  {row['score']:+.4f}  {row['pair_id']}"
        if pairs is not None and row["pair_id"] in pairs:
            pair = pairs.by_id(row["pair_id"])
            line += f"  {_snippet(pair.prompt, 50)} -> {_snippet(pair.chosen, 40)}"
        print(line)
    if args.planted is not None:
        planted = {line.strip() for line in args.planted.read_text(encoding="utf-8").splitlines() if line.strip()}
        known = planted & set(ranking.pair_ids)
        metrics = evaluate_ranking(ranking, known or planted)  # an error that says so when none is ranked
        unknown = len(planted - set(ranking.pair_ids))
        if unknown:
            print(f"note: {unknown} of the {len(planted)} planted ids are not ranked pairs and are left out",
                  file=sys.stderr)
        print(json.dumps(json_safe({**metrics.as_dict(), "n_planted_unknown": unknown}), indent=2))
    return 0
