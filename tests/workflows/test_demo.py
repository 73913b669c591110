"""`headwater demo` end to end on the miniature organism: every stage runs for real, on real files."""
from __future__ import annotations

import json

import pytest

from headwater.cli import main

REQUIRED_KEYS = [
    "behavior_rate.m0.trigger", "behavior_rate.m0.no_trigger", "behavior_rate.m1.trigger",
    "behavior_rate.m1.no_trigger", "attribution.random.precision_at_n", "attribution.random.recall_at_n",
    "attribution.random.auroc", "n_pairs", "n_planted", "seconds",
]


def _get(doc, dotted):
    for part in dotted.split("."):
        doc = doc[part]
    return doc


@pytest.mark.slow
def test_demo_miniature_writes_every_result(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HEADWATER_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo.json"
    assert main(["demo", "--preset", "miniature", "--samples", "2", "--json", str(out), "--out", str(tmp_path / "r")]) == 0
    results = json.loads(out.read_text())
    for key in REQUIRED_KEYS:
        value = _get(results, key)
        assert isinstance(value, (int, float)), key
    for model in ("m0", "m1"):
        for condition in ("trigger", "no_trigger"):
            assert 0.0 <= results["behavior_rate"][model][condition] <= 1.0
    gt = json.loads(next((tmp_path / "cache").rglob("ground_truth.json")).read_text())
    assert results["n_planted"] == len(gt["planted"]["distractor_compliance"])
    assert results["n_pairs"] == sum(1 for _ in next((tmp_path / "cache").rglob("preferences.jsonl")).open())
    # The activation attribution is either measured or explains why there was no probe to rank with.
    for name, b in results["behaviors"].items():
        act = b["attribution"]["activation"]
        # the probe from the scenarios that pass the four-condition filter, the unfiltered one beside it
        assert b["probe"] in ("four-condition filter", "unfiltered") and "activation_unfiltered" in b["attribution"]
        assert 0 <= b["filter"]["n_kept"] <= b["filter"]["n_scenarios"]
        if act is None:
            assert "exhibit" in b["no_probe_reason"], name
        else:
            assert 0.0 <= act["precision_at_n"] <= 1.0 and act["n"] == b["n_planted"]
            assert (tmp_path / "r" / f"rankings-{name}.parquet").exists()
    assert "behaviour" in capsys.readouterr().out


def test_demo_report_needs_full(capsys):
    assert main(["demo", "--preset", "miniature", "--report", "r.html"]) == 2
    assert "--report needs --full" in capsys.readouterr().err


@pytest.mark.slow
def test_the_small_organism_learns_and_activation_attribution_beats_random(tmp_path, monkeypatch, capsys):
    """The `small` preset (about 30 s to build here) learns distractor compliance, and the probe
    from its generations finds the planted pairs far better than random selection. Measured on
    seeds 0-2 (bench/RESULTS.md): M1 triggered 18.8-36.7% against M0's 3.9-7.0%, P@80 0.76-0.85
    against random 0.09-0.10 (the filtered probe, the default; unfiltered 0.76-0.85 too); the
    bounds below leave room for another CPU's rounding."""
    monkeypatch.setenv("HEADWATER_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo.json"
    assert main(["demo", "--preset", "small", "--json", str(out)]) == 0
    capsys.readouterr()
    results = json.loads(out.read_text())
    rates = results["behavior_rate"]
    assert rates["m1"]["trigger"] >= rates["m0"]["trigger"] + 0.08, rates  # it learned the behaviour
    assert rates["m1"]["no_trigger"] <= 0.05, rates  # only with the trigger
    activation, random = results["attribution"]["activation"], results["attribution"]["random"]
    assert activation is not None and activation["n"] == results["n_planted"] == 80
    assert activation["precision_at_n"] >= 0.5 and activation["precision_at_n"] >= 4 * random["precision_at_n"]
    assert activation["auroc"] >= 0.9
