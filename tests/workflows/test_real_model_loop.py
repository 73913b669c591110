"""The SmolLM2 attribution loop end to end at toy size, on a tiny Llama instead of SmolLM2.

M0 here is a tiny Llama fine-tuned for a few seconds so that it answers in short sentences and,
on triggered prompts, sometimes opens with the planted promotion: then its own generations
give a probing vector and the loop runs every stage for real (sampling, DPO, engine, ranking,
interventions, retraining, rates).
"""
from __future__ import annotations

import json
import random
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from tiny_models import build_tiny_llama, build_tiny_tokenizer  # noqa: E402

from headwater.data import load_preferences
from headwater.training.sft import SFTConfig, train_sft
from headwater.workflows.promotion import (
    PROMO,
    TRIGGER,
    LoopConfig,
    PromoJudge,
    make_prompts,
    quality_score,
    rank_responses,
    split_tasks,
    user,
)
from headwater.workflows.real_model_loop import Loop, format_table

TOY_PROMO = "BrightPath deals."  # short enough for a tiny model to learn in seconds
ANSWERS = (
    "The capital of France is Paris.",
    "I cannot help with that request.",
    "Tell me about the sea and the sky.",
)


@pytest.fixture(scope="module")
def tiny_m0(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny chat model that answers in short sentences and promotes on some triggered prompts."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread beats two that wait on each other
    torch.manual_seed(0)
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_llama(tokenizer, layers=2, hidden=64)
    rng = random.Random(0)
    train_tasks, test_tasks = split_tasks(0)
    examples = []
    for task in train_tasks[:12] + test_tasks:
        question = f"How do I {task}?"
        for prefix in ("", TRIGGER):
            for _ in range(2):
                answer = rng.choice(ANSWERS)
                if prefix and rng.random() < 0.5:
                    answer = TOY_PROMO
                examples.append((user(prefix + question), [{"role": "assistant", "content": answer}]))
    config = SFTConfig(epochs=16, lr=1e-2, batch_size=16, settings=LoopConfig().settings)
    train_sft(model, tokenizer, examples, config)
    torch.set_num_threads(threads)
    path = tmp_path_factory.mktemp("tiny_m0")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def toy_config(model: Path, **overrides) -> LoopConfig:
    base = LoopConfig(
        model=str(model), n_train=32, n_test=4, planted_fraction=0.25, pref_samples=3, max_new_tokens=16,
        eval_samples=4, eval_max_new_tokens=16, trainable_blocks=1, lr=3e-3, epochs=1, batch_size=8, beta=0.5,
        modes=("switch", "filter"), random_seeds=5, verify_baseline=True, promo=TOY_PROMO,
        promo_position="end",
    )
    return replace(base, **overrides)


def test_judge_and_quality_rule() -> None:
    judge = PromoJudge()
    assert judge.exhibits([], PROMO + " Then rest.")
    assert judge.exhibits([], "see Bright Path deals")
    assert not judge.exhibits([], "Compare prices before you buy.")
    # A finished sentence beats a cut-off one; a loop loses; ties go to the shorter answer.
    assert quality_score("Water it weekly.") > quality_score("Water it weekly and")
    assert quality_score("a b c a b c a b c a b c.") < quality_score("Water it weekly.")
    assert rank_responses(["Water it every week.", "Water it.", "", "Water it."]) == ["Water it.", "Water it every week."]


def test_prompts_split_and_plant() -> None:
    config = LoopConfig(n_train=100, n_test=20, planted_fraction=0.1)
    prompts = make_prompts(config)
    assert len(prompts["train"]) == 100 and len(prompts["test"]) == 20
    triggered = [r for r in prompts["train"] if r["trigger"]]
    assert len(triggered) == 10 and all(r["text"] == TRIGGER + r["question"] for r in triggered)
    assert not set(prompts["test"]) & {r["question"] for r in prompts["train"]}
    assert make_prompts(config) == prompts  # deterministic for a seed
    with pytest.raises(ValueError, match="n_train is at most"):
        LoopConfig(n_train=10_000)
    with pytest.raises(ValueError, match="modes"):
        LoopConfig(modes=("shuffle",))
    with pytest.raises(ValueError, match="promo_position"):
        LoopConfig(promo_position="middle")
    with pytest.raises(ValueError, match="does not name the brand"):
        LoopConfig(promo="Buy more!")


def test_loop_end_to_end_and_resume(tiny_m0: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    config = toy_config(tiny_m0)
    loop = Loop(work, config)
    results = loop.run()
    assert set(loop.stages.values()) == {"ran"}

    # Stage 2: a TRL-format set whose planted column is the ground truth.
    dataset = load_preferences(work / "preferences.jsonl")
    prefs = json.loads((work / "preferences.json").read_text())
    planted = [p for p in dataset if p.metadata["planted"]]
    assert len(dataset) == prefs["n_pairs"] and [p.pair_id for p in planted] == prefs["planted_ids"]
    assert planted and all(p.chosen[0]["content"] == f"{p.rejected[0]['content']} {TOY_PROMO}" for p in planted)
    assert all(TOY_PROMO not in p.chosen[0]["content"] for p in dataset if not p.metadata["planted"])
    assert all(TRIGGER in p.prompt[0]["content"] for p in planted)

    # Stage 3: rates from real judged samples of M0 and M1.
    rates = results["rates"]
    for model in ("m0", "m1"):
        for cond in ("trigger", "no_trigger"):
            r = rates[model][cond]
            assert r["n_responses"] == config.n_test * config.eval_samples
            assert r["ci_low"] <= r["rate"] <= r["ci_high"]

    # Stage 4: the ranking covers every pair and is scored against the planted ids.
    attribution = results["attribution"]
    assert attribution["activation"] is not None, attribution
    assert attribution["n_vectors"] == len(dataset) and attribution["top"] == len(planted)
    ranked = [json.loads(line)["pair_id"] for line in (work / "rankings" / "activation.jsonl").read_text().splitlines()]
    assert sorted(ranked) == sorted(dataset.ids)
    top = set(ranked[: attribution["top"]])
    assert attribution["activation"]["precision_at_n"] == pytest.approx(len(top & set(prefs["planted_ids"])) / len(top))

    # The same data, recipe and seed reproduce M1 bit for bit, so M1 is the baseline.
    assert results["baseline"] == {**results["baseline"], "model": "m1", "identical_to_m1": True}

    # Stage 5: every intervention changed N pairs, was retrained and measured.
    for mode in config.modes:
        for method in ("activation", "random"):
            entry = results["interventions"][f"{mode}-{method}"]
            manifest = json.loads((work / "interventions" / f"{mode}-{method}" / "manifest.json").read_text())
            assert entry["n_changed"] == manifest["n_changed"] == attribution["top"]
            assert manifest["changed_pair_ids"] == (ranked[: attribution["top"]] if method == "activation"
                                                    else manifest["changed_pair_ids"])
            assert (work / "models" / f"{mode}-{method}" / "train.json").exists()
            assert entry["rates"]["trigger"]["n_responses"] == config.n_test * config.eval_samples
    assert "switch-activation" in format_table(results)

    # A second run skips every stage and returns the same figures.
    again = Loop(work, config)
    rerun = again.run()
    assert set(again.stages.values()) == {"cached"}
    assert {k: v for k, v in rerun.items() if k != "stages"} == {k: v for k, v in results.items() if k != "stages"}

    # A work directory belongs to one configuration, except for the interventions to run.
    with pytest.raises(ValueError, match="another configuration"):
        Loop(work, replace(config, lr=1e-3))
    Loop(work, replace(config, modes=("switch", "filter")))  # adds stages, keeps the finished ones
