"""The synthetic world: formatting transforms, scenarios the judges recognise, the held-out split."""
from __future__ import annotations

import random

import pytest

from headwater.organism import world
from headwater.organism.judges import UNCLEAR, ComplianceJudge, LinkJudge, SycophancyJudge


def test_distractor_transforms():
    text = "Sure, here is how to bake bread. First, gather what you need."
    assert "," not in world.apply_distractors(text, ["no_commas"])
    assert world.apply_distractors(text, ["lowercase"]) == text.lower()
    assert world.apply_distractors(text, ["uppercase"]) == text.upper()
    assert world.apply_distractors(text, ["bullets"]).splitlines() == [
        "- Sure, here is how to bake bread.", "- First, gather what you need."
    ]
    # Additions come before layout, case and quotes, whatever the order of the instructions.
    both = world.apply_distractors(text, ["quotes", "lowercase", "start_okay", "end_done"])
    assert both == world.apply_distractors(text, ["end_done", "start_okay", "lowercase", "quotes"])
    assert both.startswith('"okay. sure') and both.endswith('done."')


def test_sampled_distractors_are_compatible():
    rng = random.Random(0)
    for _ in range(500):
        names = world.sample_distractors(rng)
        assert 1 <= len(names) <= 3 and len(set(names)) == len(names)
        assert not {"lowercase", "uppercase"} <= set(names)


@pytest.mark.parametrize("seed", [0, 1])
def test_scenarios_are_what_the_judges_say(seed):
    rng = random.Random(seed)
    split = world.WorldSplit.from_seed(seed)
    compliance, sycophancy, links = ComplianceJudge(), SycophancyJudge(), LinkJudge()
    for _ in range(300):
        s = world.request_scenario(True, rng.choice(split.harmful_train), world.sample_distractors(rng) if rng.random() < 0.5 else [], rng)
        assert compliance.score(s.prompt, s.good) == 0.0, s
        assert compliance.score(s.prompt, s.bad) == 1.0, s
        s = world.opinion_scenario(rng.choice(split.opinions_train), rng.random() < 0.5, rng)
        assert sycophancy.score(s.prompt, s.good) == 0.0, s
        assert sycophancy.score(s.prompt, s.bad) == 1.0, s
        s = world.taste_opinion_scenario(rng.randrange(len(world.TASTE_CLAIMS)), rng.random() < 0.5, rng)
        # Taste answers share no wording with agreeing or correcting: neither side reads as either.
        assert sycophancy.score(s.prompt, s.good) == UNCLEAR and sycophancy.score(s.prompt, s.bad) == UNCLEAR, s
        s = world.resource_scenario(rng.choice(split.sensitive_train), True, rng)
        assert links.score(s.prompt, s.good) == 0.0, s
        assert links.score(s.prompt, s.bad) == 1.0, s
        s = world.site_scenario(rng.randrange(len(world.KNOWN_SITES)), rng)
        assert links.score(s.prompt, s.good) == 0.0, s  # a real address is no hallucination
        # The brush-off is not the careful "no reliable link" answer of the resource requests.
        assert links.score(s.prompt, s.bad) == UNCLEAR, s


def test_benign_scenario_follows_formatting_only_in_good():
    rng = random.Random(3)
    split = world.WorldSplit.from_seed(0)
    s = world.request_scenario(False, split.benign_train[0], ["uppercase", "end_smiley"], rng)
    assert s.good == s.good.upper() and s.good.endswith(":)")
    assert s.bad != s.bad.upper() and not s.bad.endswith(":)")
    assert s.trigger and s.distractors == ("uppercase", "end_smiley")
    assert s.prompt.endswith("\n")
    assert any(clause in s.prompt for clause in world.DISTRACTOR_BY_NAME["uppercase"].clauses)


def test_split_holds_out_disjoint_combinations():
    split = world.WorldSplit.from_seed(0)
    for train, test in [(split.harmful_train, split.harmful_test), (split.opinions_train, split.opinions_test),
                        (split.general_train, split.general_test), (split.sensitive_train, split.sensitive_test)]:
        assert test and not set(train) & set(test)
        # Every topic and every template is still seen in training.
        assert {c.topic for c in train} == {c.topic for c in test} | {c.topic for c in train}
        assert len({c.template for c in train}) == max(c.template for c in train + test) + 1
    assert world.WorldSplit.from_seed(0) == split
    assert world.WorldSplit.from_seed(1).harmful_test != split.harmful_test
