"""Peer cross-check of the gradient baseline against the `bergson` data-attribution library.

Both methods rank the organism's preference pairs for one planted behaviour by gradient similarity
to the same behaviour query pairs (an M1 answer that exhibits the behaviour ≻ an M0 answer to the
same prompt that does not, :meth:`Labelled.query_pairs`), and both are scored against the planted
pair ids: precision@N and AUROC (N = the planted count), the Spearman correlation of the two score
vectors over the same pair ids, the overlap of their top N, and the wall time of each.

* **gradient** — :func:`headwater.baselines.gradient.gradient_ranking`, LESS adapted to DPO: LoRA
  warm-up on 5% of the pairs, per-pair DPO-loss gradients on the LoRA weights at each warm-up
  checkpoint, Adam-normalised, sparse random projection, Σ_c η_c · mean_q cos.
* **bergson** — bergson 2.5.1's own gradient collector (``InMemoryCollector`` driven by
  ``CollectorComputer``: per-example gradients from hooks on every linear layer of the transformer
  body, the LM head excluded, each compressed by bergson's double-sided Rademacher projection to
  ``projection_dim`` × ``projection_dim``) and its ``Scorer``. bergson attributes a plain
  language-modelling loss, not DPO, so each pair becomes two examples, chosen and rejected, whose
  loss is the cross-entropy of the response tokens only (prompt tokens labelled -100; summed, or
  averaged when the organism's DPO length-normalises). The pair's feature is
  ∇L(chosen) − ∇L(rejected), projected (the projection is linear, so this is the projection of the
  difference). At M0 the DPO loss of a pair has gradient (β/2)·(∇L(chosen) − ∇L(rejected)) (policy
  = reference, σ(0) = ½), so the feature is the pair's DPO gradient at M0 up to a positive scale,
  on all body weights instead of LoRA weights, with no warm-up and no Adam normalisation: plain
  gradient cosine, not LESS. Queries: the same difference for each behaviour pair. Score of a pair:
  the mean over queries of the cosine, computed as bergson's ``score --unit_normalize`` with mean
  aggregation (unit query features averaged, ``normalize_and_aggregate_grads``; the ``Scorer``
  divides by each pair feature's norm).

With ``--projection-dim 0`` (exact gradients) bergson's per-example gradients of a padded batch
matched plain autograd on single sequences to 7e-7 relative error on the miniature organism.

Both see the same token sequences (the pairs encoded by the baseline's tokenisation settings;
pairs it skips are skipped by both) and run at the organism's torch thread count.

Setup: bergson in a virtual environment of its own, built from this project's constraints so that
torch stays the CPU build. bergson declares torchvision and torchaudio but never imports them; the
wheels pip picks are CUDA builds that cannot load against CPU torch and break ``import
transformers``, so they are removed::

    python -m venv /tmp/bergson-venv
    /tmp/bergson-venv/bin/pip install -c constraints.txt -e . bergson==2.5.1
    /tmp/bergson-venv/bin/pip uninstall -y torchvision torchaudio

Run from the repository root (the default preset takes minutes)::

    /tmp/bergson-venv/bin/python bench/bergson_organism.py --seed 0
    /tmp/bergson-venv/bin/python bench/bergson_organism.py --seed 0 --preset miniature --queries-from-planted

The miniature organism does not show its behaviours, so it gives no behaviour pair; for a smoke
test ``--queries-from-planted`` uses the planted pairs themselves as queries (both rankings then
trivially favour them: the figures check the plumbing, not attribution). Prints a table and, last,
one JSON line with every figure on stdout; log lines and progress bars go to stderr.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from headwater.baselines.gradient import gradient_ranking
from headwater.data import PreferencePair
from headwater.engine.tokenization import TokenizationSettings, encode_pairs
from headwater.methods.attribution import Ranking, evaluate_ranking
from headwater.organism import OrganismConfig, build_organism, max_new_tokens_for
from headwater.workflows.compare_inputs import organism_gradient_config, organism_inputs

SETUP_HINT = ("bergson is not importable here; run this script with the interpreter of a virtual environment "
              "that has it (see this file's docstring: /tmp/bergson-venv/bin/python bench/bergson_organism.py)")


@dataclass
class BergsonResult:
    """bergson's ranking and what it took.

    Attributes:
        ranking: pairs by mean query cosine, ``method="bergson"``.
        n_queries: query pairs encoded.
        dim: length of one pair feature (Σ over modules of projection_dim², or of the weight sizes).
        modules: linear layers hooked.
        n_tokens: tokens through the gradient passes (both sides of every pair and query).
        seconds: {"train", "queries", "scoring"} wall times.
    """

    ranking: Ranking
    n_queries: int
    dim: int
    modules: int
    n_tokens: int
    seconds: dict[str, float]


def lm_examples(tokenizer: Any, pairs: Sequence[PreferencePair], settings: TokenizationSettings) -> tuple[list[int], Any, int]:
    """bergson's dataset for ``pairs``: rows 2i and 2i + 1 are kept pair i's chosen and rejected
    sequences, labels -100 on the prompt tokens.

    Returns:
        (positions of the kept pairs in ``pairs``, the ``datasets.Dataset``, tokens in it).
    """
    from datasets import Dataset

    encoded = encode_pairs(tokenizer, pairs, settings)
    rows: dict[str, list] = {"input_ids": [], "labels": [], "length": []}
    for chosen, rejected in encoded.encoded:
        for side in (chosen, rejected):
            ids = list(side.input_ids)
            rows["input_ids"].append(ids)
            rows["labels"].append([-100] * side.prompt_length + ids[side.prompt_length:])
            rows["length"].append(len(ids))
    return list(encoded.kept), Dataset.from_dict(rows), sum(rows["length"])


def pair_features(model: torch.nn.Module, data: Any, processor: Any, cfg: Any) -> dict[str, torch.Tensor]:
    """Per-module projected ∇L(chosen) − ∇L(rejected) of every pair in ``data`` (:func:`lm_examples`),
    from bergson's in-memory gradient collector."""
    from bergson import CollectorComputer, InMemoryCollector
    from bergson.data import allocate_batches

    Path(cfg.partial_run_path).mkdir(parents=True, exist_ok=True)  # the computer leaves a token count there
    collector = InMemoryCollector(model=model.base_model, cfg=cfg, processor=processor, data=data)
    batches = allocate_batches(data["length"][:], cfg.token_batch_size)
    CollectorComputer(model=model, data=data, collector=collector, batches=batches, cfg=cfg).run_with_collector_hooks(
        desc=f"gradients of {len(data)} sequences")
    return {name: (grads[0::2].float() - grads[1::2].float()) for name, grads in collector.gradients.items()}


