"""How well can any single SAE latent find a planted set of the organism? For each planted set
(the sign-off and the three behaviours), every latent ranks the pairs by its chosen − rejected
pooled difference (either direction, mean and max pooling); the script prints the three best
latents by precision@|set| with their rank by |d| over all pairs. A planted concept whose best
latent is far from precision 1 cannot be one concept of the audit, whatever the ranking.

    python bench/audit_latent_ceiling.py --seed 0 --audit /tmp/audit-organism/audit
    # another SAE first (trained and audited into --work, then read the same way):
    python bench/audit_latent_ceiling.py --seed 0 --work /tmp/wide --expansion 32
    python bench/audit_latent_ceiling.py --seed 0 --work /tmp/layer1 --layer 1
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from headwater.audit.features import FeatureStore
from headwater.audit.sae_training import SAETrainingConfig
from headwater.organism import OrganismConfig, build_organism
from headwater.workflows.audit import audit_dataset, train_sae_on_dataset


def precision_at_set(score: np.ndarray, members: np.ndarray) -> float:
    top = np.argsort(-score, kind="stable")[: int(members.sum())]
    return float(members[top].mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="the audit organism's seed")
    parser.add_argument("--audit", type=Path, default=None, help="an audit directory of this organism")
    parser.add_argument("--work", type=Path, default=None, help="train an SAE and audit into this directory")
    parser.add_argument("--expansion", type=int, default=8)
    parser.add_argument("--layer", type=int, default=None, help="block ℓ (default: the engine's)")
    args = parser.parse_args()
    org = build_organism(OrganismConfig.audit(args.seed))
    audit_dir = args.audit
    if audit_dir is None:
        if args.work is None:
            parser.error("give --audit, or --work to train and audit an SAE first")
        data = str(org.preferences_path)
        sae = train_sae_on_dataset(model_path=str(org.m0_path), data=data, out_dir=args.work / "sae", layer=args.layer,
                                   config=SAETrainingConfig(expansion=args.expansion), settings=org.settings,
                                   progress=False)
        print(f"SAE: layer {sae['layer']}, {sae['d_sae']} latents, FVU {sae['fvu']:.3f}")
        audit_dataset(model_path=str(org.m0_path), data=data, sae_path=args.work / "sae", out_dir=args.work / "audit",
                      settings=org.settings, progress=False)
        audit_dir = args.work / "audit"
    store = FeatureStore.open(audit_dir / "features")
    truth = org.ground_truth
    sets = {"signoff": set(truth["concepts"]["signoff"]), **{b: set(ids) for b, ids in truth["planted"].items()}}
    every = [[j] for j in range(store.d_sae)]
    for pooling in ("mean", "max"):
        ids, chosen, rejected = store.concept_sides(every, pooling)
        diff = chosen - rejected  # [n, d_sae]
        d = diff.mean(axis=0) / np.where(diff.std(axis=0) > 0, diff.std(axis=0), np.inf)
        rank = np.empty(store.d_sae, dtype=int)
        rank[np.argsort(-np.abs(d), kind="stable")] = np.arange(1, store.d_sae + 1)
        for name, members in sets.items():
            y = np.array([pid in members for pid in ids])
            best = sorted(((max(precision_at_set(diff[:, j], y), precision_at_set(-diff[:, j], y)), j)
                           for j in range(store.d_sae)), reverse=True)[:3]
            cells = ", ".join(f"f{j} {p:.2f} (|d| rank {rank[j]}, d {d[j]:+.2f})" for p, j in best)
            print(f"{pooling:4s} {name:22s} {int(y.sum()):4d} pairs: {cells}")


if __name__ == "__main__":
    main()
