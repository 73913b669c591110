"""The ``headwater`` command line. It only parses arguments and calls the Python API.

    headwater demo       build the model organism and attribute its planted behaviour
    headwater encode     datapoint vectors of a preference dataset into a vector store
    headwater attribute  rank the pairs of a vector store against behaviour vectors
    headwater discover   cluster behaviour change vectors to find behaviours and their pairs
    headwater intervene  filter, switch or reweight the top-ranked pairs of a dataset
    headwater retrain    DPO from M0 on a (modified) dataset
    headwater evaluate   behaviour rate of a model with a bootstrap confidence interval
    headwater experiment filter/switch the top-N pairs of each ranking, retrain, measure (resumable)
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

LOG = logging.getLogger("headwater")


def _add_tokenization_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=["auto", "raw", "chat"], default="auto",
                   help="raw: prompt text + response text (the paper); chat: the model's chat template "
                        "(what TRL trains on); auto: chat for message lists, raw for strings")
    p.add_argument("--max-length", type=int, default=None, help="most tokens of prompt + response (default: no limit)")
    p.add_argument("--overlong", choices=["truncate", "skip", "error"], default="truncate",
                   help="what to do with sequences over --max-length")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="a local transformers model directory or a .gguf file (M0)")
    p.add_argument("--layer", type=int, default=None,
                   help="decoder block ℓ to read (1-based, negative counts from the end; default: 5/8 of the depth)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-tokens-per-batch", type=int, default=16384, help="padded tokens in one forward pass")


def _settings(args: argparse.Namespace):
    from headwater.engine.tokenization import TokenizationSettings

    return TokenizationSettings(format=args.format, max_length=args.max_length, overlong=args.overlong)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="headwater", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="build the model organism, measure its planted behaviour and attribute it")
    demo.add_argument("--json", type=Path, default=None, help="write the results as JSON to this path")
    demo.add_argument("--cache-dir", type=Path, default=None, help="where the organism is built and cached")
    demo.add_argument("--preset", choices=["default", "miniature"], default="default",
                      help="organism size (miniature: seconds, for smoke tests)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--samples", type=int, default=None,
                      help="samples per test prompt and model (with --full also in the experiment's evaluations)")
    demo.add_argument("--out", type=Path, default=None, help="also write rankings and vectors here")
    demo.add_argument("--full", action="store_true",
                      help="also run the experiment (filter/switch, retrain, evaluate) and write the HTML report")
    demo.add_argument("--report", type=Path, default=None,
                      help="with --full: the HTML report's path (default headwater-report.html)")

    enc = sub.add_parser("encode", help="datapoint vectors v_d = ā(chosen) − ā(rejected) of every pair, on M0")
    _add_model_args(enc)
    enc.add_argument("--data", required=True, help="preference data: .jsonl, .parquet or a saved HF dataset dir")
    enc.add_argument("--split", default=None, help="split of a saved DatasetDict")
    enc.add_argument("--on-error", choices=["raise", "skip"], default="raise",
                     help="malformed rows: stop with an error naming the row, or skip and record them")
    enc.add_argument("--out", required=True, type=Path, help="vector store directory")
    enc.add_argument("--resume", action="store_true",
                     help="continue an interrupted run in --out (same model, layer, data and settings): "
                          "complete shards are kept, the rest is computed")
    enc.add_argument("--overwrite", action="store_true", help="replace a store or partial run already in --out")
    enc.add_argument("--store-dtype", choices=["float32", "float16", "bfloat16"], default="float32",
                     help="dtype of the stored vectors (pooling is always float32)")
    enc.add_argument("--shard-pairs", type=int, default=4096,
                     help="dataset pairs per shard: the unit of writing, resuming and splitting across ranks")
    enc.add_argument("--no-share-prompt", dest="share_prompt", action="store_false",
                     help="run chosen and rejected as separate sequences instead of encoding their prompt once")
    enc.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    _add_tokenization_args(enc)

    att = sub.add_parser("attribute", help="rank pairs by cosine with behaviour vectors")
    att.add_argument("--vectors", required=True, type=Path, help="a vector store from `headwater encode`")
    src = att.add_mutually_exclusive_group(required=True)
    src.add_argument("--behavior", type=Path, help="a vector bank (.safetensors) of behaviour or probing vectors")
    src.add_argument("--probe-data", type=Path,
                     help="JSONL of labelled responses {prompt, response, exhibits}: builds the probing "
                          "vector on the store's model and layer")
    att.add_argument("--out", required=True, type=Path, help="rankings table: .parquet or .jsonl")
    att.add_argument("--top", type=int, default=20, help="print the top N pairs")
    att.add_argument("--planted", type=Path, default=None,
                     help="a file of known pair ids (one per line) to report precision/recall/AUROC against")
    _add_method_commands(sub)
    return parser


def _add_method_commands(sub: argparse._SubParsersAction) -> None:
    """Sub-commands whose modules register themselves (each sets ``func`` on its parser)."""
    from headwater import behaviors, discovery, evaluation, experiment, interventions, retrain

    for module in (behaviors, discovery, interventions, retrain, evaluation, experiment):
        module.add_cli(sub)


def cmd_encode(args: argparse.Namespace) -> int:
    from headwater.encode import encode_dataset
    from headwater.engine import distributed

    try:
        summary = encode_dataset(
            model_path=args.model, data=args.data, out_dir=args.out, layer=args.layer, settings=_settings(args),
            dtype=args.dtype, device=args.device, split=args.split, on_error=args.on_error,
            max_tokens_per_batch=args.max_tokens_per_batch, resume=args.resume, overwrite=args.overwrite,
            store_dtype=args.store_dtype, shard_pairs=args.shard_pairs,
            share_prompt="auto" if args.share_prompt else False, progress=args.progress,
        )
    finally:
        distributed.shutdown()  # under torchrun: leave the process group (no-op otherwise)
    if summary["rank"] == 0:  # under torchrun every rank returns; one prints
        print(json.dumps(summary, indent=2))
    return 0


def cmd_attribute(args: argparse.Namespace) -> int:
    from headwater.attribution import evaluate_ranking, rank_pairs
    from headwater.encode import probe_from_file
    from headwater.engine.store import check_compatible, read_store
    from headwater.vectors import VectorBank

    store = read_store(args.vectors)
    if args.behavior is not None:
        bank = VectorBank.load(args.behavior)
        # Vectors saved with their provenance (`headwater behaviors`) must come from the store's
        # model and layer: cosines between two models' residual streams mean nothing.
        layer = bank.metadata.get("layer")
        check_compatible(
            store.manifest, what=f"{args.vectors} (for behaviour vectors {args.behavior})",
            model_fingerprint=bank.metadata.get("model_fingerprint"),
            layer=int(layer) if layer is not None and layer.lstrip("-").isdigit() else None,
        )
        behaviors = bank.vectors
    else:
        behaviors = probe_from_file(args.probe_data, store.manifest).vector
    if behaviors.shape[-1] != store.vectors.shape[1]:
        raise SystemExit(
            f"error: behaviour vectors have d={behaviors.shape[-1]} but the store has d={store.vectors.shape[1]}"
        )
    ranking = rank_pairs(store.pair_ids, store.vectors, behaviors)
    ranking.save(args.out)
    print(f"ranked {len(ranking.pair_ids)} pairs -> {args.out}")
    for row in ranking.rows()[: args.top]:
        print(f"{row['rank']:>6}  {row['score']:+.4f}  {row['pair_id']}")
    if args.planted is not None:
        planted = [line.strip() for line in args.planted.read_text().splitlines() if line.strip()]
        print(json.dumps(evaluate_ranking(ranking, planted).as_dict(), indent=2))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from headwater.demo import run_demo

    if args.report is not None and not args.full:
        raise ValueError("--report needs --full (the report shows the experiment)")
    results = run_demo(preset=args.preset, cache_dir=args.cache_dir, seed=args.seed, samples=args.samples, out_dir=args.out)
    if args.full:
        from headwater.experiment import SAMPLES, format_table, run_experiment, write_outputs

        doc = run_experiment(preset=args.preset, seed=args.seed, cache_dir=args.cache_dir,
                             samples=args.samples if args.samples is not None else SAMPLES,
                             out_dir=args.out / "experiment" if args.out is not None else None)
        print(format_table(doc))
        write_outputs(doc, None, args.report or Path("headwater-report.html"))
        results["experiment"] = doc
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
        print(f"results written to {args.json}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    handlers = {"demo": cmd_demo, "encode": cmd_encode, "attribute": cmd_attribute}
    handler = handlers.get(args.command) or args.func
    try:
        return handler(args)
    except (ValueError, FileNotFoundError) as err:
        # User-facing errors (bad rows, mismatched stores, missing files) end with one clear line.
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