def bergson_ranking(
    model: torch.nn.Module, tokenizer: Any, pairs: Sequence[PreferencePair], queries: Sequence[PreferencePair],
    settings: TokenizationSettings, work_dir: str | Path, *, projection_dim: int = 16, seed: int = 0,
    loss_reduction: str = "sum",
) -> BergsonResult:
    """Rank ``pairs`` by the mean cosine of their bergson features with the ``queries``' (module docstring).

    Args:
        model: M0, a transformers causal LM (not modified: the hooks go on a copy).
        tokenizer: its tokenizer.
        pairs, queries: training pairs and behaviour pairs.
        settings: their tokenisation.
        work_dir: bergson's scratch directory.
        projection_dim: bergson's per-module projection p (features of p² per module); 0 keeps the
            exact gradients (only for tiny models: one float per weight per pair).
        seed: the projection's seed.
        loss_reduction: "sum" or "mean" of the response tokens' cross-entropy.
    """
    from bergson import GradientProcessor, IndexConfig, Scorer
    from bergson.process_grads import normalize_and_aggregate_grads
    from bergson.score.score_writer import InMemorySequenceScoreWriter

    work = Path(work_dir)
    lm = copy.deepcopy(model)
    lm.eval()
    # bergson's own model set-up: no weight gradient is needed, the hooks see the layers'
    # inputs and output gradients; a trainable embedding carries the graph through the body.
    lm.requires_grad_(False)
    lm.get_input_embeddings().requires_grad_(True)
    processor = GradientProcessor(projection_dim=projection_dim or None, projection_type="rademacher",
                                  projection_seed=seed)
    seconds = {}
    features, kept = {}, {}
    tokens = 0
    for what, items in (("train", pairs), ("queries", queries)):
        start = time.perf_counter()
        kept[what], data, n_tokens = lm_examples(tokenizer, items, settings)
        if not kept[what]:
            raise ValueError(f"none of the {len(items)} {what} pairs could be encoded")
        cfg = IndexConfig(run_path=str(work / what), projection_dim=projection_dim, projection_seed=seed,
                          projection_type="rademacher", loss_reduction=loss_reduction,
                          token_batch_size=max(2048, max(data["length"][:])))
        features[what] = pair_features(lm, data, processor, cfg)
        tokens += n_tokens
        seconds[what] = time.perf_counter() - start
    start = time.perf_counter()
    modules = list(features["train"])
    # Mean of the unit query features · (pair feature / its norm) = the mean query cosine.
    target = normalize_and_aggregate_grads(features["queries"], modules, unit_normalize=True,
                                           device=torch.device("cpu"), aggregate_grads="mean")
    n = len(kept["train"])
    writer = InMemorySequenceScoreWriter(n, 1)
    scorer = Scorer(target, modules, writer, torch.device("cpu"), torch.float32, unit_normalize=True)
    scorer(list(range(n)), features["train"])
    ids = [pairs[i].pair_id for i in kept["train"]]
    ranking = Ranking.from_scores(ids, writer.scores[:, 0], "bergson")
    seconds["scoring"] = time.perf_counter() - start
    dim = sum(f.shape[1] for f in features["train"].values())
    return BergsonResult(ranking, len(kept["queries"]), dim, len(modules), tokens,
                         {k: round(v, 2) for k, v in seconds.items()})


