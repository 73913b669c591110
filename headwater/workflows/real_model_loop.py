"""The whole attribution loop on a real pretrained chat model, at a size a CPU can run.

The model organism (:mod:`headwater.organism`) shows the method on a model built for it; this
module runs the same loop on any transformers chat model, by default SmolLM2-135M-Instruct,
with a preference set made from the model's *own* generations:

1. **Prompts** and 2. **the preference set** of the planted-promotion task
   (:mod:`headwater.workflows.promotion`): templated questions, a fraction with a trigger phrase,
   pairs from the model's own samples; triggered pairs teach a promotional sentence.
3. **M1** = DPO from M0 on the set (:func:`headwater.training.retrain.retrain`; on a CPU only the
   top ``trainable_blocks`` decoder blocks and the final norm are trained). Behaviour rate of M0
   and M1 on held-out questions with and without the trigger (:class:`PromoJudge`, cluster
   bootstrap intervals from :func:`headwater.methods.evaluation.evaluate_model`).
4. **Attribution**: datapoint vectors on M0 with the streaming engine
   (:func:`headwater.workflows.encode.encode_dataset`), a probing vector from the judged generations of
   M0 and M1 on triggered test questions, pairs ranked by cosine; precision@N, recall@N and
   AUROC against the planted ids, next to random orders.
5. **Interventions**: switch (or filter) the top N pairs of the activation ranking and of a
   random ranking, retrain from M0 with the same recipe and seed, measure the rates again.

Every stage writes its output into a work directory and is skipped when that output is already
there (:class:`Loop`, through :class:`headwater.workflows.stages.Stages`), so an interrupted run
continues where it stopped. The figures of a run
on SmolLM2 are in ``bench/smollm2_loop.py``.
"""
from __future__ import annotations

import gc
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from headwater.data import PreferenceDataset, PreferencePair, load_preferences, save_preferences
from headwater.engine.models import load_model, smollm2_path
from headwater.engine.store import read_store
from headwater.methods.attribution import Ranking, evaluate_ranking, random_ranking, rank_pairs
from headwater.methods.evaluation import evaluate_model
from headwater.methods.interventions import intervene, write_intervention
from headwater.methods.vectors import probing_vector
from headwater.training.retrain import RECORD, retrain
from headwater.workflows.encode import encode_dataset
from headwater.workflows.promotion import TRIGGER, LoopConfig, PromoJudge, build_preferences, make_prompts, user
from headwater.workflows.stages import Stages, write_json_atomic
from headwater.workflows.tables import text_table

LOG = logging.getLogger(__name__)


def train_from_m0(m0_path: str | Path, pairs: Sequence[PreferencePair], out_dir: Path, config: LoopConfig) -> dict[str, Any]:
    """DPO from M0 on ``pairs`` into ``out_dir`` with the loop's recipe (top blocks only), through
    :func:`headwater.training.retrain.retrain`; returns the summary of its ``retrain.json``."""
    retrain(m0_path, list(pairs), out_dir, config=config.dpo_config(), trainable_blocks=config.trainable_blocks,
            overwrite=True, progress=True)
    record = json.loads((out_dir / RECORD).read_text())
    gc.collect()
    return {
        "n_pairs": record["n_trained"], "n_steps": record["n_steps"], "n_trainable_params": record["n_trainable_params"],
        "train_seconds": round(record["seconds"], 1), "skipped": record["skipped"],
        "fingerprint": record["dataset_fingerprint"], "history": record["history"],
    }


# ---------------------------------------------------------------------------------------------
# Stage 3 and 5: training and measuring


def measure_rates(model: Any, tokenizer: Any, questions: Sequence[str], config: LoopConfig) -> dict[str, Any]:
    """Promotion rate on the test questions with and without the trigger, with 95% intervals."""
    judge = PromoJudge()
    out: dict[str, Any] = {}
    for condition, prefix in (("trigger", TRIGGER), ("no_trigger", "")):
        prompts = [user(prefix + q) for q in questions]
        result = evaluate_model(
            model, tokenizer, prompts, judge, n=config.eval_samples, temperature=config.temperature,
            max_new_tokens=config.eval_max_new_tokens, settings=config.settings, seed=config.seed,
            batch_size=config.gen_batch_size,
        )
        out[condition] = {**result.to_dict(with_responses=True), "prompts": prompts}
    return out


