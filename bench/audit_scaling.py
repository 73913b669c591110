"""Throughput and peak memory of the audit's stages as the number of pairs grows.

    python bench/audit_scaling.py --organism-seed 0 --pairs 1000 2000 4000 8000 --out /tmp/audit-scaling

For each size N, in a fresh process (so peak RSS is that stage's own): the organism's pairs,
repeated with a numbered prompt suffix to reach N distinct pairs, are

- streamed through M0 into an SAE's training loop for a fixed number of tokens (the stream and the
  shuffle buffer bound memory; tokens/s of training);
- encoded into per-response features (tokens/s of feature encoding);
- audited (statistics, topics, clusters).

Peak RSS is ``ru_maxrss`` of the child process; the growth over the process's RSS after loading
the model and the pairs is printed beside it, since the pairs themselves are held in memory by
the caller. The machine, torch and thread count are printed with the table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(args: argparse.Namespace) -> None:
    import torch

    from headwater.audit.audit import AuditConfig, run_audit
    from headwater.audit.features import encode_features
    from headwater.audit.sae_io import load_sae
    from headwater.audit.sae_training import SAETrainingConfig, train_sae
    from headwater.audit.token_stream import ResponseTokenStream
    from headwater.data import make_pair
    from headwater.organism import OrganismConfig, build_organism

    torch.set_num_threads(args.threads)
    org = build_organism(OrganismConfig.audit(args.organism_seed))
    model, tokenizer = org.load_model("m0"), org.load_tokenizer()
    base = list(org.load_preferences())
    pairs = []
    for i in range(args.n):
        p = base[i % len(base)]
        pairs.append(p if i < len(base) else make_pair(f"{p.prompt} ({i // len(base)})", p.chosen, p.rejected))
    layer = 3
    start_rss = rss_mb()
    out: dict = {"n": args.n, "rss_after_loading_mb": start_rss}
    if args.stage == "train":
        stream = ResponseTokenStream(model, tokenizer, pairs, layer, org.settings)
        config = SAETrainingConfig(checkpoint_every=0)
        t = time.perf_counter()
        result = train_sae(stream.chunks, 128, config, total_tokens=args.train_tokens)
        out.update(seconds=time.perf_counter() - t, tokens=args.train_tokens, fvu=result.quality["fvu"],
                   tokens_per_second=args.train_tokens / (time.perf_counter() - t))
    else:
        sae = load_sae(args.sae)
        t = time.perf_counter()
        store = encode_features(model, tokenizer, pairs, layer, sae, Path(args.work) / f"features-{args.n}",
                                org.settings)
        seconds = time.perf_counter() - t
        out.update(encode_seconds=seconds, tokens=store.manifest["n_tokens"],
                   encode_tokens_per_second=store.manifest["n_tokens"] / seconds)
        t = time.perf_counter()
        run_audit(store, AuditConfig(), prompts=[p.prompt for p in pairs])
        out.update(audit_seconds=time.perf_counter() - t)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--organism-seed", type=int, default=0)
    parser.add_argument("--pairs", type=int, nargs="+", default=[1000, 2000, 4000, 8000])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--sae", type=Path, default=None, help="an SAE for the organism (default: train one)")
    parser.add_argument("--train-tokens", type=int, default=100_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--stage", default="encode", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--work", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    sae = args.sae
    if sae is None:
        from headwater.audit.sae_training import SAETrainingConfig
        from headwater.organism import OrganismConfig, build_organism
        from headwater.workflows.audit import train_sae_on_dataset

        org = build_organism(OrganismConfig.audit(args.organism_seed))
        train_sae_on_dataset(model_path=str(org.m0_path), data=str(org.preferences_path), out_dir=args.out / "sae",
                             config=SAETrainingConfig(), settings=org.settings, progress=False)
        sae = args.out / "sae"
    rows = []
    for n in args.pairs:
        for stage in ("train", "encode"):
            command = [sys.executable, __file__, "--child", "--stage", stage, "--n", str(n), "--work", str(args.out),
                       "--sae", str(sae), "--organism-seed", str(args.organism_seed), "--threads", str(args.threads),
                       "--train-tokens", str(args.train_tokens), "--out", str(args.out)]
            done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
            if done.returncode:
                print(done.stderr[-2000:], file=sys.stderr)
                return 1
            rows.append({"stage": stage, **json.loads(done.stdout.strip().splitlines()[-1])})
            print(json.dumps(rows[-1]), flush=True)
    import torch

    (args.out / "scaling.json").write_text(json.dumps({"rows": rows, "cpu": platform.processor(),
                                                       "torch": torch.__version__, "threads": args.threads}, indent=1))
    print(f"{'pairs':>6} {'stage':>7} {'tokens/s':>10} {'peak RSS MB':>12} {'growth MB':>10} {'audit s':>8}")
    for r in rows:
        speed = r.get("tokens_per_second") or r.get("encode_tokens_per_second")
        print(f"{r['n']:>6} {r['stage']:>7} {speed:>10.0f} {r['peak_rss_mb']:>12.0f} "
              f"{r['peak_rss_mb'] - r['rss_after_loading_mb']:>10.0f} {r.get('audit_seconds', float('nan')):>8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