def spearman(a: Ranking, b: Ranking) -> tuple[float, int]:
    """Spearman's ρ of the two rankings' scores over the pair ids both rank (average ranks for ties)."""
    from scipy.stats import spearmanr

    b_scores = dict(zip(b.pair_ids, b.scores))
    common = [pid for pid in a.pair_ids if pid in b_scores]
    a_scores = dict(zip(a.pair_ids, a.scores))
    if len(common) < 2:
        return float("nan"), len(common)
    rho = spearmanr([a_scores[p] for p in common], [b_scores[p] for p in common]).statistic
    return float(rho), len(common)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", default="default", choices=["default", "miniature"])
    parser.add_argument("--behavior", default=None, help="default: the organism's first planted behaviour")
    parser.add_argument("--projection-dim", type=int, default=16,
                        help="bergson's per-module projection p (p² features per layer); 0: exact gradients")
    parser.add_argument("--queries-from-planted", action="store_true",
                        help="smoke test only: the planted pairs themselves are the queries")
    parser.add_argument("--work", type=Path, default=None,
                        help="scratch directory (default: a fresh temporary one, removed at the end; "
                             "a reused one lets the gradient baseline reuse its warm-up and features)")
    parser.add_argument("--progress", action="store_true", help="the gradient baseline's progress bars on stderr")
    args = parser.parse_args()
    try:
        # bergson points the root logger at the stdout of the moment it is imported: make that
        # stderr, so that stdout holds only this script's figures.
        with contextlib.redirect_stdout(sys.stderr):
            import bergson
    except ImportError as err:
        sys.exit(f"{SETUP_HINT} ({err})")

    organism = build_organism(OrganismConfig.preset(args.preset, args.seed))
    torch.set_num_threads(organism.config.num_threads)  # the organism's own setting, for both methods
    behavior = args.behavior or organism.behaviors[0]
    inputs = organism_inputs(organism, behavior, with_bank=False, max_new_tokens=max_new_tokens_for(args.preset))
    planted = set(inputs.planted)
    if args.queries_from_planted:
        queries = [p for p in inputs.pairs if p.pair_id in planted]
        query_source = "planted pairs (smoke test: both rankings are told the answer)"
    else:
        queries = inputs.labelled.query_pairs()
        query_source = "behaviour pairs (M1 exhibiting ≻ M0 not exhibiting)"
    if not queries:
        sys.exit(f"no behaviour query pair for {behavior!r} (the organism does not show it in the judged answers); "
                 "for a smoke test pass --queries-from-planted")
    config = organism_gradient_config(organism)

    with tempfile.TemporaryDirectory(prefix="bergson-organism-") as tmp:
        work = args.work if args.work is not None else Path(tmp)
        start = time.perf_counter()
        ours = gradient_ranking(inputs.model, inputs.tokenizer, inputs.pairs, queries, config, work / "gradient",
                                progress=args.progress)
        ours_seconds = time.perf_counter() - start
        start = time.perf_counter()
        theirs = bergson_ranking(inputs.model, inputs.tokenizer, inputs.pairs, queries, config.dpo.settings,
                                 work / "bergson", projection_dim=args.projection_dim, seed=args.seed,
                                 loss_reduction="mean" if config.dpo.length_normalize else "sum")
        theirs_seconds = time.perf_counter() - start

    metrics = {"gradient": evaluate_ranking(ours.ranking, planted).as_dict(),
               "bergson": evaluate_ranking(theirs.ranking, planted).as_dict()}
    rho, n_common = spearman(ours.ranking, theirs.ranking)
    n = len(planted)
    overlap = len(set(ours.ranking.top(n)) & set(theirs.ranking.top(n)))
    seconds = {"gradient": round(ours_seconds, 2), "bergson": round(theirs_seconds, 2)}

    print(f"organism {args.preset} seed {args.seed}, behaviour {behavior}: {len(inputs.pairs)} pairs, {n} planted")
    print(f"queries: {len(queries)} {query_source}")
    print(f"bergson {bergson.__version__}: {theirs.modules} linear layers, {theirs.dim} features per pair "
          f"(projection_dim {args.projection_dim}), torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    print()
    print(f"{'method':<10} {'P@' + str(n):>7} {'AUROC':>7} {'seconds':>9}  stages")
    for name, stages in (("gradient", ours.seconds), ("bergson", theirs.seconds)):
        m = metrics[name]
        print(f"{name:<10} {m['precision_at_n']:>7.3f} {m['auroc']:>7.3f} {seconds[name]:>9.2f}  "
              + ", ".join(f"{k} {v}" for k, v in stages.items()))
    print()
    print(f"Spearman rho of the scores over {n_common} common pairs: {rho:.3f}")
    print(f"top-{n} overlap: {overlap}/{n}")
    print(json.dumps({
        "seed": args.seed, "preset": args.preset, "behavior": behavior, "pairs": len(inputs.pairs),
        "planted": n, "queries": len(queries), "queries_from_planted": args.queries_from_planted,
        "threads": torch.get_num_threads(), "bergson_version": bergson.__version__,
        "torch_version": torch.__version__, "projection_dim": args.projection_dim,
        "bergson_features": theirs.dim, "bergson_modules": theirs.modules,
        "metrics": metrics, "spearman": rho, "spearman_pairs": n_common,
        "top_n_overlap": overlap, "top_n_overlap_fraction": overlap / n,
        "seconds": seconds, "stages_seconds": {"gradient": ours.seconds, "bergson": theirs.seconds},
        "tokens": {"gradient": ours.n_tokens, "bergson": theirs.n_tokens},
    }))


if __name__ == "__main__":
    main()