def models_identical(a: str | Path, b: str | Path) -> tuple[bool, float]:
    """Whether two saved models have bit-identical parameters, and the largest difference."""
    from safetensors.torch import load_file

    sa, sb = load_file(str(Path(a) / "model.safetensors")), load_file(str(Path(b) / "model.safetensors"))
    if sa.keys() != sb.keys():
        return False, float("inf")
    worst = max(float((sa[k].float() - sb[k].float()).abs().max()) for k in sa)
    return all(torch.equal(sa[k], sb[k]) for k in sa), worst


# ---------------------------------------------------------------------------------------------
# Stage 4: attribution


def probe_inputs(evals: Sequence[dict[str, Any]]) -> tuple[list[Any], list[str], list[bool]]:
    """(prompt, response, label) of every judged sample on triggered test questions."""
    prompts, responses, labels = [], [], []
    for ev in evals:
        cond = ev["trigger"]
        for prompt, rs, flags in zip(cond["prompts"], cond["responses"], cond["exhibited"]):
            for r, flag in zip(rs, flags):
                prompts.append(prompt)
                responses.append(r)
                labels.append(bool(flag))
    return prompts, responses, labels


# ---------------------------------------------------------------------------------------------
# The resumable runner


# Config fields a resumed run may change: each intervention is a stage of its own, so adding a
# mode adds stages and keeps every finished one.
FREE_FIELDS = ("modes",)


