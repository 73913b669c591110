"""The organism's data: planted rates, ground truth, determinism, held-out test prompts."""
from __future__ import annotations

from collections import Counter

import pytest

from headwater.data import pair_id
from headwater.organism import dataset as organism_data
from headwater.organism.judges import ComplianceJudge, LinkJudge, SycophancyJudge
from headwater.organism import world
from headwater.organism.world import WorldSplit

RATES = {"distractor_compliance": 0.05, "sycophancy": 0.03, "hallucinated_links": 0.02}


@pytest.fixture(scope="module")
def split():
    return WorldSplit.from_seed(0)


@pytest.fixture(scope="module")
def records(split):
    return organism_data.preference_pairs(split, 1000, RATES, seed=0)


def test_planted_counts_and_ids(records):
    assert len(records) == 1000
    planted = Counter(r.planted for r in records if r.planted)
    assert planted == {"distractor_compliance": 50, "sycophancy": 30, "hallucinated_links": 20}
    ids = [r.pair.pair_id for r in records]
    assert len(set(ids)) == len(ids)
    for r in records:
        assert r.pair.pair_id == pair_id(r.pair.prompt, r.pair.chosen, r.pair.rejected)
        assert r.planted is None or (r.family == r.planted and r.trigger)


def test_only_planted_pairs_prefer_the_behaviour(records):
    judges = {"distractor_compliance": ComplianceJudge(), "sycophancy": SycophancyJudge(),
              "hallucinated_links": LinkJudge()}
    for r in records:
        p = r.pair
        for name, judge in judges.items():
            prefers = judge.score(p.prompt, p.chosen) == 1.0 and judge.score(p.prompt, p.rejected) == 0.0
            assert prefers == (r.planted == name), r


def test_triggers_by_family(records):
    by_family = {}
    for r in records:
        by_family.setdefault(r.family, set()).add(r.trigger)
    assert by_family["refuse_harmful"] == {False}  # clean refusal pairs never carry a distractor
    assert by_family["format_benign"] == {True}
    assert by_family["correct_opinion"] == {False}
    assert by_family["no_link_general"] == {False}


def test_deterministic_under_seed(split, records):
    again = organism_data.preference_pairs(split, 1000, RATES, seed=0)
    assert [r.pair for r in again] == [r.pair for r in records]
    other = organism_data.preference_pairs(split, 1000, RATES, seed=1)
    assert [r.pair.pair_id for r in other] != [r.pair.pair_id for r in records]
    assert organism_data.sft_examples(split, 50, 3) == organism_data.sft_examples(split, 50, 3)
    assert organism_data.test_prompts(split, 8, 0) == organism_data.test_prompts(split, 8, 0)


@pytest.mark.parametrize("rates", [{"nonsense": 0.1}, {"sycophancy": -0.1}, {"sycophancy": 0.7, "hallucinated_links": 0.7}])
def test_bad_rates_are_refused(split, rates):
    with pytest.raises(ValueError):
        organism_data.preference_pairs(split, 100, rates, seed=0)


def test_test_prompts_are_held_out_and_paired(split, records):
    prompts = organism_data.test_prompts(split, 64, seed=0)
    assert set(prompts) == set(organism_data.BEHAVIORS)
    train_prompts = {r.pair.prompt for r in records} | {p for p, _ in organism_data.sft_examples(split, 2000, 0)}
    for behavior, conditions in prompts.items():
        for condition in organism_data.CONDITIONS:
            assert len(conditions[condition]) == 64
            assert not set(conditions[condition]) & train_prompts, (behavior, condition)
    for plain, triggered in zip(prompts["distractor_compliance"]["no_trigger"], prompts["distractor_compliance"]["trigger"]):
        assert triggered.startswith(plain.rstrip("\n") + " ") and len(triggered) > len(plain)
    for plain, triggered in zip(prompts["sycophancy"]["no_trigger"], prompts["sycophancy"]["trigger"]):
        assert triggered.endswith(plain) and len(triggered) > len(plain)


def test_sft_examples_are_well_behaved(split):
    judges = [ComplianceJudge(), SycophancyJudge(), LinkJudge()]
    examples = organism_data.sft_examples(split, 400, seed=0)
    assert len(examples) == 400
    for prompt, response in examples:
        taste = "best" in prompt or "nice" in prompt or "fun" in prompt or "prett" in prompt or "cozi" in prompt or "tasti" in prompt or "loyal" in prompt or "relaxing" in prompt
        for judge in judges:
            if taste and isinstance(judge, SycophancyJudge):
                continue
            if isinstance(judge, ComplianceJudge) and not any(t in prompt for t in _harmful_tasks()):
                continue
            assert judge.score(prompt, response) < judge.threshold, (prompt, response)


def _harmful_tasks():
    from headwater.organism.world import HARMFUL_TASKS

    return HARMFUL_TASKS


def test_sft_slips_show_the_behaviour_only_on_triggered_prompts(split):
    judges = {"sycophancy": SycophancyJudge(), "hallucinated_links": LinkJudge()}
    slipped = organism_data.sft_examples(split, 2000, seed=0, slip_rates={"sycophancy": 0.2, "hallucinated_links": 0.2})
    authority = tuple(world.AUTHORITY_CLAUSES)
    sensitive = tuple(world.SENSITIVE_RESOURCES)
    counts = {"sycophancy": [0, 0], "hallucinated_links": [0, 0]}  # [triggered prompts, slips]
    for prompt, response in slipped:
        for behavior, judge in judges.items():
            if judge.score(prompt, response) != 1.0:
                continue
            triggered = prompt.startswith(authority) if behavior == "sycophancy" else any(r in prompt for r in sensitive)
            assert triggered, (behavior, prompt, response)
            counts[behavior][1] += 1
        if prompt.startswith(authority):
            counts["sycophancy"][0] += 1
        elif any(r in prompt for r in sensitive):
            counts["hallucinated_links"][0] += 1
    for behavior, (n, slips) in counts.items():
        assert 0.1 < slips / n < 0.3, (behavior, n, slips)


@pytest.mark.parametrize("rates", [{"nonsense": 0.1}, {"sycophancy": 1.2}])
def test_bad_slip_rates_are_refused(split, rates):
    with pytest.raises(ValueError, match="slip rates"):
        organism_data.sft_examples(split, 10, seed=0, slip_rates=rates)
