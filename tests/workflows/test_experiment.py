"""`headwater experiment` on the miniature organism: real retrains, resume, the JSON document; capability."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from headwater.cli import main
from headwater.methods.evaluation import paired_bootstrap_ci, seeded_bootstrap_ci
from headwater.workflows.experiment import default_n_values, run_experiment

CELL_KEYS = ("rate", "ci_low", "ci_high", "untriggered_rate", "untriggered_ci", "helpfulness", "helpfulness_ci",
             "answer_logprob", "n_changed", "planted_changed", "helpfulness_plain", "helpfulness_distractor")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, cache):
    out = tmp_path_factory.mktemp("experiment")
    doc = run_experiment(preset="miniature", n_values=[6], modes=["switch"], samples=1, out_dir=out,
                         cache_dir=cache, n_boot=200, progress=False)
    return out, doc


def _mtimes(out):
    return {p.relative_to(out): p.stat().st_mtime_ns for p in (out / "cells").rglob("*") if p.is_file()}


@pytest.mark.slow
def test_document_has_rates_with_intervals_and_reductions(first_run):
    out, doc = first_run
    assert doc["retrained"] == ["baseline", "clean-data", "activation-switch-6", "random-switch-6"]
    base = doc["baseline_rate"]
    assert 0.0 <= base["ci_low"] <= base["rate"] <= base["ci_high"] <= 1.0
    for method in ("activation", "random"):
        cell = doc["rates"][method]["switch"]["6"]
        for key in CELL_KEYS:
            assert key in cell, key
        assert 0.0 <= cell["ci_low"] <= cell["rate"] <= cell["ci_high"] <= 1.0
        assert cell["n_changed"] == 6 and 0 <= cell["planted_changed"] <= 6
        assert "reduction" in cell and len(cell["reduction_ci"]) == 2
        assert cell["answer_logprob"] < 0
        for name in ("untriggered", "helpfulness", "answer_logprob"):
            low, high = cell[f"{name}_change_ci"]
            assert low <= cell[f"{name}_change"] + 1e-9 and cell[f"{name}_change"] <= high + 1e-9, name
    # The clean-data cell removes exactly the planted pairs.
    clean = doc["clean_data"]
    assert clean["n_changed"] == clean["planted_changed"] == doc["organism"]["n_planted"]
    assert set(CELL_KEYS) <= set(clean) and "reduction" in clean
    # The rankings saved with the experiment decide which pairs each cell changed.
    manifest = json.loads((out / "cells" / "activation-switch-6" / "data" / "manifest.json").read_text())
    from headwater.methods.attribution import Ranking

    assert manifest["changed_pair_ids"] == Ranking.load(out / "rankings-activation.parquet").pair_ids[:6]
    assert doc["attribution"]["activation_source"] in ("probe", "behavior_vector")
    planted, clean = doc["activation_scores"]["planted"], doc["activation_scores"]["clean"]
    assert len(planted) == doc["organism"]["n_planted"] and len(planted) + len(clean) == doc["organism"]["n_pairs"]
    for reference in ("m0", "m1"):
        assert set(CELL_KEYS) <= set(doc[reference])
    # The retrain on unmodified data uses the organism's own recipe, so it reproduces its M1.
    assert doc["baseline_vs_m1"]["max_abs_weight_diff"] < 1e-5


@pytest.mark.slow
def test_rerun_skips_finished_cells_and_continues_interrupted_ones(first_run, cache):
    out, doc = first_run
    before = _mtimes(out)
    again = run_experiment(preset="miniature", n_values=[6], modes=["switch"], samples=1, out_dir=out,
                           cache_dir=cache, n_boot=200, progress=False)
    assert again["retrained"] == []
    assert _mtimes(out) == before
    assert again["rates"] == doc["rates"] and again["baseline_rate"] == doc["baseline_rate"]

    # An interruption after the retrain but before the evaluation: the model is reused, not retrained.
    (out / "cells" / "random-switch-6" / "result.json").unlink()
    model_file = next((out / "cells" / "random-switch-6" / "model").glob("*.safetensors"))
    stamp = model_file.stat().st_mtime_ns
    resumed = run_experiment(preset="miniature", n_values=[6], modes=["switch"], samples=1, out_dir=out,
                             cache_dir=cache, n_boot=200, progress=False)
    assert resumed["retrained"] == [] and model_file.stat().st_mtime_ns == stamp
    assert resumed["rates"]["random"]["switch"]["6"] == doc["rates"]["random"]["switch"]["6"]

    # A new mode adds cells; the finished ones stay.
    # A new mode and a training-noise retrain add cells; the finished ones stay.
    more = run_experiment(preset="miniature", n_values=[6], modes=["filter", "switch"], methods=["random"],
                          samples=1, out_dir=out, cache_dir=cache, n_boot=200, training_seeds=1, progress=False,
                          source_ablation=2)
    sources = more["source_ablation"]
    assert sources["top"] == more["organism"]["n_planted"] and len(sources["contaminated"]) == 2
    assert sum(row["n_pairs"] for row in sources["table"]) == more["organism"]["n_pairs"]
    assert sum(row["n_top"] for row in sources["table"]) == sources["top"]
    expected = ["random-filter-6", "baseline-dpo-seed1"] + (["source-ablation"] if sources["dropped"] else [])
    assert more["retrained"] == expected
    if sources["dropped"]:
        assert sources["n_removed"] > 0 and 0.0 <= sources["result"]["rate"] <= 1.0
    assert set(more["rates"]["random"]) == {"filter", "switch"}
    noise = more["training_noise"]["1"]
    assert 0.0 <= noise["rate"] <= 1.0 and noise["n_changed"] == 0
    record = json.loads((out / "cells" / "baseline-dpo-seed1" / "model" / "retrain.json").read_text())
    assert record["config"]["seed"] == 1


@pytest.mark.slow
def test_other_settings_in_the_same_directory_are_refused(first_run, cache):
    out, _ = first_run
    with pytest.raises(ValueError, match="samples"):
        run_experiment(preset="miniature", n_values=[6], modes=["switch"], samples=2, out_dir=out,
                       cache_dir=cache, n_boot=200, progress=False)


@pytest.mark.slow
def test_cli_prints_the_table_and_writes_json(first_run, cache, tmp_path, capsys):
    out, doc = first_run
    path = tmp_path / "exp.json"
    assert main(["experiment", "--preset", "miniature", "--n", "6", "--modes", "switch", "--samples", "1",
                 "--n-boot", "200", "--out", str(out), "--cache-dir", str(cache), "--json", str(path)]) == 0
    written = json.loads(path.read_text())
    assert written["rates"]["activation"]["switch"]["6"]["rate"] == doc["rates"]["activation"]["switch"]["6"]["rate"]
    assert isinstance(written["baseline_rate"]["rate"], float)
    printed = capsys.readouterr().out
    assert "baseline (retrained)" in printed and "activation switch N=6" in printed


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(ValueError, match="modes"):
        run_experiment(preset="miniature", modes=["delete"], out_dir=tmp_path)
    with pytest.raises(ValueError, match="preset"):
        run_experiment(preset="huge", out_dir=tmp_path)
    with pytest.raises(ValueError, match="training_seeds"):
        run_experiment(preset="miniature", training_seeds=-1, out_dir=tmp_path)
    with pytest.raises(ValueError, match="source_ablation"):
        run_experiment(preset="miniature", source_ablation=-1, out_dir=tmp_path)


def test_default_n_values():
    assert default_n_values(120) == [60, 120, 240]
    assert default_n_values(1) == [1, 2]


def test_paired_bootstrap_ci():
    base = np.array([1.0, 0.5, 0.0, 1.0])
    assert paired_bootstrap_ci(base, base, n_boot=500) == (0.0, 0.0)
    assert paired_bootstrap_ci(base, np.zeros(4), n_boot=500) == (1.0, 1.0)
    low, high = paired_bootstrap_ci(base, base / 2, n_boot=500)
    assert low == pytest.approx(0.5) and high == pytest.approx(0.5)
    assert all(math.isnan(x) for x in paired_bootstrap_ci(np.zeros(3), np.ones(3), n_boot=50))
    # A constant shift is the difference, whatever the resample; weights enter both means alike.
    low, high = paired_bootstrap_ci(base, base - 0.25, statistic="difference", weights=[1, 2, 3, 4], n_boot=200)
    assert low == pytest.approx(-0.25) and high == pytest.approx(-0.25)
    # Noisy units: the interval brackets the observed difference.
    rng = np.random.default_rng(0)
    b = rng.random(50)
    low, high = paired_bootstrap_ci(b, b + rng.normal(0.1, 0.05, 50), statistic="difference", n_boot=500)
    assert low < 0.1 < high and high - low < 0.1
    with pytest.raises(ValueError, match="equal"):
        paired_bootstrap_ci([1.0, 0.0], [1.0], n_boot=10)
    with pytest.raises(ValueError, match="statistic"):
        paired_bootstrap_ci([1.0], [1.0], statistic="ratio")


def test_seeded_bootstrap_ci_resamples_prompts_and_seeds():
    # Identical models on both sides: no change whatever is resampled.
    base = np.array([[1.0, 0.5, 0.0, 1.0]] * 3)
    assert seeded_bootstrap_ci(base, base, n_boot=300) == (0.0, 0.0)
    assert seeded_bootstrap_ci(base, base[:2] / 2, n_boot=300) == pytest.approx((0.5, 0.5))
    assert all(math.isnan(x) for x in seeded_bootstrap_ci(np.zeros((2, 3)), np.ones((2, 3)), n_boot=50))
    # Against an explicit loop drawing the same random numbers in the same order.
    rng = np.random.default_rng(1)
    b, c = rng.random((3, 20)), rng.random((2, 20))
    low, high = seeded_bootstrap_ci(b, c, n_boot=400, seed=7)
    draw = np.random.default_rng(7)
    prompts = draw.integers(0, 20, size=(400, 20))
    sb, sc = draw.integers(0, 3, size=(400, 3)), draw.integers(0, 2, size=(400, 2))
    values = [1 - np.mean([c[k, prompts[i]].mean() for k in sc[i]]) / np.mean([b[k, prompts[i]].mean() for k in sb[i]])
              for i in range(400)]
    assert (low, high) == pytest.approx(tuple(np.quantile(values, [0.025, 0.975])))
    # Training noise: two seeds per side whose rates differ by a whole-model shift. The paired
    # bootstrap over prompts of one seed each sees a sure change; over seeds it is not sure.
    p = rng.random(64) * 0.5
    base2, cell2 = np.stack([p + 0.3, p + 0.1]), np.stack([p + 0.25, p + 0.05])
    one = paired_bootstrap_ci(base2[0], cell2[1], n_boot=500)
    both = seeded_bootstrap_ci(base2, cell2, n_boot=500)
    assert one[0] > 0 and both[0] < 0 < both[1]
    with pytest.raises(ValueError, match="same prompts"):
        seeded_bootstrap_ci(np.ones((2, 3)), np.ones((2, 4)), n_boot=10)
    with pytest.raises(ValueError, match="same prompts"):
        seeded_bootstrap_ci(np.ones(3), np.ones(3), n_boot=10)


def test_capability_items_are_held_out_and_deterministic():
    from headwater.organism import dataset as organism_data
    from headwater.organism.capability import ANSWER_FAMILIES, capability_set
    from headwater.organism.world import WorldSplit

    items = capability_set(0, n_answers=30, n_benign=10)
    assert items == capability_set(0, n_answers=30, n_benign=10)
    assert {f for f, _, _ in items.answers} == set(ANSWER_FAMILIES)
    assert len(items.benign_prompts) == 10 and len(set(items.benign_prompts)) == 10
    train_prompts = {r.pair.prompt for r in organism_data.preference_pairs(WorldSplit.from_seed(0), 400, {}, 0)}
    assert not {p for _, p, _ in items.answers} & train_prompts
    excluded = capability_set(0, n_answers=3, n_benign=10, exclude_prompts=items.benign_prompts[:5])
    assert not set(excluded.benign_prompts) & set(items.benign_prompts[:5])
    with pytest.raises(ValueError, match="at least 1"):
        capability_set(0, n_answers=0)


def test_answer_logprob_overall_and_per_family(tiny_llama, tiny_tokenizer):
    from headwater.organism.capability import answer_logprob

    items = [("a", "Q: hello\n", "A: hi there"), ("b", "Q: bye\n", "A: see you")]
    scores = answer_logprob(tiny_llama, tiny_tokenizer, items)
    assert set(scores["by_family"]) == {"a", "b"} and scores["n_items"] == 2
    assert scores["mean"] < 0 and math.isfinite(scores["mean"])
    one = answer_logprob(tiny_llama, tiny_tokenizer, items[:1])
    assert one["mean"] == pytest.approx(scores["by_family"]["a"], rel=1e-5)


def test_baseline_methods_rank_once_and_get_their_own_cells(first_run, cache):
    """--methods judge: the judge baseline ranks through compare's code, its ranking, metrics and
    cost are saved and read back on a re-run, and its cells sit next to the others."""
    out, doc = first_run
    run = dict(preset="miniature", n_values=[6], modes=["switch"], samples=1, out_dir=out, cache_dir=cache,
               n_boot=200, progress=False)
    with_judge = run_experiment(methods=["judge"], **run)
    assert with_judge["retrained"] == ["judge-switch-6"]
    quality = with_judge["attribution"]["judge"]
    assert quality["n"] == doc["organism"]["n_planted"] and 0 <= quality["precision_ci"][0] <= quality["precision_at_n"]
    assert with_judge["baseline_costs"]["judge"]["judged_responses"] == 2 * doc["organism"]["n_pairs"]
    ranking_file = out / "rankings-judge.parquet"
    stamp = ranking_file.stat().st_mtime_ns
    again = run_experiment(methods=["judge"], **run)
    assert again["retrained"] == [] and ranking_file.stat().st_mtime_ns == stamp
    assert again["rates"]["judge"] == with_judge["rates"]["judge"]


def test_random_selection_over_several_orders(first_run, cache):
    """--random-orders 3: two more random orders get their own cells; the random cell summary lists
    every order's rate with their mean and range, and the table prints them."""
    from headwater.workflows.experiment_summary import format_table

    out, _ = first_run
    doc = run_experiment(preset="miniature", n_values=[6], modes=["switch"], methods=["random"], samples=1,
                         out_dir=out, cache_dir=cache, n_boot=200, random_orders=3, progress=False)
    assert sorted(doc["retrained"]) == ["random1-switch-6", "random2-switch-6"]
    cell = doc["rates"]["random"]["switch"]["6"]
    assert len(cell["orders"]) == 3 and cell["orders"][0] == cell["rate"]
    assert cell["orders_min"] <= cell["orders_mean"] <= cell["orders_max"]
    assert set(doc["rates"]) == {"random"} and doc["random_orders"] == 3
    assert "random switch N=6 over 3 orders" in format_table(doc)
    with pytest.raises(ValueError, match="random_orders"):
        run_experiment(preset="miniature", random_orders=0, out_dir=out, cache_dir=cache, progress=False)


