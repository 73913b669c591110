"""``headwater audit run|apply|retrain|check``: the concept audit of preference data, and what
follows from it (method.md §6)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from headwater.cli.options import (
    add_batch_tokens_option,
    add_layer_option,
    add_model_options,
    add_on_error_option,
    add_overwrite_option,
    add_tokenization_options,
    settings_from,
)
from headwater.methods.interventions import MODES


def _data_options(p: argparse.ArgumentParser, what: str = "preference data") -> None:
    p.add_argument("--data", required=True, help=f"{what}: .jsonl, .parquet or a saved HF dataset dir")
    p.add_argument("--split", default=None, help="split of a saved DatasetDict")
    add_on_error_option(p)


def _feedback_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--audit", required=True, type=Path, help="the directory of `headwater audit run`")
    p.add_argument("--feedback", type=Path, default=None, help="the feedback file (default <audit>/feedback.tsv)")


def _written_pairs_options(p: argparse.ArgumentParser) -> None:
    """Where a data intervention writes its pairs: ``--out``, ``--output-format``, ``--overwrite``."""
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--output-format", choices=["jsonl", "parquet", "both"], default="jsonl",
                   help="file format of the written pairs (default jsonl)")
    add_overwrite_option(p, "an intervention")


def _formats(args: argparse.Namespace) -> tuple[str, ...]:
    return ("jsonl", "parquet") if args.output_format == "both" else (args.output_format,)


def register(sub: argparse._SubParsersAction) -> None:
    import headwater.organism  # noqa: F401  (registers the organism's recipe)
    from headwater.training.recipes import RECIPES

    p = sub.add_parser("audit", help="the concept audit of preference data before training (run, apply, edit, retrain, "
                                     "check)",
                       description="Which interpretable concepts (SAE features of M0) separate chosen from rejected "
                                   "responses, what a person decides about them, and whether DPO then learned what "
                                   "the audit predicted.")
    actions = p.add_subparsers(dest="audit_command", required=True, metavar="action")
    r = actions.add_parser(
        "run", help="concepts that separate chosen from rejected responses: table, cards, feedback file",
        description="Encode every chosen and rejected response through an SAE on M0 at block ℓ, pool the features "
                    "per response, and test per latent, per feature cluster, per prompt topic × cluster and "
                    "per response cluster of each prompt topic whether chosen responses carry more of it than rejected ones (paired t, 95% CI, effect size, "
                    "Benjamini-Hochberg q, split-half sign). Writes audit.json, audit.html (concept cards with "
                    "highlighted tokens) and feedback.tsv (mark each concept keep/suppress/amplify/ignore).",
    )
    add_model_options(r, what="M0, the model before preference training")
    add_layer_option(r)
    add_batch_tokens_option(r)
    _data_options(r)
    r.add_argument("--sae", required=True, type=Path,
                   help="an SAE directory in SAELens's format (from `headwater sae train` or SAELens), or with "
                        "--sparsify one in EleutherAI sparsify's")
    r.add_argument("--sparsify", action="store_true", help="--sae is in sparsify's format")
    r.add_argument("--hookpoint", default=None, help="with --sparsify: the hookpoint subdirectory, e.g. layers.6")
    r.add_argument("--out", required=True, type=Path, help="directory for features/, audit.json, audit.html, feedback.tsv")
    r.add_argument("--pooling", choices=["mean", "max"], default="mean",
                   help="per-response pooling of a latent over its tokens (default mean)")
    r.add_argument("--alpha", type=float, default=0.05, help="false discovery rate for significance (default 0.05)")
    r.add_argument("--topics", type=int, default=8, help="prompt topics (default 8)")
    r.add_argument("--clusters", choices=("joined", "coactivation", "differences"), default="joined",
                   help="feature clusters: co-activation clusters joined where their chosen − rejected differences "
                        "correlate (default), co-activation clusters alone (latents active in the same responses), "
                        "or latents whose differences correlate over the pairs")
    r.add_argument("--response-clusters", type=int, default=4,
                   help="response clusters per prompt topic (k-means on the pooled features of the topic's responses; "
                        "0: none; default 4)")
    r.add_argument("--concepts", type=int, default=20,
                   help="concepts of each list (over all pairs, conditional, topic, response) in the table and the "
                        "feedback file (default 20)")
    r.add_argument("--cards", type=int, default=10,
                   help="concepts with a card, per list: over all pairs, conditional, topic, response (default 10)")
    r.add_argument("--seed", type=int, default=0, help="split halves, topics and response clusters (default 0)")
    r.add_argument("--label-model", default=None,
                   help="name each carded concept with an LLM: openai:<model> on an OpenAI-compatible server "
                        "(the key from $HEADWATER_JUDGE_API_KEY or $OPENAI_API_KEY)")
    r.add_argument("--label-url", default=None, help="that server's base URL, e.g. http://127.0.0.1:8000/v1")
    r.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    r.add_argument("--json", action="store_true", help="print the summary as JSON instead of the table")
    add_tokenization_options(r)
    r.set_defaults(func=run_audit)

    a = actions.add_parser(
        "apply", help="a data intervention from the feedback file: filter, switch or reweight concept carriers",
        description="The pairs that carry a concept marked suppress (more of it on the chosen side) or amplify "
                    "(more on the rejected side) are filtered, switched or reweighted; written like `headwater "
                    "intervene` (pairs + manifest), ready for `headwater retrain` or TRL.",
    )
    _data_options(a, "the audited preference data")
    _feedback_options(a)
    a.add_argument("--mode", choices=MODES, default="filter", help="what happens to the carriers (default filter)")
    a.add_argument("--weight", type=float, default=0.0, help="their weight with --mode reweight (default 0)")
    a.add_argument("--margin", type=float, default=1.0,
                   help="a carrier's chosen − rejected difference must exceed this × the concept's typical "
                        "activation, the mean of its non-zero pooled values (default 1; a response concept's "
                        "carriers are the pairs whose chosen response alone is in the cluster, whatever the margin)")
    _written_pairs_options(a)
    a.set_defaults(func=run_apply)

    e = actions.add_parser(
        "edit", help="a data intervention from the feedback file: cut each marked concept's words out of its carriers",
        description="Each carrier of a concept marked suppress (amplify: its rejected response) is read through M0 and "
                    "the SAE token by token; the runs of tokens where the concept peaks are cut out of the response "
                    "text, widened to whole words, and the pair is kept under a new id. The responses are tokenised "
                    "as the audit recorded. Written like `headwater intervene` (pairs + manifest, with examples and "
                    "the pairs left unedited and why).",
    )
    add_model_options(e, what="M0, the model the audit read", dtype=False)
    _data_options(e, "the audited preference data")
    _feedback_options(e)
    e.add_argument("--margin", type=float, default=1.0,
                   help="which pairs carry a concept, as for `audit apply` (default 1)")
    e.add_argument("--fraction", type=float, default=0.5,
                   help="a run of the concept's tokens is cut when its peak reaches this share of the median peak "
                        "over the concept's carriers (default 0.5)")
    _written_pairs_options(e)
    e.set_defaults(func=run_edit)

    t = actions.add_parser(
        "retrain", help="DPO from M0 with a feature intervention from the feedback file",
        description="Train DPO from M0 while the concepts marked suppress are projected out of the residual stream "
                    "at ℓ (amplify: added), or with reward shaping (--intervention offset: the concept's activation "
                    "difference is added to each pair's DPO margin). The edit is gone from the saved model.",
    )
    t.add_argument("--model", required=True, help="M0: a transformers model directory or a .gguf file")
    _data_options(t, "the audited preference data")
    _feedback_options(t)
    t.add_argument("--intervention", choices=["project", "offset"], default="project",
                   help="project the concept out at ℓ (amplify: add it), or shape the margin (default project)")
    t.add_argument("--strength", type=float, default=1.0,
                   help="offset per typical activation (offset), or the added multiple (project, amplify)")
    t.add_argument("--directions", choices=["rows", "principal"], default="rows",
                   help="with --intervention project: every latent's decoder row (default), or the fewest principal "
                        "directions of those rows, each weighted by its latent's |Δ| in the data, that hold --energy "
                        "of their mass (suppress only)")
    t.add_argument("--energy", type=float, default=0.9,
                   help="with --directions principal: the share of the weighted rows' squared mass kept (default 0.9)")
    t.add_argument("--recipe", choices=sorted(RECIPES), default="organism", help="the DPO recipe (default organism)")
    t.add_argument("--device", default="cpu", help="torch device to train on")
    t.add_argument("--out", required=True, type=Path, help="output directory for M1")
    add_overwrite_option(t, "a retrained model")
    t.set_defaults(func=run_retrain)

    c = actions.add_parser(
        "check", help="the prediction check: predicted against measured concept shifts after training, with R²",
        description="Sample M0 and M1 on held-out prompts, read both through M0 and the SAE, and compare each "
                    "concept's measured shift (M1 − M0) with three predictions made before training: its Δ in the "
                    "data, a first-order DPO prediction weighted by M0's likelihood of each side, and the same "
                    "prompt by prompt (each held-out prompt's nearest pairs, centred on M0's generations to it). "
                    "Writes prediction.json and prediction.png and adds the check to audit.html.",
    )
    c.add_argument("--model", required=True, help="M0, the model the audit read")
    c.add_argument("--trained", required=True, help="M1, the model trained on the audited data")
    c.add_argument("--audit", required=True, type=Path, help="the directory of `headwater audit run`")
    _data_options(c, "the audited preference data (for M0's likelihood of each side)")
    c.add_argument("--prompts", required=True, type=Path, help="held-out prompts: .txt (one per line) or .jsonl")
    c.add_argument("--samples", type=int, default=4, help="generations per prompt and model (default 4)")
    c.add_argument("--max-new-tokens", type=int, default=64, help="the longest generation (default 64)")
    c.add_argument("--temperature", type=float, default=0.7, help="sampling temperature (default 0.7)")
    c.add_argument("--latents", type=int, default=50, help="top significant latents checked (default 50)")
    c.add_argument("--scoped", type=int, default=20,
                   help="top topic concepts and top response concepts checked, each over the held-out prompts of "
                        "its prompt topic (default 20 of each; 0: none)")
    c.add_argument("--neighbours", type=int, default=20,
                   help="pairs per held-out prompt in the local prediction (default 20)")
    c.add_argument("--seed", type=int, default=0, help="sampling and bootstrap seed (default 0)")
    c.add_argument("--device", default="cpu", help="torch device")
    c.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    add_tokenization_options(c, lengths=False)
    c.set_defaults(func=run_check)


def run_audit(args: argparse.Namespace) -> int:
    from headwater.audit.audit import AuditConfig
    from headwater.workflows.audit import audit_dataset

    summary = audit_dataset(
        model_path=args.model, data=args.data, sae_path=args.sae, out_dir=args.out,
        config=AuditConfig(pooling=args.pooling, alpha=args.alpha, n_topics=args.topics, clusters=args.clusters,
                           response_clusters=args.response_clusters, seed=args.seed),
        layer=args.layer, sparsify=args.sparsify, hookpoint=args.hookpoint, settings=settings_from(args),
        split=args.split, on_error=args.on_error, dtype=args.dtype, device=args.device,
        max_tokens_per_batch=args.max_tokens_per_batch, top=args.concepts, cards=args.cards, progress=args.progress,
        label_model=args.label_model, label_url=args.label_url,
    )
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{summary['n_pairs']} pairs; {summary['n_latents_tested']} latents tested, "
          f"{summary['n_latents_significant']} significant; {summary['n_clusters']} clusters")
    print(summary["table"])
    print()
    print(summary["cards"])
    if summary["labelling"]:
        stats = summary["labelling"]
        print(f"\nLLM labels ({stats['model']}): {stats['calls']} calls, {stats['cached']} cached, "
              f"{stats['failed']} failed, {stats['empty']} empty (those cards keep their span labels)")
    print(f"\nwritten: {summary['out']}/audit.json, audit.html; decisions go in {summary['feedback']}")
    return 0


def run_apply(args: argparse.Namespace) -> int:
    from headwater.workflows.audit_feedback import apply_feedback

    summary = apply_feedback(data=args.data, audit_dir=args.audit, out_dir=args.out, feedback=args.feedback,
                             mode=args.mode, weight=args.weight, margin=args.margin, split=args.split,
                             on_error=args.on_error, overwrite=args.overwrite, formats=_formats(args))
    print(json.dumps(summary, indent=2))
    return 0


def run_edit(args: argparse.Namespace) -> int:
    from headwater.workflows.audit_feedback import apply_feedback

    summary = apply_feedback(data=args.data, audit_dir=args.audit, out_dir=args.out, feedback=args.feedback,
                             mode="edit", margin=args.margin, split=args.split, on_error=args.on_error,
                             overwrite=args.overwrite, formats=_formats(args), model_path=args.model, fraction=args.fraction,
                             device=args.device)
    print(json.dumps(summary, indent=2))
    return 0


def run_retrain(args: argparse.Namespace) -> int:
    from headwater.workflows.audit_feedback import retrain_with_feedback

    summary = retrain_with_feedback(model_path=args.model, data=args.data, audit_dir=args.audit, out_dir=args.out,
                                    feedback=args.feedback, mode=args.intervention, strength=args.strength,
                                    directions=args.directions, energy=args.energy, config=args.recipe, split=args.split, on_error=args.on_error,
                                    overwrite=args.overwrite, device=args.device)
    print(json.dumps(summary, indent=2))
    return 0


def run_check(args: argparse.Namespace) -> int:
    from headwater.data import load_prompts
    from headwater.workflows.audit_feedback import check_predictions

    prompts = load_prompts(args.prompts)
    result = check_predictions(model_path=args.model, trained_path=args.trained, audit_dir=args.audit,
                               data=args.data, split=args.split, on_error=args.on_error, prompts=prompts, samples=args.samples, max_new_tokens=args.max_new_tokens,
                               temperature=args.temperature, seed=args.seed, n_latents=args.latents, n_scoped=args.scoped,
                               neighbours=args.neighbours,
                               settings=settings_from(args), device=args.device, progress=args.progress)
    for kind, a in result["agreement"].items():
        print(f"prediction check ({kind}) over {a['n']} concepts: R² = {a['r2']:.3f}, Pearson r = {a['pearson']:.3f}, "
              f"Spearman ρ = {a['spearman']:.3f} (slope {a['slope']:.3g})")
    if "scoped" in result:
        scoped = result["scoped"]
        for label, table in (("topic and response concepts", scoped["agreement"]),
                             ("all concepts together", scoped["agreement_all"])):
            a = table["local_first_order"]
            print(f"prediction check (local_first_order), {label}, over {a['n']} concepts: R² = {a['r2']:.3f}, "
                  f"Spearman ρ = {a['spearman']:.3f}")
        if scoped["n_unchecked"]:
            print(f"  ({scoped['n_unchecked']} topic or response concepts have no held-out prompt in their topic)")
    print(f"written: {args.audit}/prediction.json, prediction.png")
    return 0
