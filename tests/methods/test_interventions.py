"""Interventions on real preference files: filter, switch, reweight, drop by source, the CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest

from headwater.methods.attribution import Ranking
from headwater.data import load_preferences, make_pair, pair_id, save_preferences
from headwater.methods.interventions import drop_source, intervene, write_intervention
from headwater.cli import build_parser


@pytest.fixture()
def dataset(tmp_path):
    pairs = [
        make_pair(f"Question {i}?", f" good {i}", f" bad {i}", metadata={"source": "web" if i % 2 else "books"})
        for i in range(6)
    ]
    path = save_preferences(pairs, tmp_path / "prefs.jsonl")
    return load_preferences(path)


@pytest.fixture()
def ranking(dataset):
    # Pair 4 first, then 1, then the others.
    scores = np.array([0.1, 0.8, 0.2, 0.3, 0.9, 0.0], np.float32)
    return Ranking.from_scores(dataset.ids, scores)


def test_filter_drops_the_top_n(dataset, ranking):
    out, manifest = intervene(dataset, ranking, mode="filter", top=2)
    assert out.ids == [dataset.ids[i] for i in (0, 2, 3, 5)]
    assert manifest["changed_pair_ids"] == [dataset.ids[4], dataset.ids[1]]
    assert manifest["n_input"] == 6 and manifest["n_output"] == 4 and manifest["n_changed"] == 2


def test_switch_swaps_and_traces_back(dataset, ranking):
    out, manifest = intervene(dataset, ranking, mode="switch", top=2)
    assert len(out) == 6
    switched = out[4]
    original = dataset[4]
    assert (switched.chosen, switched.rejected) == (original.rejected, original.chosen)
    assert switched.pair_id == pair_id(original.prompt, original.rejected, original.chosen) != original.pair_id
    assert switched.metadata["switched_from"] == original.pair_id
    assert manifest["switched"] == {original.pair_id: switched.pair_id, dataset.ids[1]: out.ids[1]}
    assert out[0] == dataset[0]


def test_switch_gives_a_repeat_suffix_when_the_swapped_pair_exists(tmp_path):
    a = make_pair("Q?", " yes", " no")
    b = make_pair("Q?", " no", " yes")  # already the switched version of a
    ds = load_preferences(save_preferences([a, b], tmp_path / "d.jsonl"))
    out, manifest = intervene(ds, Ranking.from_scores(ds.ids, np.array([1.0, 0.0])), mode="switch", top=1)
    assert out.ids == [b.pair_id + "#1", b.pair_id]


def test_reweight_keeps_every_pair(dataset, ranking):
    out, manifest = intervene(dataset, ranking, mode="reweight", top=1, weight=0.25)
    assert out.ids == dataset.ids
    assert [p.metadata["weight"] for p in out] == [1.0, 1.0, 1.0, 1.0, 0.25, 1.0]
    assert manifest["weight"] == 0.25


def test_top_zero_changes_nothing(dataset, ranking):
    out, manifest = intervene(dataset, ranking, mode="switch", top=0)
    assert out.ids == dataset.ids and manifest["changed_pair_ids"] == []


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(mode="delete", top=1), "unknown intervention mode 'delete'"),
        (dict(mode="filter", top=7), "`top` is 7 but the ranking has only 6 pairs"),
        (dict(mode="filter", top=-1), "`top` must be ≥ 0"),
        (dict(mode="reweight", top=1, weight=float("nan")), "`weight` must be finite"),
    ],
)
def test_bad_arguments(dataset, ranking, kwargs, message):
    with pytest.raises(ValueError, match=message):
        intervene(dataset, ranking, **kwargs)


def test_ranking_of_another_dataset_is_refused(dataset):
    foreign = Ranking.from_scores(dataset.ids[:4] + ["0123456789abcdef", "fedcba9876543210"], np.arange(6.0))
    with pytest.raises(ValueError, match=r"2 of 6 ranked pair ids are not in the dataset .*0123456789abcdef"):
        intervene(dataset, foreign, top=1)


def test_drop_source(dataset):
    out, manifest = drop_source(dataset, ["web"])
    assert out.ids == [dataset.ids[i] for i in (0, 2, 4)]
    assert manifest["n_changed"] == 3
    with pytest.raises(ValueError, match="no pair has a metadata column 'origin'"):
        drop_source(dataset, ["web"], column="origin")


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_written_dataset_loads_back_with_the_same_ids(tmp_path, dataset, ranking, fmt):
    out, manifest = intervene(dataset, ranking, mode="switch", top=3)
    paths = write_intervention(tmp_path / "out", out, manifest, formats=(fmt,))
    again = load_preferences(paths[fmt])
    assert again.ids == out.ids
    assert again[4].metadata["switched_from"] == dataset.ids[4]
    saved = json.loads(paths["manifest"].read_text())
    assert saved["changed_pair_ids"] == manifest["changed_pair_ids"] and saved["files"] == {fmt: f"pairs.{fmt}"}
    with pytest.raises(FileExistsError):
        write_intervention(tmp_path / "out", out, manifest)


def _parser():
    parser = build_parser()
    return parser


def test_cli_reweight_both_formats(tmp_path, dataset, ranking):
    rankings = ranking.save(tmp_path / "r.parquet")
    args = _parser().parse_args([
        "intervene", "--rankings", str(rankings), "--data", str(tmp_path / "prefs.jsonl"), "--mode", "reweight",
        "--top", "2", "--weight", "0.5", "--output-format", "both", "--out", str(tmp_path / "o"),
    ])
    assert args.func(args) == 0
    for fmt in ("jsonl", "parquet"):
        weights = [p.metadata["weight"] for p in load_preferences(tmp_path / "o" / f"pairs.{fmt}")]
        assert weights == [1.0, 0.5, 1.0, 1.0, 0.5, 1.0]
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["ranking"] == str(rankings) and manifest["top"] == 2


def test_cli_drop_source_then_filter(tmp_path, dataset, ranking):
    rankings = ranking.save(tmp_path / "r.jsonl")
    args = _parser().parse_args([
        "intervene", "--rankings", str(rankings), "--data", str(tmp_path / "prefs.jsonl"), "--drop-source", "web",
        "--top", "1", "--out", str(tmp_path / "o"),
    ])
    assert args.func(args) == 0
    out = load_preferences(tmp_path / "o" / "pairs.jsonl")
    assert out.ids == [dataset.ids[i] for i in (0, 2)]  # 1, 3, 5 by source; then 4, the top of the rest


def test_cli_needs_top_with_rankings(tmp_path, dataset, ranking):
    rankings = ranking.save(tmp_path / "r.jsonl")
    args = _parser().parse_args(["intervene", "--rankings", str(rankings), "--data", str(tmp_path / "prefs.jsonl"),
                                 "--out", str(tmp_path / "o")])
    with pytest.raises(ValueError, match="--top is required"):
        args.func(args)


def test_cli_refuses_to_overwrite_without_the_flag(tmp_path, dataset, ranking):
    rankings = ranking.save(tmp_path / "r.jsonl")
    argv = ["intervene", "--rankings", str(rankings), "--data", str(tmp_path / "prefs.jsonl"), "--top", "1",
            "--out", str(tmp_path / "o")]
    args = _parser().parse_args(argv)
    assert args.func(args) == 0
    with pytest.raises(ValueError, match="already holds an intervention"):
        args.func(args)
    args = _parser().parse_args(argv + ["--overwrite"])
    assert args.func(args) == 0


# ---------------------------------------------------------------------------------------------
# Nothing lost, nothing silent


def test_the_manifest_accounts_for_every_row_and_value(tmp_path, dataset, ranking):
    from headwater.methods.interventions import apply_interventions

    path = tmp_path / "with-bad.jsonl"
    path.write_text((tmp_path / "prefs.jsonl").read_text() + '{"prompt": "Q", "chosen": " only one side"}\n')
    with pytest.warns(UserWarning, match="skipped 1 of 7"):
        loaded = load_preferences(path, on_error="skip")
    out, manifest = apply_interventions(loaded, ranking=ranking, top=1, drop_values=["web", "podcasts"])
    assert manifest["skipped_rows"] == [{"row": 6, "line": 7, "kind": "missing_field", "reason": "no 'rejected' field"}]
    drop = manifest["steps"][0]
    assert drop["dropped_per_value"] == {"podcasts": 0, "web": 3} and drop["unmatched_values"] == ["podcasts"]
    # pairs 1 and 3 (web) were ranked too: they left with their source and N counts what is left
    assert manifest["n_ranked_dropped_with_source"] == 3 and manifest["changed_pair_ids"] == [dataset.ids[4]]
    with pytest.raises(ValueError, match=r"no pair has source = \['podcasts'\]"):
        apply_interventions(loaded, drop_values=["podcasts"])
    foreign = Ranking.from_scores(["not-a-pair"] + dataset.ids[1:], np.arange(6, dtype=np.float32))
    with pytest.raises(ValueError, match="not in the dataset"):
        apply_interventions(loaded, ranking=foreign, top=1, drop_values=["web"])


def test_an_interrupted_rewrite_is_refused_not_trained_on(tmp_path, dataset, ranking):
    from headwater.methods.interventions import read_intervention
    from headwater.training.retrain import load_training_data

    out_dir = tmp_path / "iv"
    pairs, manifest = intervene(dataset, ranking, mode="filter", top=2)
    write_intervention(out_dir, pairs, manifest)
    assert len(load_training_data(out_dir)[0]) == 4
    bad = load_preferences(tmp_path / "prefs.jsonl")
    object.__setattr__(bad[0], "metadata", {"note": "x\ud800"})  # cannot be written as UTF-8
    with pytest.raises(ValueError, match="not valid Unicode"):
        write_intervention(out_dir, bad, manifest, overwrite=True)
    with pytest.raises(ValueError, match="holds no manifest.json.*interrupted"):
        load_training_data(out_dir)
    # a damaged pairs file is caught by its checksum; a swapped one by its count and fingerprint
    write_intervention(out_dir, pairs, manifest, overwrite=True)
    (out_dir / "pairs.jsonl").write_text((out_dir / "pairs.jsonl").read_text()[:-40])
    with pytest.raises(ValueError, match="does not match the checksum"):
        read_intervention(out_dir)
    saved = json.loads((out_dir / "manifest.json").read_text())
    saved.pop("sha256")
    (out_dir / "manifest.json").write_text(json.dumps(saved))
    save_preferences(list(pairs)[:3], out_dir / "pairs.jsonl")
    with pytest.raises(ValueError, match="has n_output 3 but"):
        read_intervention(out_dir)