def test_hard_world_retrains_without_its_decoys(tmp_path, cache):
    """On the hard world the experiment adds the ground-truth cell without the decoys, and counts
    the decoys among each method's top N; the table prints both."""
    from headwater.organism import OrganismConfig, build_organism
    from headwater.workflows.experiment_summary import format_table

    organism = build_organism(OrganismConfig.preset("hard-miniature"), cache_dir=cache, progress=False)
    decoys = organism.decoy_ids("distractor_compliance")
    assert decoys and set(decoys).isdisjoint(organism.planted_ids("distractor_compliance"))
    doc = run_experiment(preset="hard-miniature", n_values=[6], modes=["filter"], methods=["random"], samples=1,
                         out_dir=tmp_path, cache_dir=cache, n_boot=100, progress=False, ground_truth_seeds=2)
    assert doc["n_decoys"] == len(decoys)
    # Every ground-truth cell retrained under a second DPO seed and pooled with the first.
    gt = doc["ground_truth"]
    assert set(gt) == {"baseline", "clean_data", "without_decoys"}
    for key, name in (("baseline", "baseline"), ("clean_data", "clean-data"), ("without_decoys", "no-decoys")):
        second = json.loads((tmp_path / "cells" / f"{name}-dpo-seed1" / "result.json").read_text())
        assert second["dpo_seed"] == 1
        assert gt[key]["dpo_seeds"] == [0, 1] and len(gt[key]["rates"]) == 2
        assert gt[key]["rate"] == pytest.approx(np.mean(gt[key]["rates"]))
    assert doc["training_noise"].keys() == {"1"}  # the baseline's second seed is the training-noise retrain too
    assert set(CELL_KEYS) <= set(doc["without_decoys"])
    assert doc["without_decoys"]["n_changed"] == len(decoys) and doc["without_decoys"]["planted_changed"] == 0
    manifest = json.loads((tmp_path / "cells" / "no-decoys" / "data" / "manifest.json").read_text())
    assert sorted(manifest["changed_pair_ids"]) == sorted(decoys)
    top = doc["decoys_in_top"]["random"]
    assert top["n"] == len(organism.planted_ids("distractor_compliance")) and 0 <= top["decoys"] <= top["n"]
    text = format_table(doc)
    assert f"no decoys ({len(decoys)} removed)" in text and "decoys among the top" in text
    assert "ground truth over 2 DPO seeds" in text and "without the decoys: mean" in text
    from headwater.workflows.report import render_report

    page = render_report(doc)
    assert "<h2>Ground truth over 2 DPO seeds" in page and "without the planted pairs: mean" in page