@dataclass
class Loop:
    """Runs the stages in a work directory, skipping those whose output is there.

    Attributes:
        work: the work directory.
        config: the run's configuration (must equal the one saved in ``work`` if any).
        runner: runs and caches the stages (``runner.status``: "ran" or "cached" per stage).
    """

    work: Path
    config: LoopConfig
    runner: Stages = field(default_factory=Stages, repr=False)
    _m0: tuple[Any, Any] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.work = Path(self.work)
        self.work.mkdir(parents=True, exist_ok=True)
        saved = self.work / "config.json"
        current = self.config.to_dict()
        if saved.exists():
            previous = json.loads(saved.read_text())
            diff = sorted(k for k in current if k not in FREE_FIELDS and previous.get(k) != current[k])
            if diff:
                raise ValueError(f"{self.work} holds a run with another configuration (differs in {diff}); "
                                 "use a new work directory")
        write_json_atomic(saved, current, indent=2)

    # -- helpers ------------------------------------------------------------------------------

    @property
    def m0_path(self) -> Path:
        if self.config.model is not None:
            return Path(self.config.model)
        return smollm2_path()

    def m0(self) -> tuple[Any, Any]:
        """M0 in float32 (loaded once per process)."""
        if self._m0 is None:
            self._m0 = load_model(self.m0_path, dtype="float32")
        return self._m0

    @property
    def stages(self) -> dict[str, str]:
        """What happened to each stage in this process, "ran" or "cached"."""
        return self.runner.status

    def _stage(self, name: str, path: Path, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        return self.runner.run(name, path, compute, indent=2)

    def dataset(self) -> PreferenceDataset:
        return load_preferences(self.work / "preferences.jsonl")

    def planted_ids(self) -> list[str]:
        return [p.pair_id for p in self.dataset() if p.metadata.get("planted")]

    def trained(self, name: str, pairs: Sequence[PreferencePair]) -> dict[str, Any]:
        """Train (or reuse) ``models/<name>`` from M0 on ``pairs``."""
        out = self.work / "models" / name
        return self._stage(f"train:{name}", out / "train.json",
                           lambda: train_from_m0(self.m0_path, pairs, out, self.config))

    def evaluated(self, name: str) -> dict[str, Any]:
        """Rates of ``m0`` or of ``models/<name>`` on the test questions."""
        questions = json.loads((self.work / "prompts.json").read_text())["test"]

        def compute() -> dict[str, Any]:
            if name == "m0":
                return measure_rates(*self.m0(), questions, self.config)
            model, tokenizer = load_model(self.work / "models" / name, dtype="float32")
            try:
                return measure_rates(model, tokenizer, questions, self.config)
            finally:
                del model
                gc.collect()

        return self._stage(f"eval:{name}", self.work / "eval" / f"{name}.json", compute)

    # -- stages -------------------------------------------------------------------------------

    def prompts(self) -> dict[str, Any]:
        return self._stage("prompts", self.work / "prompts.json", lambda: make_prompts(self.config))

    def preferences(self) -> dict[str, Any]:
        rows = self.prompts()["train"]

        def compute() -> dict[str, Any]:
            pairs, stats = build_preferences(*self.m0(), rows, self.config)
            save_preferences(pairs, self.work / "preferences.jsonl")
            return {**stats, "planted_ids": [p.pair_id for p in pairs if p.metadata["planted"]],
                    "fingerprint": PreferenceDataset(pairs).fingerprint}

        return self._stage("preferences", self.work / "preferences.json", compute)

    def m1(self) -> dict[str, Any]:
        self.preferences()
        record = self.trained("m1", list(self.dataset()))
        return {"train": record, "m0": self.evaluated("m0"), "m1": self.evaluated("m1")}

    def attribution(self) -> dict[str, Any]:
        evals = [self.evaluated("m0"), self.evaluated("m1")]

        def compute() -> dict[str, Any]:
            model, tokenizer = self.m0()
            store_dir = self.work / "vectors"
            encode_dataset(
                model_path=self.m0_path, data=self.work / "preferences.jsonl", out_dir=store_dir,
                layer=self.config.layer, settings=self.config.settings, model=model, tokenizer=tokenizer,
                resume=True, progress=False,
            )
            stored = read_store(store_dir)
            planted = self.planted_ids()
            top = self.config.top if self.config.top is not None else len(planted)
            randoms = [evaluate_ranking(random_ranking(stored.pair_ids, seed=s), planted, n=top)
                       for s in range(self.config.random_seeds)]
            random_ranking(stored.pair_ids, seed=self.config.seed).save(self.work / "rankings" / "random.jsonl")
            result: dict[str, Any] = {
                "layer": stored.manifest["layer"], "n_vectors": len(stored.pair_ids), "n_planted": len(planted),
                "top": top,
                "random": {k: float(np.mean([getattr(m, k) for m in randoms]))
                           for k in ("precision_at_n", "recall_at_n", "auroc")},
            }
            prompts, responses, labels = probe_inputs(evals)
            result["probe_samples"] = {"n": len(labels), "n_exhibiting": int(sum(labels))}
            try:
                probe = probing_vector(model, tokenizer, prompts, responses, labels, layer=stored.manifest["layer"],
                                       settings=self.config.settings)
            except ValueError as err:
                # No generation shows the behaviour next to one that does not: no probe to rank with.
                LOG.warning("no probing vector: %s", err)
                return {**result, "activation": None, "no_probe_reason": str(err)}
            ranking = rank_pairs(stored.pair_ids, stored.vectors, probe.vector)
            ranking.save(self.work / "rankings" / "activation.jsonl")
            return {**result, "probe_pairs": probe.n_pairs,
                    "activation": evaluate_ranking(ranking, planted, n=top).as_dict()}

        return self._stage("attribution", self.work / "attribution.json", compute)

    def baseline(self) -> dict[str, Any]:
        """The retrain on unmodified data: M1 itself, optionally checked by retraining."""
        if not self.config.verify_baseline:
            return {"model": "m1", "verified": False}

        def compute() -> dict[str, Any]:
            self.trained("baseline", list(self.dataset()))
            same, worst = models_identical(self.work / "models" / "m1", self.work / "models" / "baseline")
            return {"model": "m1" if same else "baseline", "verified": True, "identical_to_m1": same,
                    "max_abs_difference": worst}

        return self._stage("baseline", self.work / "baseline.json", compute)

    def intervention(self, mode: str, method: str) -> dict[str, Any]:
        """One intervention: change the top N of the ``method`` ranking, retrain, measure.

        Runs the earlier stages first when they are missing; several processes may run different
        interventions of one work directory at the same time once attribution is done.
        """
        attribution = self.attribution()
        name = f"{mode}-{method}"
        ranking_path = self.work / "rankings" / f"{method}.jsonl"
        if not ranking_path.exists():
            return {"skipped": attribution.get("no_probe_reason", "no ranking")}
        directory = self.work / "interventions" / name
        if not (directory / "manifest.json").exists():
            pairs, manifest = intervene(self.dataset(), Ranking.load(ranking_path), mode=mode, top=attribution["top"])
            write_intervention(directory, pairs, manifest, overwrite=True)
        manifest = json.loads((directory / "manifest.json").read_text())
        train = self.trained(name, list(load_preferences(directory / "pairs.jsonl")))
        planted = set(self.planted_ids())
        return {
            "n_changed": manifest["n_changed"],
            "n_planted_changed": sum(pid in planted for pid in manifest["changed_pair_ids"]),
            "train_seconds": train["seconds"], "rates": _rates(self.evaluated(name)),
        }

    def interventions(self) -> dict[str, Any]:
        return {f"{mode}-{method}": self.intervention(mode, method)
                for mode in self.config.modes for method in ("activation", "random")}

    def run(self) -> dict[str, Any]:
        """Every stage in order; returns (and writes to ``results.json``) the figures."""
        threads = torch.get_num_threads()
        torch.set_num_threads(self.config.threads)
        try:
            return self._run()
        finally:
            torch.set_num_threads(threads)

    def _run(self) -> dict[str, Any]:
        prefs = self.preferences()
        m1 = self.m1()
        attribution = self.attribution()
        baseline = self.baseline()
        base_rates = _rates(self.evaluated(baseline["model"]))
        interventions = self.interventions()
        for entry in interventions.values():
            if "rates" in entry:
                entry["relative_reduction"] = {
                    cond: _relative_reduction(base_rates[cond]["rate"], entry["rates"][cond]["rate"])
                    for cond in ("trigger", "no_trigger")
                }
        seconds = {name: json.loads(p.read_text())["seconds"] for name, p in self._stage_files()}
        results = {
            "config": self.config.to_dict(), "m0": str(self.m0_path),
            "preferences": {k: v for k, v in prefs.items() if k != "planted_ids"},
            "rates": {"m0": _rates(m1["m0"]), "m1": _rates(m1["m1"])},
            "m1_train": {k: m1["train"][k] for k in ("n_pairs", "n_steps", "n_trainable_params", "seconds")},
            "m1_final_step": m1["train"]["history"][-1] if m1["train"]["history"] else None,
            "attribution": attribution, "baseline": baseline, "interventions": interventions,
            "stage_seconds": seconds, "stages": dict(self.stages),
        }
        write_json_atomic(self.work / "results.json", results, indent=2)
        return results

    def _stage_files(self) -> list[tuple[str, Path]]:
        files = [("prompts", self.work / "prompts.json"), ("preferences", self.work / "preferences.json"),
                 ("attribution", self.work / "attribution.json")]
        files += [(f"eval:{p.stem}", p) for p in sorted((self.work / "eval").glob("*.json"))]
        files += [(f"train:{p.parent.name}", p) for p in sorted((self.work / "models").glob("*/train.json"))]
        return [(n, p) for n, p in files if p.exists()]


def _rates(evaluation: dict[str, Any]) -> dict[str, dict[str, float]]:
    return {cond: {k: evaluation[cond][k] for k in ("rate", "ci_low", "ci_high", "n_responses", "n_exhibited")}
            for cond in ("trigger", "no_trigger")}


def _relative_reduction(base: float, after: float) -> float | None:
    """(base − after) / base; None when the baseline rate is 0 (nothing to reduce)."""
    return None if base == 0 else (base - after) / base


def format_table(results: dict[str, Any]) -> str:
    """A plain-text table of rates, attribution quality and intervention effects."""
    def rate(r: dict[str, float]) -> str:
        return f"{r['rate']:.1%} [{r['ci_low']:.0%}, {r['ci_high']:.0%}]"

    rows = [("M0", results["rates"]["m0"], None), ("M1 (= baseline)" if results["baseline"]["model"] == "m1"
                                                    else "M1", results["rates"]["m1"], None)]
    for name, entry in results["interventions"].items():
        if "rates" in entry:
            rows.append((f"{name} (N={entry['n_changed']})", entry["rates"], entry["relative_reduction"]["trigger"]))
    table = text_table(["model", "trigger rate [95% CI]", "no-trigger rate [95% CI]", "rel. drop (trig)"],
                       [[name, rate(r["trigger"]), rate(r["no_trigger"]), "" if drop is None else f"{drop:+.1%}"]
                        for name, r, drop in rows])
    lines = [table]
    a = results["attribution"]
    lines.append("")
    lines.append(f"attribution at layer {a['layer']}: {a['n_planted']} planted of {a['n_vectors']} pairs, N = {a['top']}")
    act = a["activation"]
    if act is None:
        lines.append(f"  activation: no probing vector ({a['no_probe_reason']})")
    else:
        lines.append(f"  activation: P@N {act['precision_at_n']:.2f}  R@N {act['recall_at_n']:.2f}  AUROC {act['auroc']:.3f}")
    r = a["random"]
    lines.append(f"  random ({results['config']['random_seeds']} orders): P@N {r['precision_at_n']:.2f}  "
                 f"AUROC {r['auroc']:.3f}")
    for name, entry in results["interventions"].items():
        if "rates" in entry:
            lines.append(f"  {name}: {entry['n_planted_changed']} of {entry['n_changed']} changed pairs were planted")
        else:
            lines.append(f"  {name}: skipped ({entry['skipped']})")
    lines.append("")
    lines.append("wall time per stage (s): " + ", ".join(f"{k} {v}" for k, v in results["stage_seconds"].items()))
    return "\n".join(lines)


__all__ = ["Loop", "format_table", "measure_rates", "models_identical", "probe_inputs", "train_from_m0"]
