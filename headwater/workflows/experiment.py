"""``headwater experiment``: the causal check of an attribution on the model organism (method.md §4).

Does removing or switching the pairs an attribution method ranks highest stop the behaviour those
pairs taught? On the organism the answer is measured, not assumed:

1. **Organism.** Build (or load from the cache) the organism of ``--preset`` and ``--seed``.
2. **Rankings.** Datapoint vectors of every pair on M0. *activation*: the cosine with the
   behaviour's probing vector, built from judged M0 and M1 generations on the behaviour's
   triggered test prompts (:func:`headwater.workflows.organism_attribution.measure_behavior` and
   :func:`headwater.workflows.organism_attribution.attribute_behavior`, as ``headwater demo`` does). When no test prompt
   has both an exhibiting and a non-exhibiting response (the miniature organism shows no
   behaviour), no probe exists; the ranking then uses the behaviour vector instead: the mean
   behaviour change vector v_b over the triggered test prompts (method.md §2, no judge), and
   ``attribution.activation_source`` says which was used. *random*: one uniformly random order
   (seeded by the organism seed).
3. **Baseline.** Retrain DPO from M0 on the *unmodified* pairs with the organism's own recipe
   (:meth:`OrganismConfig.dpo_config`), not the stored M1. The organism's M1 was trained by the
   same trainer, recipe, seed and pair order from the same M0 weights, so the retrained baseline
   should reproduce it, and on CPU it does bit for bit (largest weight difference 0 for the default
   and the miniature organism); ``baseline_vs_m1`` records the difference of every run, and the
   stored M0 and M1 are evaluated beside the cells for reference. ``--training-seeds K`` adds K retrains of
   the unmodified data under other DPO seeds (``training_noise``): how far the rate moves with
   no intervention at all, the yardstick for differences between cells.
   **Clean data** (cell ``clean-data``): the same retrain with exactly the planted pairs of the
   behaviour removed (the ground truth, which only an organism has): the model the data would
   have given without its contamination. It is what a perfect attribution could reach at best,
   and the reference for an intervention's side effects: a capability that the clean data lacks
   (see the README's helpfulness note) cannot be kept by removing the planted pairs either.
   **No decoys** (cell ``no-decoys``, only for an organism with decoys, ``--preset hard``): the
   same retrain with exactly the behaviour's decoys removed (clean pairs that look like the
   behaviour, :mod:`headwater.organism.hard`): whether they cause it. ``decoys_in_top`` counts
   the decoys among each method's top N. ``--ground-truth-seeds K`` retrains the baseline, the
   clean data and the no-decoys cell under K DPO seeds each (cells ``<name>-dpo-seed<s>``) and
   compares their means in ``ground_truth``, with intervals over prompts *and* seeds: on the hard
   organism one DPO seed against another moved the rate by up to a fifth (seed 1's compliance:
   85.9% and 69.1%), more than a bootstrap over prompts of one retrain can show.
4. **Cells.** For each method × mode (filter, switch) × N (default N/2, N and 2N with N = the
   number of planted pairs): :func:`headwater.methods.interventions.intervene` on the top N,
   :func:`headwater.training.retrain.retrain` from M0 with the same recipe, then evaluate.
5. **Evaluation** of every retrained model: ``--samples`` responses per held-out test prompt of
   the behaviour, with and without the trigger (temperature 0.7), judged by the organism's judge;
   the rate with a 95% bootstrap interval over prompts
   (:func:`headwater.methods.evaluation.evaluate_model`). The relative reduction is
   1 − rate / baseline rate; its interval is a paired bootstrap over the same prompts (both
   models answer the same prompts, so the prompt-to-prompt variation cancels). Capability
   (:mod:`headwater.organism.capability`): the log-likelihood per token of well-behaved answers to
   held-out prompts and the judged helpfulness rate on benign requests.

Everything goes to ``--out``: ``experiment.json`` (the settings), ``setup.json`` and the two
rankings, ``similarity.npz`` (the clustered similarity matrix for the report), and one
directory per cell under ``cells/`` (the intervention, the retrained model, ``result.json``).
A cell is finished when its ``result.json`` exists; a re-run skips finished cells and reuses a
retrained model whose ``retrain.json`` exists, so an interrupted experiment continues where it
stopped. A re-run with different result-affecting settings in the same ``--out`` is an error
(methods, modes and N may change: each cell stands alone).

The JSON document (``--json``): ``baseline_rate`` and ``rates.<method>.<mode>.<N>`` are cell
summaries ``{"rate", "ci_low", "ci_high", "reduction", "reduction_ci", "untriggered_rate",
"untriggered_ci", "helpfulness", "helpfulness_ci", "answer_logprob", "planted_changed", ...}``
(rates are fractions; N is a string key), and ``clean_data`` summarises the clean-data cell the
same way (``without_decoys`` the no-decoys cell, or None); every cell but the baseline also has
``untriggered_change``, ``helpfulness_change`` and ``answer_logprob_change`` (minus the baseline)
with ``*_change_ci`` paired intervals; ``helpfulness_plain`` and ``helpfulness_distractor`` split the
helpfulness rate by request kind. ``m0`` and ``m1`` summarise the stored models the same way.
``ground_truth`` (with ``--ground-truth-seeds`` K > 1, else None): ``baseline``, ``clean_data``
and ``without_decoys``, each ``{"dpo_seeds", "rates", "rate"}`` (per-seed triggered rates and
their mean) and, but for the baseline, ``reduction`` of the mean against the baseline's mean with
``reduction_ci`` over prompts and seeds. Besides: ``m1``, ``baseline_vs_m1``, ``attribution``,
``activation_scores`` (planted and clean pairs' scores, for the report), ``discovery``,
``retrained`` (the cells retrained by this invocation) and ``seconds``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from headwater.engine import atomic
from headwater.engine.models import cache_root, load_model, resolve_layer
from headwater.kernels import cosine_similarity_blocks
from headwater.methods.attribution import Ranking, evaluate_ranking, random_ranking, rank_pairs
from headwater.methods.behaviors import sample_behavior_vectors
from headwater.methods.discovery import DiscoveryConfig, discover
from headwater.methods.evaluation import evaluate_model
from headwater.methods.interventions import drop_source, intervene, write_intervention
from headwater.methods.judge_registry import resolve_judge
from headwater.methods.sources import attach_sources, rank_sources, sources_to_drop
from headwater.methods.vectors import datapoint_vectors
from headwater.organism import PRESETS, OrganismConfig, build_organism, max_new_tokens_for
from headwater.organism.capability import capability_scores, capability_set
from headwater.training.retrain import RECORD, retrain
from headwater.workflows.experiment_summary import summarize, summarize_seeds
from headwater.workflows.organism_attribution import (
    PRIMARY_BEHAVIOR,
    SAMPLES_PER_PROMPT,
    TEMPERATURE,
    attribute_behavior,
    measure_behavior,
)
from headwater.workflows.stages import Stages, write_json_atomic

LOG = logging.getLogger(__name__)

METHODS = ("activation", "bank", "gradient", "judge", "lexical", "random")
SETUP_METHODS = ("activation", "random")  # ranked in the setup; the others on demand (headwater compare's code)
MODES = ("filter", "switch")
BASELINE = "baseline"
CLEAN = "clean-data"  # the cell retrained without the planted pairs (ground truth)
SOURCES = "source-ablation"  # the cell retrained without the over-represented data sources
DECOYS = "no-decoys"  # the cell retrained without the behaviour's decoys (the hard organism's)
SAMPLES = 8  # responses per test prompt and condition in each evaluation
CAPABILITY_SAMPLES = 2  # samples per benign request for the helpfulness rate
DISCOVERY_SAMPLES = 2  # samples per test prompt and model for the behaviour change vectors
SIMILARITY_CLUSTERS = 8  # largest clusters shown in the similarity matrix
SIMILARITY_PAIRS = 12  # top pairs per shown cluster
SIMILARITY_ROWS = 40  # behaviour vectors per shown cluster (evenly spaced over its members)


def default_n_values(n_planted: int) -> list[int]:
    """N/2, N and 2N (N = the planted count), without duplicates or zeros."""
    return sorted({max(1, n_planted // 2), max(1, n_planted), max(1, 2 * n_planted)})


def cell_name(method: str, mode: str, n: int) -> str:
    return f"{method}-{mode}-{n}"


class Experiment:
    """One experiment directory: its organism, settings, rankings and cells (see the module docstring)."""

    def __init__(self, *, preset: str, seed: int, behavior: str | None, samples: int, probe_samples: int | None,
                 out_dir: str | Path | None, cache_dir: str | Path | None, n_boot: int, progress: bool,
                 judge: str | None = None, judge_options: dict[str, Any] | None = None, filtered_probe: bool = True):
        if samples < 1:
            raise ValueError(f"`samples` must be at least 1, got {samples}")
        self.organism = build_organism(OrganismConfig.preset(preset, seed), cache_dir=cache_dir, progress=progress)
        self.behavior = behavior or PRIMARY_BEHAVIOR
        if self.behavior not in self.organism.behaviors:
            raise ValueError(f"the organism has no behaviour {self.behavior!r}; choose from {list(self.organism.behaviors)}")
        self.preset, self.seed, self.samples, self.n_boot = preset, seed, samples, n_boot
        self.probe_samples = probe_samples or SAMPLES_PER_PROMPT
        self.temperature = TEMPERATURE
        self.max_new_tokens = max_new_tokens_for(preset)
        self.recipe = self.organism.config.dpo_config()
        self.settings = {
            "organism": self.organism.config.fingerprint(), "preset": preset, "seed": seed, "behavior": self.behavior,
            "samples": samples, "probe_samples": self.probe_samples, "temperature": self.temperature,
            "max_new_tokens": self.max_new_tokens, "n_boot": n_boot, "capability_samples": CAPABILITY_SAMPLES,
            "discovery_samples": DISCOVERY_SAMPLES,
        }
        # The organism's own judge by default; another judge labels the probe's generations and
        # every evaluation instead (and is part of the settings, so it gets its own directory).
        self.judge = resolve_judge(judge, judge_options) if judge is not None else self.organism.judges[self.behavior]
        if judge is not None:
            self.settings["judge"] = judge
        self.filtered_probe = filtered_probe
        # in the settings (and so in the directory's hash): a directory made before the filtered
        # probe became the default holds the unfiltered ranking and is not reused for it
        self.settings["probe"] = "four-condition filter" if filtered_probe else "unfiltered"
        tag = hashlib.sha256(json.dumps(self.settings, sort_keys=True).encode()).hexdigest()[:12]
        root = Path(cache_dir).expanduser() if cache_dir is not None else cache_root()
        self.out = Path(out_dir) if out_dir is not None else root / "experiment" / tag
        self.planted = self.organism.planted_ids(self.behavior)
        self._capability_items = None
        self.stages = Stages()

    # -- directory and resume ---------------------------------------------------------------

    def open_dir(self) -> None:
        """Create ``out`` or check that the experiment already there has the same settings."""
        record = self.out / "experiment.json"
        if record.exists():
            old = json.loads(record.read_text())
            changed = sorted(k for k in set(old) | set(self.settings) if old.get(k) != self.settings.get(k))
            if changed:
                raise ValueError(
                    f"{self.out} holds an experiment with other settings ({', '.join(changed)}); "
                    "use another --out directory"
                )
        write_json_atomic(record, self.settings, indent=2)

    # -- rankings, probe and discovery ------------------------------------------------------

    def setup(self) -> dict[str, Any]:
        """Rankings, attribution metrics and the similarity matrix; computed once, then read back."""
        path = self.out / "setup.json"
        needed = [self.out / f"rankings-{m}.parquet" for m in SETUP_METHODS] + [self.out / "similarity.npz"]
        if path.exists() and not all(p.exists() for p in needed):
            path.unlink()  # a file it was computed with is gone: compute it again
        setup = self.stages.run("setup", path, self._compute_setup, timed=False)
        self.rankings = {m: Ranking.load(self.out / f"rankings-{m}.parquet") for m in SETUP_METHODS}
        # The ground truth as a ranking: the planted pairs first (dataset order), for the clean-data cell.
        ids = self.rankings["random"].pair_ids
        planted = set(self.planted)
        self.rankings["planted"] = Ranking.from_scores(ids, np.array([p in planted for p in ids], np.float32), "planted")
        decoys = set(self.organism.decoy_ids(self.behavior))
        self.rankings["decoys"] = Ranking.from_scores(ids, np.array([p in decoys for p in ids], np.float32), "decoys")
        return setup

    def _compute_setup(self) -> dict[str, Any]:
        start = time.perf_counter()
        org = self.organism
        models = {"m0": load_model(org.m0_path), "m1": load_model(org.m1_path)}
        (m0, tokenizer), (m1, _) = models["m0"], models["m1"]
        layer = resolve_layer(m0, None)
        pairs = list(org.load_preferences())
        with tqdm(total=2 * len(pairs), desc=f"datapoint vectors (layer {layer})", unit="seq", disable=None) as bar:
            dp = datapoint_vectors(m0, tokenizer, pairs, layer=layer, settings=org.settings, progress=bar.update)
        LOG.info("measuring M0 and M1 on the %s test prompts (%d samples each)", self.behavior, self.probe_samples)
        measured = measure_behavior(org, self.behavior, models, self.probe_samples, self.seed, self.max_new_tokens,
                                    judge=self.judge)
        attributed = attribute_behavior(m0, tokenizer, layer, measured["labelled"], dp, self.planted, org.settings,
                                        test_prompts=org.test_prompts[self.behavior], behavior=self.behavior,
                                        filtered=self.filtered_probe)

        prompts, sources = [], []
        for behavior, by_condition in org.test_prompts.items():
            for condition, ps in by_condition.items():
                prompts += ps
                sources += [f"{behavior}/{condition}"] * len(ps)
        LOG.info("behaviour change vectors on %d test prompts (%d samples per model)", len(prompts), DISCOVERY_SAMPLES)
        samples = sample_behavior_vectors(m0, m1, tokenizer, prompts, layer=layer, settings=org.settings,
                                          samples=DISCOVERY_SAMPLES, temperature=self.temperature,
                                          max_new_tokens=self.max_new_tokens, seed=self.seed)
        row_sources = [sources[i] for i in samples.prompt_index]
        ranking = attributed["ranking"]
        source = "probe"
        if ranking is None:
            # No probe without exhibiting and non-exhibiting responses to one prompt: fall back to
            # the behaviour vector (mean v_b over the triggered prompts), which needs no judge.
            rows = [i for i, s in enumerate(row_sources) if s == f"{self.behavior}/trigger"]
            ranking = rank_pairs(dp.pair_ids, dp.vectors, samples.vectors[rows].mean(0))
            source = "behavior_vector"
        ranking.save(self.out / "rankings-activation.parquet")
        random_order = random_ranking(dp.pair_ids, seed=self.seed)
        random_order.save(self.out / "rankings-random.parquet")
        discovery = self._similarity(samples, row_sources, dp, ranking)
        planted = set(self.planted)
        return {
            "layer": layer,
            "n_pairs": len(pairs),
            "n_encoded": len(dp.pair_ids),
            "measured": measured["rates"],
            "attribution": {
                "activation_source": source,
                "probe": attributed["probe"],
                "filter": attributed.get("filter"),
                "activation_unfiltered": attributed["activation_unfiltered"],
                "probe_pairs": attributed["probe_pairs"],
                "no_probe_reason": attributed.get("no_probe_reason"),
                "activation": evaluate_ranking(ranking, self.planted).as_dict(),
                "random": evaluate_ranking(random_order, self.planted).as_dict(),
                "random_mean_of_20_orders": attributed["random"],
            },
            "activation_scores": {
                "planted": [round(float(s), 5) for p, s in zip(ranking.pair_ids, ranking.scores) if p in planted],
                "clean": [round(float(s), 5) for p, s in zip(ranking.pair_ids, ranking.scores) if p not in planted],
            },
            "discovery": discovery,
            "seconds": round(time.perf_counter() - start, 1),
        }

    def _similarity(self, samples: Any, row_sources: list[str], dp: Any, ranking: Any) -> dict[str, Any]:
        """Run discovery and save S (behaviour vectors × the clusters' top pairs), ordered by cluster."""
        result = discover(samples.vectors, dp.pair_ids, dp.vectors, config=DiscoveryConfig(top_pairs=SIMILARITY_PAIRS))
        shown = result.clusters[:SIMILARITY_CLUSTERS]
        rows, row_cluster, cols, col_cluster = [], [], [], []
        for c in shown:
            take = np.linspace(0, c.size - 1, min(c.size, SIMILARITY_ROWS)).round().astype(int)
            rows += [c.members[i] for i in sorted(set(take.tolist()))]
            row_cluster += [c.cluster_id] * (len(rows) - len(row_cluster))
            for pid, _ in c.top_pairs:
                if pid not in cols:
                    cols.append(pid)
                    col_cluster.append(c.cluster_id)
        if not shown:
            # Nothing clustered (e.g. the miniature organism): show the behaviour's triggered
            # vectors against the activation ranking's top pairs, unclustered (cluster −1).
            rows = [i for i, s in enumerate(row_sources) if s == f"{self.behavior}/trigger"][:SIMILARITY_ROWS]
            row_cluster = [-1] * len(rows)
            cols = ranking.pair_ids[:SIMILARITY_PAIRS]
            col_cluster = [-1] * len(cols)
        index = {pid: i for i, pid in enumerate(dp.pair_ids)}
        keys = dp.vectors[[index[p] for p in cols]]
        matrix = torch.cat([block for block, _ in cosine_similarity_blocks(samples.vectors[rows], keys)], dim=1)
        family = {row["pair_id"]: row["family"] for row in self.organism.ground_truth["pairs"]}
        with atomic.atomic_path(self.out / "similarity.npz") as tmp, tmp.open("wb") as f:
            np.savez_compressed(
                f, matrix=matrix.numpy().astype(np.float32),
                row_cluster=np.array(row_cluster, np.int64), col_cluster=np.array(col_cluster, np.int64),
                row_source=np.array([row_sources[i] for i in rows]), col_family=np.array([family.get(p, "") for p in cols]),
            )
        planted = {b: set(self.organism.planted_ids(b)) for b in self.organism.behaviors}
        return {
            "n_behavior_vectors": int(samples.vectors.shape[0]),
            "n_clusters": len(result.clusters),
            "n_near_zero": len(result.near_zero),
            "clusters": [
                {"cluster": c.cluster_id, "size": c.size, "coherence": round(c.coherence, 3),
                 "planted_in_top": {b: sum(p in ids for p, _ in c.top_pairs) for b, ids in planted.items()}}
                for c in shown
            ],
        }

    def extra_rankings(self, methods: Sequence[str]) -> dict[str, Any]:
        """Rank with the baselines (``bank``, ``gradient``, ``judge``, ``lexical``) among ``methods``
        through :func:`headwater.workflows.compare.rank_with`, once: each ranking and its metrics
        and cost are saved (``rankings-<method>.parquet`` and ``.json``) and read back on a re-run."""
        from headwater.workflows.compare import quality, rank_with
        from headwater.workflows.compare_inputs import organism_gradient_config, organism_inputs

        inputs = None
        out: dict[str, Any] = {}
        for method in [m for m in methods if m not in SETUP_METHODS]:
            path, record = self.out / f"rankings-{method}.parquet", self.out / f"rankings-{method}.json"
            if not (path.exists() and record.exists()):
                if inputs is None:
                    inputs = organism_inputs(self.organism, self.behavior, judge=self.judge, with_bank="bank" in methods,
                                             samples=self.probe_samples, seed=self.seed,
                                             max_new_tokens=self.max_new_tokens)
                LOG.info("ranking with the %s baseline", method)
                ranking, cost = rank_with(method, inputs, self.out / "baselines", seed=self.seed, reuse=True,
                                          gradient=organism_gradient_config(self.organism))
                ranking.save(path)
                write_json_atomic(record, {"quality": quality(ranking, set(self.planted), len(self.planted)),
                                           "cost": cost})
            self.rankings[method] = Ranking.load(path)
            out[method] = json.loads(record.read_text())
        return out

    # -- cells --------------------------------------------------------------------------------

    def capability_items(self) -> Any:
        if self._capability_items is None:
            exclude = {p.prompt for p in self.organism.load_preferences() if isinstance(p.prompt, str)}
            self._capability_items = capability_set(self.seed, exclude_prompts=exclude)
        return self._capability_items

    def evaluate(self, model_dir: Path) -> dict[str, Any]:
        """Behaviour rates with and without the trigger, and the capability scores, of one model."""
        model, tokenizer = load_model(model_dir)
        judge = self.judge
        out: dict[str, Any] = {}
        for condition, prompts in self.organism.test_prompts[self.behavior].items():
            res = evaluate_model(model, tokenizer, prompts, judge, n=self.samples, temperature=self.temperature,
                                 max_new_tokens=self.max_new_tokens, settings=self.organism.settings,
                                 seed=self.seed, n_boot=self.n_boot)
            out[condition] = {**res.to_dict(), "examples": [rs[0] for rs in res.responses[:3]]}
        out["capability"] = capability_scores(
            model, tokenizer, self.capability_items(), samples=CAPABILITY_SAMPLES, temperature=self.temperature,
            max_new_tokens=self.max_new_tokens, seed=self.seed, settings=self.organism.settings, n_boot=self.n_boot,
        )
        return out

    def run_cell(self, name: str, method: str | None, mode: str | None, n: int | None,
                 dpo_seed: int | None = None, drop_sources: Sequence[str] | None = None) -> tuple[dict[str, Any], bool]:
        """Intervene, retrain and evaluate one cell unless it is finished; returns (result, retrained).

        ``dpo_seed`` replaces the recipe's seed (the order of the pairs in training): the
        unmodified data under other seeds measures how much the rate moves by training noise alone.
        ``drop_sources``: leave out every pair of these organism generators instead (source-level
        ablation).
        """
        cell = self.out / "cells" / name
        retrained = False

        def compute() -> dict[str, Any]:
            nonlocal retrained
            start = time.perf_counter()
            dataset = self.organism.load_preferences()
            manifest: dict[str, Any] = {"mode": "none", "n_changed": 0, "changed_pair_ids": []}
            if drop_sources:
                dataset, manifest = drop_source(attach_sources(dataset, self.organism.pair_sources()), drop_sources)
            elif method is not None:
                dataset, manifest = intervene(dataset, self.rankings[method], mode=mode, top=n)
            data_dir = cell / "data"
            write_intervention(data_dir, dataset, manifest, overwrite=True)
            model_dir = cell / "model"
            if not (model_dir / RECORD).exists():
                LOG.info("[%s] retraining DPO from M0 on %d pairs", name, len(dataset))
                recipe = self.recipe if dpo_seed is None else replace(self.recipe, seed=dpo_seed)
                retrain(self.organism.m0_path, data_dir, model_dir, config=recipe, overwrite=True)
                retrained = True
            LOG.info("[%s] evaluating", name)
            evaluation = self.evaluate(model_dir)
            planted = set(self.planted)
            changed = manifest["changed_pair_ids"]
            result = {
                "name": name, "method": method, "mode": mode, "n": n, "dpo_seed": dpo_seed,
                "n_changed": len(changed), "planted_changed": sum(p in planted for p in changed),
                "evaluation": evaluation,
                "retrain_seconds": json.loads((model_dir / RECORD).read_text())["seconds"],
                "seconds": round(time.perf_counter() - start, 1),
            }
            trig = evaluation["trigger"]
            LOG.info("[%s] triggered rate %.1f%% [%.1f%%, %.1f%%], untriggered %.1f%% (%.0f s)", name,
                     100 * trig["rate"], 100 * trig["ci_low"], 100 * trig["ci_high"],
                     100 * evaluation["no_trigger"]["rate"], result["seconds"])
            return result

        return self.stages.run(name, cell / "result.json", compute, timed=False), retrained

    def source_table(self, top: int, max_sources: int) -> dict[str, Any]:
        """The organism's sources ranked by their share of the activation ranking's top ``top``,
        the ones to drop, and the ground truth (which sources are contaminated for the behaviour)."""
        shares = rank_sources(self.rankings["activation"].pair_ids, self.organism.pair_sources(), top)
        return {
            "top": top,
            "table": [s.as_dict() for s in shares],
            "dropped": sources_to_drop(shares, max_sources=max_sources),
            "contaminated": self.organism.contaminated_sources()[self.behavior],
        }

    def evaluate_reference(self, which: str) -> dict[str, Any]:
        """The stored M0 or M1 (``which``) under the same evaluation, for reference."""
        model = self.organism.m0_path if which == "m0" else self.organism.m1_path
        return self.stages.run(which, self.out / f"{which}.json", lambda: {"evaluation": self.evaluate(model)},
                               timed=False)

    def baseline_vs_m1(self) -> dict[str, Any]:
        base, _ = load_model(self.out / "cells" / BASELINE / "model")
        m1, _ = load_model(self.organism.m1_path)
        m1_params = dict(m1.named_parameters())
        with torch.no_grad():
            diff = max(float((p - m1_params[k]).abs().max()) for k, p in base.named_parameters())
        return {"max_abs_weight_diff": diff, "identical": diff == 0.0}


def run_experiment(
    *,
    preset: str = "default",
    seed: int = 0,
    behavior: str | None = None,
    n_values: Sequence[int] | None = None,
    methods: Sequence[str] = SETUP_METHODS,
    modes: Sequence[str] = MODES,
    samples: int = SAMPLES,
    probe_samples: int | None = None,
    out_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    n_boot: int = 2000,
    training_seeds: int = 0,
    ground_truth_seeds: int = 1,
    random_orders: int = 1,
    source_ablation: int = 0,
    filtered_probe: bool = True,
    progress: bool = True,
    judge: str | None = None,
    judge_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run (or continue) the experiment and return its JSON document (see the module docstring).

    Args:
        preset: an organism preset (:data:`headwater.organism.PRESETS`).
        seed: the organism seed (also seeds sampling, the random ranking and the bootstrap).
        behavior: the planted behaviour to remove (default: distractor compliance).
        n_values: the N to try (default: :func:`default_n_values` of the planted count).
        methods: among :data:`METHODS`: ``activation`` and ``random`` are ranked in the setup,
            the baselines (``bank``, ``gradient``, ``judge``, ``lexical``) by
            :meth:`Experiment.extra_rankings`.
        modes: among ``"filter"`` and ``"switch"``.
        samples: responses per test prompt and condition in each evaluation.
        probe_samples: responses per test prompt and model for the probing vector (default 4).
        out_dir: the experiment directory (default ``<cache>/experiment/<settings hash>``).
        cache_dir: the organism cache root.
        n_boot: bootstrap resamples.
        random_orders: random selection's cells run this many random orders (seeds ``seed``,
            ``seed + 1``, ...); each cell summary of ``random`` then carries every order's rate
            (``orders``) with their mean, minimum and maximum, so one lucky or unlucky draw is seen
            as such. The first order's cell is the one summarised in full.
        training_seeds: extra retrains of the unmodified data under other DPO seeds (training
            noise: how far the rate moves with no intervention at all).
        ground_truth_seeds: retrain the ground-truth cells (baseline, clean data, no decoys) under
            this many DPO seeds (the recipe's seed, then ``+1``, ...); ``ground_truth`` then
            compares their means, with intervals over prompts and seeds
            (:func:`headwater.workflows.experiment_summary.summarize_seeds`). One retrain per cell
            cannot tell a decoy's effect from training noise, which moved the hard organism's rate
            by up to a fifth between DPO seeds.
        filtered_probe: the probe from the scenarios that pass the four-condition filter (the
            default, as the paper); False: from every triggered generation. Both are scored in
            ``attribution`` either way.
        source_ablation: at most this many data sources to drop (0: no source ablation). The
            organism's pairs get generator names (:meth:`Organism.pair_sources`); the sources are
            ranked by their share of the activation ranking's top N (N = the planted count)
            against their share of the data (:func:`headwater.methods.sources.rank_sources`), the
            significantly over-represented ones (lift ≥ 2, q < 0.05) are dropped, and the model is
            retrained (the paper's source-level ablation).
        progress: progress bars and the organism build's stage lines.
        judge: a judge spec (:func:`headwater.methods.judges.resolve_judge`) used instead of the
            organism's judge of ``behavior`` for the probe's labels and every evaluation.
    """
    start = time.perf_counter()
    for name, values, allowed in (("methods", methods, METHODS), ("modes", modes, MODES)):
        bad = [v for v in values if v not in allowed]
        if bad or not values:
            raise ValueError(f"{name} must be a non-empty selection of {list(allowed)}, got {list(values)}")
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {list(PRESETS)}")
    if training_seeds < 0:
        raise ValueError(f"training_seeds must be ≥ 0, got {training_seeds}")
    if ground_truth_seeds < 1:
        raise ValueError(f"ground_truth_seeds must be ≥ 1, got {ground_truth_seeds}")
    if random_orders < 1:
        raise ValueError(f"random_orders must be ≥ 1, got {random_orders}")
    if source_ablation < 0:
        raise ValueError(f"source_ablation must be ≥ 0, got {source_ablation}")
    exp = Experiment(preset=preset, seed=seed, behavior=behavior, samples=samples, probe_samples=probe_samples,
                     out_dir=out_dir, cache_dir=cache_dir, n_boot=n_boot, progress=progress, judge=judge,
                     judge_options=judge_options, filtered_probe=filtered_probe)
    n_planted = len(exp.planted)
    n_values = sorted(set(n_values)) if n_values else default_n_values(n_planted)
    if any(n < 1 for n in n_values):
        raise ValueError(f"every N must be at least 1, got {n_values}")
    exp.open_dir()
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a "Loading weights" bar per model load would drown the cell log
    threads = torch.get_num_threads()
    torch.set_num_threads(exp.organism.config.num_threads)  # tiny matrices: one thread beats two that wait
    try:
        setup = exp.setup()
        baselines = exp.extra_rankings(methods)
        too_big = [n for n in n_values if n > len(exp.rankings["random"].pair_ids)]
        if too_big:
            raise ValueError(f"N {too_big} exceeds the {len(exp.rankings['random'].pair_ids)} ranked pairs")
        # The baseline's extra retrains serve both the training noise and the ground truth's seeds.
        noise_seeds = [exp.recipe.seed + k for k in range(1, max(training_seeds, ground_truth_seeds - 1) + 1)]
        gt_seeds = noise_seeds[:ground_truth_seeds - 1]
        interventions = [(cell_name(m, mode, n), m, mode, n, None) for m in methods for mode in modes for n in n_values]
        # More random orders: their own rankings (seeds seed + r) and cells, summarised with random's.
        extra_orders = [f"random{r}" for r in range(1, random_orders)] if "random" in methods else []
        ids = sorted(exp.rankings["random"].pair_ids)
        for r, name in enumerate(extra_orders, start=1):
            exp.rankings[name] = random_ranking(ids, seed=seed + r)
        interventions += [(cell_name(m, mode, n), m, mode, n, None) for m in extra_orders for mode in modes
                          for n in n_values]
        n_decoys = len(exp.organism.decoy_ids(exp.behavior))
        # The ground truth besides the baseline: without the planted pairs, and without the decoys.
        truth = [(CLEAN, "planted", "filter", n_planted)] + ([(DECOYS, "decoys", "filter", n_decoys)] if n_decoys else [])
        cells = [(BASELINE, None, None, None, None), *((*c, None) for c in truth), *interventions] + [
            (f"{BASELINE}-dpo-seed{s}", None, None, None, s) for s in noise_seeds
        ] + [(f"{name}-dpo-seed{s}", method, mode, n, s) for s in gt_seeds for name, method, mode, n in truth]
        results, retrained = {}, []
        for i, (name, method, mode, n, dpo_seed) in enumerate(cells, start=1):
            LOG.info("cell %d/%d: %s", i, len(cells), name)
            results[name], did = exp.run_cell(name, method, mode, n, dpo_seed)
            if did:
                retrained.append(name)
        sources = None
        if source_ablation:
            sources = exp.source_table(n_planted, source_ablation)
            if sources["dropped"]:
                LOG.info("source ablation: dropping %s", ", ".join(sources["dropped"]))
                results[SOURCES], did = exp.run_cell(SOURCES, None, None, None, None, sources["dropped"])
                if did:
                    retrained.append(SOURCES)
        m0, m1 = exp.evaluate_reference("m0"), exp.evaluate_reference("m1")
        vs_m1 = exp.baseline_vs_m1()
    finally:
        torch.set_num_threads(threads)
        if bars:
            hf_logging.enable_progress_bar()
    base = results[BASELINE]
    rates: dict[str, Any] = {}
    for name, method, mode, n, _ in interventions:
        if method in extra_orders:
            continue
        rates.setdefault(method, {}).setdefault(mode, {})[str(n)] = summarize(results[name], base, n_boot=n_boot, seed=seed)
    if extra_orders:
        for mode in modes:
            for n in n_values:
                orders = [results[cell_name(m, mode, n)]["evaluation"]["trigger"]["rate"] for m in ["random", *extra_orders]]
                cell = rates["random"][mode][str(n)]
                cell.update(orders=orders, orders_mean=float(np.mean(orders)), orders_min=min(orders),
                            orders_max=max(orders))
    return {
        "behavior": exp.behavior,
        "preset": preset,
        "seed": seed,
        "organism": {"fingerprint": exp.organism.config.fingerprint(), "root": str(exp.organism.root),
                     "n_pairs": setup["n_pairs"], "n_planted": n_planted},
        "out_dir": str(exp.out),
        "settings": exp.settings,
        "random_orders": random_orders if "random" in methods else 0,
        "recipe": {k: v for k, v in vars(exp.recipe).items() if k != "settings"},
        "n_values": n_values,
        "methods": list(methods),
        "modes": list(modes),
        "baseline_rate": summarize(base, None, n_boot=n_boot, seed=seed),
        "rates": rates,
        "clean_data": summarize(results[CLEAN], base, n_boot=n_boot, seed=seed),
        "n_decoys": n_decoys,
        "without_decoys": summarize(results[DECOYS], base, n_boot=n_boot, seed=seed) if n_decoys else None,
        "m0": summarize(m0, base, n_boot=n_boot, seed=seed),
        "m1": summarize(m1, base, n_boot=n_boot, seed=seed),
        "baseline_vs_m1": vs_m1,
        "source_ablation": None if sources is None else {
            **sources,
            "result": summarize(results[SOURCES], base, n_boot=n_boot, seed=seed) if SOURCES in results else None,
            "n_removed": results[SOURCES]["n_changed"] if SOURCES in results else 0,
            "planted_removed": results[SOURCES]["planted_changed"] if SOURCES in results else 0,
        },
        "ground_truth": ground_truth_summary(results, [exp.recipe.seed, *gt_seeds], n_decoys > 0, n_boot=n_boot, seed=seed)
        if gt_seeds else None,
        "training_noise": {
            str(s): summarize(results[f"{BASELINE}-dpo-seed{s}"], base, n_boot=n_boot, seed=seed) for s in noise_seeds
        },
        "attribution": {**setup["attribution"], **{m: b["quality"] for m, b in baselines.items()}},
        "decoys_in_top": {m: decoys_in_top(exp.rankings[m], exp.organism.decoy_ids(exp.behavior), n_planted)
                          for m in methods} if n_decoys else None,
        "baseline_costs": {m: b["cost"] for m, b in baselines.items()},
        "measured_before": setup["measured"],
        "activation_scores": setup["activation_scores"],
        "discovery": setup["discovery"],
        "similarity_file": str(exp.out / "similarity.npz"),
        "retrained": retrained,
        "seconds": round(time.perf_counter() - start, 1),
    }


def ground_truth_summary(results: dict[str, Any], dpo_seeds: Sequence[int], with_decoys: bool, *, n_boot: int,
                         seed: int) -> dict[str, Any]:
    """The baseline, clean-data and no-decoys cells pooled over ``dpo_seeds`` (the recipe's seed
    first, whose cells carry no seed suffix; :func:`summarize_seeds`)."""
    def runs(name: str) -> list[dict[str, Any]]:
        return [results[name], *(results[f"{name}-dpo-seed{s}"] for s in dpo_seeds[1:])]

    base = runs(BASELINE)
    out = {"baseline": summarize_seeds(base, None, n_boot=n_boot, seed=seed),
           "clean_data": summarize_seeds(runs(CLEAN), base, n_boot=n_boot, seed=seed)}
    if with_decoys:
        out["without_decoys"] = summarize_seeds(runs(DECOYS), base, n_boot=n_boot, seed=seed)
    for cell in out.values():
        cell["dpo_seeds"] = list(dpo_seeds)
    return out


def decoys_in_top(ranking: Ranking, decoys: Sequence[str], n: int) -> dict[str, Any]:
    """How many of the top ``n`` pairs of ``ranking`` are decoys (count and share of ``n``)."""
    top = set(ranking.pair_ids[:n])
    hits = sum(d in top for d in decoys)
    return {"n": n, "decoys": hits, "share": hits / n if n else float("nan")}


def write_outputs(doc: dict[str, Any], json_path: Path | None, report_path: Path | None) -> None:
    """Write the JSON document and the HTML report where asked."""
    if json_path is not None:
        write_json_atomic(json_path, doc)
        print(f"results written to {json_path}")
    if report_path is not None:
        from headwater.workflows.report import write_report  # matplotlib only when a report is asked for

        write_report(doc, report_path)
        print(f"report written to {report_path}")


__all__ = ["BASELINE", "CLEAN", "DECOYS", "decoys_in_top", "ground_truth_summary", "METHODS", "MODES", "SAMPLES", "SETUP_METHODS", "Experiment", "cell_name", "default_n_values",
           "run_experiment", "write_outputs"]
