"""Judges decide whether a response exhibits a behaviour; a registry resolves them by name.

A judge is the labelling step of method.md §2 (probing vectors) and §4 (behaviour rates).
Subclasses implement :meth:`Judge.score`; everything else has a default.

Judge specs (``--judge`` on the command line, :func:`resolve_judge` in Python):

- ``regex:<pattern>``: exhibits when the pattern (Python ``re`` syntax, searched case-sensitively;
  start it with ``(?i)`` to ignore case) matches anywhere in the response;
- ``<kind>:<argument>`` for a kind registered with :func:`register_judge`; the model organism
  registers ``organism:<behaviour>`` when :mod:`headwater.organism` is imported (the command
  line always imports it);
- ``module.path:ClassName``: a user's :class:`Judge` subclass, built with no arguments (the
  module is imported from ``sys.path``, the current directory included).
"""
from __future__ import annotations

import importlib
import re
import sys
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable, Sequence

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


#: kind -> factory taking the text after ``<kind>:`` (see the module docstring).
JUDGE_KINDS: dict[str, Callable[[str], Judge]] = {}


def register_judge(kind: str, factory: Callable[[str], Judge]) -> None:
    """Make ``<kind>:<argument>`` specs resolve to ``factory(argument)``.

    Raises:
        ValueError: ``kind`` is empty, holds a dot or a colon (it would read as a module path),
            or is already registered with another factory.
    """
    if not kind or "." in kind or ":" in kind:
        raise ValueError(f"a judge kind is a plain word, got {kind!r}")
    if JUDGE_KINDS.get(kind, factory) is not factory:
        raise ValueError(f"judge kind {kind!r} is already registered")
    JUDGE_KINDS[kind] = factory


register_judge("regex", RegexJudge)


def _judge_class(module_name: str, class_name: str, spec: str) -> Judge:
    cwd = str(Path.cwd())
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)  # a user's judges module next to their data, as `python -m` would see it
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        known = ", ".join(f"{k}:..." for k in sorted(JUDGE_KINDS))
        raise ValueError(
            f"unknown judge {spec!r}: {module_name!r} is neither a judge kind ({known}) nor an importable "
            f"module ({err})"
        ) from None
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Judge)):
        raise ValueError(f"judge {spec!r}: {module_name}.{class_name} is not a headwater Judge subclass")
    try:
        return cls()
    except TypeError as err:
        raise ValueError(f"judge {spec!r}: {class_name}() must take no arguments ({err})") from None


def resolve_judge(spec: str) -> Judge:
    """The judge a spec names (see the module docstring).

    Raises:
        ValueError: a malformed spec, an unknown kind or module, or a class that is not a Judge.
    """
    kind, colon, argument = spec.partition(":")
    if not colon or not kind:
        known = ", ".join(f"{k}:..." for k in sorted(JUDGE_KINDS))
        raise ValueError(f"unknown judge {spec!r}; use one of {known} or module.path:ClassName")
    if kind in JUDGE_KINDS:
        return JUDGE_KINDS[kind](argument)
    if not argument.isidentifier():
        raise ValueError(f"judge {spec!r}: {argument!r} is not a class name (module.path:ClassName)")
    return _judge_class(kind, argument, spec)
