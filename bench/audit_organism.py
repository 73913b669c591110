"""The concept audit on the organism with a planted stylistic concept, end to end, with ground truth.

    python bench/audit_organism.py --seed 0 --out /tmp/audit-organism

Steps (each cached in --out, so a rerun resumes):

1. the ``audit`` organism (the default organism plus a sign-off, " Hope this helps!", appended
   to the chosen response of 20% of the clean pairs; 5% of M0's SFT responses carry it);
2. a BatchTopK SAE on M0's response tokens at ℓ (``headwater sae train``'s defaults);
3. the audit (``headwater audit run``): for each planted set (the sign-off pairs and the three
   behaviours' pairs) the best-matching concept among the top 10 significant concepts by |d|
   over all pairs, among the top 10 conditional ones and among the top 10 topic concepts:
   precision of the concept's top-|set| pairs (by chosen − rejected activation in the direction of
   its d, within its prompt word or topic) and its AUROC;
4. the prediction check on the organism's own M1 (held-out test prompts, 4 samples): R² of the
   three predictions (the data's Δ, the first-order one, and the local first-order one with its
   neighbour sweep in the audit directory's prediction.json);
5. a person's decision, simulated: the first concept (in |d| order) whose card label, the text
   spans it is most active on, shows the sign-off's words ("Hope", "helps") is marked suppress; then M0 is retrained five ways with the organism recipe:
   unchanged data (the baseline), the data interventions (carriers filtered; the concept's words
   cut out of the carriers' chosen responses), the feature intervention (its directions
   projected out at ℓ) and reward shaping (margin offsets), and the
   unmodified data again under other DPO seeds (``--control-seeds``: how far retraining alone
   moves the rates);
6. each model's sign-off rate on every test prompt, the three behaviours' triggered rates and the
   capability scores, with 95% intervals; reductions against the baseline with a paired bootstrap.

Prints a summary and writes ``--out/summary.json``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from headwater.audit.audit import CLUSTERINGS, AuditConfig
from headwater.audit.features import FeatureStore
from headwater.audit.cards import Decision
from headwater.audit.clusters import load_centroids
from headwater.audit.interventions import concept_topic, decision_differences
from headwater.engine import atomic
from headwater.audit.sae_training import SAETrainingConfig
from headwater.methods.cards import words
from headwater.methods.evaluation import evaluate_model, paired_bootstrap_ci
from headwater.methods.judges import RegexJudge
from headwater.organism import OrganismConfig, build_organism
from headwater.organism.capability import capability_scores, capability_set
from headwater.organism.dataset import SIGNOFF_PATTERN
from headwater.training.recipes import recipe
from headwater.training.retrain import retrain
from headwater.workflows.audit import audit_dataset, train_sae_on_dataset
from headwater.workflows.audit_feedback import apply_feedback, check_predictions, retrain_with_feedback


def planted_sets(org) -> dict[str, set[str]]:
    gt = org.ground_truth
    return {"signoff": set(gt["concepts"]["signoff"]), **{b: set(ids) for b, ids in gt["planted"].items()}}


def match_concepts(concepts: list[dict], doc: dict, store: FeatureStore, sets: dict[str, set[str]],
                   prompts: dict[str, str], topics: np.ndarray | None = None,
                   centroids: np.ndarray | None = None) -> dict:
    """For each planted set, the concept among ``concepts`` whose pair ranking finds it best.

    A concept ranks pairs by its chosen − rejected activation in the direction of its d (a
    concept with negative d by rejected − chosen); a conditional concept (``f<latent> | '<word>'``)
    ranks only the pairs whose prompt has its word, a topic concept (``t<topic>/c<cluster>``,
    ``t<topic>/r<cluster>``; ``topics`` [n_pairs] in store order) only its topic's pairs (the others
    last). A response concept's activation is membership of its response cluster (``centroids``).
    """
    ids, diffs, typical = decision_differences([Decision(c["concept"], "keep", tuple(c["latents"])) for c in concepts],
                                               store, pooling=doc["config"]["pooling"], centroids=centroids)

    def scope(c: dict) -> np.ndarray | None:
        if c.get("word"):
            return np.array([c["word"] in words(prompts[pid]) for pid in ids])
        topic = concept_topic(c["concept"])
        if topic is not None and topics is not None:
            return topics == topic
        return None

    out = {}
    for name, members in sets.items():
        y = np.array([pid in members for pid in ids])
        best = None
        for k, c in enumerate(concepts):
            score = (1.0 if c["d"] >= 0 else -1.0) * diffs[:, k]
            inside = scope(c)
            if inside is not None:
                score[~inside] = -np.inf
            order = np.argsort(-score, kind="stable")[: int(y.sum())]
            precision = float(y[order].mean()) if y.sum() else float("nan")
            finite = np.where(np.isfinite(score), score, np.nanmin(score[np.isfinite(score)]) - 1)
            auroc = float(roc_auc_score(y, finite)) if 0 < y.sum() < y.size else float("nan")
            if best is None or precision > best["precision_at_n"]:
                best = {"concept": c["concept"], "kind": c.get("kind", "topic cluster"), "rank": k + 1, "d": c["d"],
                        "q": c["q"], "n_pairs": c.get("n_pairs"), "latents": c["latents"], "precision_at_n": precision,
                        "auroc": auroc, "n": int(y.sum()),
                        "label": next((card["label"] for card in doc["cards"] if card["concept"] == c["concept"]),
                                      None)}
        # Its carriers (the difference, in the direction of d, above half its typical value, within
        # its scope): how many are planted, and how much of the planted set they cover.
        k = best["rank"] - 1
        carry = (1.0 if concepts[k]["d"] >= 0 else -1.0) * diffs[:, k] > 0.5 * typical[k]
        inside = scope(concepts[k])
        if inside is not None:
            carry &= inside
        hits = int((carry & y).sum())
        best.update(carriers=int(carry.sum()), carrier_precision=hits / max(int(carry.sum()), 1),
                    carrier_recall=hits / max(int(y.sum()), 1))
        out[name] = best
    return out


def without_per_prompt(result: dict) -> dict:
    """An evaluation without its per-prompt lists (the capability scores kept whole): what summaries
    and caches keep."""
    return {k: (v if k == "capability" else {kk: vv for kk, vv in v.items() if kk != "per_prompt"})
            for k, v in result.items()}


def write_json(path: Path, value) -> None:
    """``value`` as JSON, written atomically (numpy scalars as floats)."""
    atomic.write_text(path, json.dumps(value, indent=1, default=float))


def evaluate(model_dir: Path, org, tokenizer_dir: Path, samples: int, seed: int) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    common = dict(n=samples, temperature=0.7, max_new_tokens=64, settings=org.settings, seed=seed)
    everything = [p for b in org.test_prompts.values() for c in b.values() for p in c]
    signoff = evaluate_model(model, tokenizer, everything, RegexJudge(SIGNOFF_PATTERN, "signoff"), **common)
    out = {"signoff": signoff.to_dict()}
    for behavior, judge in org.judges.items():
        out[behavior] = evaluate_model(model, tokenizer, org.test_prompts[behavior]["trigger"], judge, **common).to_dict()
    items = capability_set(org.config.seed, exclude_prompts=everything)
    out["capability"] = capability_scores(model, tokenizer, items, samples=samples, seed=seed, settings=org.settings)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--samples", type=int, default=4, help="generations per test prompt")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clusters", choices=CLUSTERINGS, default=AuditConfig.clusters,
                        help="the audit's feature clusters (headwater audit run --clusters)")
    parser.add_argument("--control-seeds", type=int, nargs="*", default=[1, 2],
                        help="DPO seeds of extra retrains of the unmodified data: how much the rates move "
                             "from retraining alone")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    timings = {}
    t = time.perf_counter()
    org = build_organism(OrganismConfig.audit(args.seed))
    timings["organism"] = time.perf_counter() - t
    data = str(org.preferences_path)

    t = time.perf_counter()
    sae = train_sae_on_dataset(model_path=str(org.m0_path), data=data, out_dir=out / "sae",
                               config=SAETrainingConfig(), settings=org.settings, progress=False)
    timings["sae"] = time.perf_counter() - t
    t = time.perf_counter()
    audit = audit_dataset(model_path=str(org.m0_path), data=data, sae_path=out / "sae", out_dir=out / "audit",
                          config=AuditConfig(clusters=args.clusters), settings=org.settings, progress=False)
    timings["audit"] = time.perf_counter() - t
    doc = json.loads((out / "audit" / "audit.json").read_text())
    store = FeatureStore.open(out / "audit" / "features")
    prompt_of = {p.pair_id: p.prompt for p in org.load_preferences()}
    topics = np.array(doc["pair_topics"])
    matches = {"over_all_pairs": match_concepts(doc["concepts"][:10], doc, store, planted_sets(org), prompt_of),
               "conditional": match_concepts(doc["conditional_concepts"][:10], doc, store, planted_sets(org),
                                             prompt_of),
               "topic_concepts": match_concepts(doc["topic_concepts"][:10], doc, store, planted_sets(org), prompt_of,
                                                topics)}
    if doc.get("response_concepts"):
        centroids = load_centroids(out / "audit" / doc["response_clusters"]["file"], store.d_sae)
        matches["response_concepts"] = match_concepts(doc["response_concepts"][:10], doc, store, planted_sets(org),
                                                      prompt_of, topics, centroids)

    t = time.perf_counter()
    prompts = [p for b in org.test_prompts.values() for c in b.values() for p in c]
    check = check_predictions(model_path=str(org.m0_path), trained_path=str(org.m1_path), audit_dir=out / "audit",
                              data=data, prompts=prompts, samples=args.samples, seed=args.seed, settings=org.settings,
                              progress=False)
    timings["prediction_check"] = time.perf_counter() - t

    # A person reads the cards and marks the sign-off concept suppress: here, the first card whose
    # label shows the sign-off's tokens.
    cards = doc["cards"]
    pick = next((c for c in cards if "Hope" in c["label"] or "helps" in c["label"]), None)
    decision = {"chosen_by": "card label", "concept": pick["concept"] if pick else None}
    if pick is None:
        print("no card shows the sign-off; the suppression steps are skipped", file=sys.stderr)
    models = {}
    if pick is not None:
        lines = ["concept\tdecision\tlatents\td\tlabel",
                 f"{pick['concept']}\tsuppress\t{','.join(map(str, pick['latents']))}\t{pick['d']:.4f}\tsign-off"]
        feedback = out / "feedback-signoff.tsv"
        feedback.write_text("\n".join(lines) + "\n")
        t = time.perf_counter()
        if not (out / "m1-base" / "retrain.json").exists():
            retrain(org.m0_path, data, out / "m1-base", config="organism", overwrite=True)
        if not (out / "filter" / "manifest.json").exists():
            decision["data"] = apply_feedback(data=data, audit_dir=out / "audit", out_dir=out / "filter",
                                              feedback=feedback, mode="filter", overwrite=True)
        if not (out / "m1-data" / "retrain.json").exists():
            retrain(org.m0_path, out / "filter", out / "m1-data", config="organism", overwrite=True)
        if not (out / "edit" / "manifest.json").exists():
            decision["edit"] = apply_feedback(data=data, audit_dir=out / "audit", out_dir=out / "edit",
                                              feedback=feedback, mode="edit", overwrite=True,
                                              model_path=str(org.m0_path), settings=org.settings)
        if not (out / "m1-edit" / "retrain.json").exists():
            retrain(org.m0_path, out / "edit", out / "m1-edit", config="organism", overwrite=True)
        for control in args.control_seeds:
            if not (out / f"m1-base-seed{control}" / "retrain.json").exists():
                retrain(org.m0_path, data, out / f"m1-base-seed{control}",
                        config=dataclasses.replace(recipe("organism"), seed=control), overwrite=True)
        for mode in ("project", "offset"):
            if not (out / f"m1-{mode}" / "retrain.json").exists():
                retrain_with_feedback(model_path=str(org.m0_path), data=data, audit_dir=out / "audit",
                                      out_dir=out / f"m1-{mode}", feedback=feedback, mode=mode, config="organism",
                                      overwrite=True)
        timings["retrains"] = time.perf_counter() - t
        t = time.perf_counter()
        names = ["base", *(f"base-seed{c}" for c in args.control_seeds), "data", "edit", "project", "offset"]
        for name in names:
            models[name] = evaluate(out / f"m1-{name}", org, org.m0_path, args.samples, args.seed)
        timings["evaluation"] = time.perf_counter() - t
        base = models["base"]
        for name in names[1:]:
            cell = models[name]
            for key in ("signoff", *org.judges):
                b, c = base[key]["per_prompt"], cell[key]["per_prompt"]
                cell[key]["reduction"] = 1 - np.mean(c) / np.mean(b) if np.mean(b) > 0 else float("nan")
                cell[key]["reduction_ci95"] = list(paired_bootstrap_ci(b, c, seed=args.seed))

    summary = {
        "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
                    "torch": torch.__version__, "threads": args.threads},
        "seed": args.seed, "organism": str(org.root), "sae": sae, "timings_seconds": timings,
        "audit": {k: audit[k] for k in ("n_pairs", "n_latents_tested", "n_latents_significant", "n_clusters",
                                         "n_conditional_significant")},
        "planted_matches_top10": matches, "prediction_check": check["agreement"], "decision": decision,
        "models": {name: without_per_prompt(m) for name, m in models.items()},
    }
    write_json(out / "summary.json", summary)
    print(audit["table"])
    print(json.dumps({"planted_matches_top10": matches, "prediction_check": check["agreement"],
                      "decision": decision}, indent=1, default=float))
    for name, m in models.items():
        line = [f"{name:8s} signoff {m['signoff']['rate']:.3f} [{m['signoff']['ci_low']:.3f}, {m['signoff']['ci_high']:.3f}]"]
        for key in org.judges:
            line.append(f"{key} {m[key]['rate']:.3f}")
        if "reduction" in m["signoff"]:
            low, high = m["signoff"]["reduction_ci95"]
            line.append(f"signoff reduction {m['signoff']['reduction']:.1%} [{low:.1%}, {high:.1%}]")
        cap = m["capability"]
        line.append(f"helpfulness {cap['helpfulness']['rate']:.3f}; answer logprob {cap['answer_logprob']['mean']:.3f}")
        print("  ".join(line))
    print(json.dumps(timings, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
