"""Judges decide whether a response exhibits a behaviour; a registry resolves them by name.

A judge is the labelling step of method.md §2 (probing vectors) and §4 (behaviour rates).
Subclasses implement :meth:`Judge.score`; everything else has a default.

Judge specs (``--judge`` on the command line, :func:`headwater.methods.judge_registry.resolve_judge`
in Python):

- ``regex:<pattern>``: exhibits when the pattern (Python ``re`` syntax, searched case-sensitively;
  start it with ``(?i)`` to ignore case) matches anywhere in the response;
- ``<kind>:<argument>`` for a kind registered with
  :func:`headwater.methods.judge_registry.register_judge` (``openai:``, ``hf:``); the model organism
  registers ``organism:<behaviour>`` when :mod:`headwater.organism` is imported (the command
  line always imports it);
- ``module.path:ClassName``: a user's :class:`Judge` subclass, built with no arguments (the
  module is imported from ``sys.path``, the current directory included).
"""
from __future__ import annotations

import re
from abc import ABC, abstractmethod
from typing import Sequence

from headwater.data import Text


class Judge(ABC):
    """Scores (prompt, response) for one behaviour; a score ≥ ``threshold`` means it is exhibited.

    Attributes:
        name: the behaviour's name, used in reports and JSON keys.
        threshold: the score at or above which :meth:`exhibits` is true.
    """

    name: str = "behavior"
    threshold: float = 0.5

    @abstractmethod
    def score(self, prompt: Text, response: str) -> float:
        """The behaviour score of one response (higher = more of the behaviour)."""
        raise NotImplementedError(f"{type(self).__name__} must implement score()")

    def score_batch(self, prompts: Sequence[Text], responses: Sequence[str]) -> list[float]:
        """Scores of many responses; override to batch an expensive judge."""
        if len(prompts) != len(responses):
            raise ValueError(
                f"prompts and responses must have the same length, got {len(prompts)} "
                f"and {len(responses)}"
            )
        return [self.score(p, r) for p, r in zip(prompts, responses)]

    def exhibits(self, prompt: Text, response: str) -> bool:
        """Whether the response shows the behaviour."""
        return self.score(prompt, response) >= self.threshold


class RegexJudge(Judge):
    """1.0 when ``pattern`` matches somewhere in the response (``re.search``), else 0.0."""

    threshold = 0.5

    def __init__(self, pattern: str, name: str | None = None):
        try:
            self.pattern = re.compile(pattern)
        except re.error as err:
            raise ValueError(f"judge regex:{pattern} is not a valid regular expression ({err})") from None
        if not pattern:
            raise ValueError("judge regex: needs a pattern, e.g. regex:(?i)brightpath")
        self.name = name or f"regex:{pattern}"

    def score(self, prompt: Text, response: str) -> float:
        return 1.0 if self.pattern.search(response) else 0.0


__all__ = ["Judge", "RegexJudge"]
