"""The judge registry: kinds, regular expressions and user classes resolve; mistakes are named."""
from __future__ import annotations

import pytest

from headwater.methods.judge_registry import JUDGE_KINDS, register_judge, resolve_judge
from headwater.methods.judges import Judge, RegexJudge


class Shout(Judge):
    name = "shout"

    def score(self, prompt, response):
        return float(response.isupper())


def test_regex_judge_searches_the_response():
    judge = resolve_judge("regex:(?i)brightpath")
    assert isinstance(judge, RegexJudge) and judge.name == "regex:(?i)brightpath"
    assert judge.score_batch(["p", "p", "p"], ["Try BrightPath!", "bright path", ""]) == [1.0, 0.0, 0.0]
    assert judge.exhibits("p", "see brightpath.shop") and not judge.exhibits("p", "nothing")
    assert resolve_judge("regex:a:b").pattern.pattern == "a:b"  # only the first colon separates the kind
    with pytest.raises(ValueError, match="needs a pattern"):
        resolve_judge("regex:")


def test_a_user_class_resolves_by_module_path():
    judge = resolve_judge(f"{__name__}:Shout")
    assert isinstance(judge, Shout) and judge.exhibits("p", "HEY") and not judge.exhibits("p", "hey")
    with pytest.raises(ValueError, match="is not a class name"):
        resolve_judge(f"{__name__}:not-a-name")
    with pytest.raises(ValueError, match="is not a headwater Judge subclass"):
        resolve_judge(f"{__name__}:pytest")


def test_registered_kinds_win_and_cannot_be_taken_twice():
    register_judge("shouting", lambda arg, options=None: Shout())
    try:
        assert isinstance(resolve_judge("shouting:anything"), Shout)
        with pytest.raises(ValueError, match="already registered"):
            register_judge("shouting", lambda arg, options=None: Shout())
    finally:
        del JUDGE_KINDS["shouting"]
    for bad in ("", "a.b", "a:b"):
        with pytest.raises(ValueError, match="plain word"):
            register_judge(bad, lambda arg, options=None: Shout())
    with pytest.raises(ValueError, match="unknown judge 'nocolon'.*regex:"):
        resolve_judge("nocolon")


def test_the_organism_registers_its_judges_when_imported():
    import headwater.organism  # noqa: F401

    assert resolve_judge("organism:sycophancy").name == "sycophancy"
