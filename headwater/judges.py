"""Judges decide whether a response exhibits a behaviour.

A judge is the labelling step of method.md §2 (probing vectors) and §4 (behaviour rates).
Subclasses implement :meth:`Judge.score`; everything else has a default.
"""
from __future__ import annotations

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
