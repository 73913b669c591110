"""The judge registry: ``<kind>:<argument>`` specs resolve to judges (see :mod:`headwater.methods.judges`).

Built in: ``regex:<pattern>``, ``openai:<model>`` and ``hf:<path>``
(:mod:`headwater.methods.llm_judges`); the model organism adds ``organism:<behaviour>`` when
imported; ``module.path:ClassName`` builds a user's own :class:`Judge` subclass. Options of the
LLM judges (``url``, ``rubric``, ``behavior``, ``concurrency``, ``cache_dir``, ``device``) come in
``options``.
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any, Callable

from headwater.methods.judges import Judge, RegexJudge
from headwater.methods.llm_judges import hf_judge, openai_judge

#: kind -> factory taking the text after ``<kind>:`` (see the module docstring).
JUDGE_KINDS: dict[str, Callable[[str, dict[str, Any] | None], Judge]] = {}


def register_judge(kind: str, factory: Callable[[str, dict[str, Any] | None], Judge]) -> None:
    """Make ``<kind>:<argument>`` specs resolve to ``factory(argument, options)``.

    Raises:
        ValueError: ``kind`` is empty, holds a dot or a colon (it would read as a module path),
            or is already registered with another factory.
    """
    if not kind or "." in kind or ":" in kind:
        raise ValueError(f"a judge kind is a plain word, got {kind!r}")
    if JUDGE_KINDS.get(kind, factory) is not factory:
        raise ValueError(f"judge kind {kind!r} is already registered")
    JUDGE_KINDS[kind] = factory


register_judge("regex", lambda pattern, options=None: RegexJudge(pattern))
register_judge("openai", openai_judge)
register_judge("hf", hf_judge)


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


def resolve_judge(spec: str, options: dict[str, Any] | None = None) -> Judge:
    """The judge a spec names (see the module docstring); ``options`` go to the kind's factory.

    Raises:
        ValueError: a malformed spec, an unknown kind or module, or a class that is not a Judge.
    """
    kind, colon, argument = spec.partition(":")
    if not colon or not kind:
        known = ", ".join(f"{k}:..." for k in sorted(JUDGE_KINDS))
        raise ValueError(f"unknown judge {spec!r}; use one of {known} or module.path:ClassName")
    if kind in JUDGE_KINDS:
        return JUDGE_KINDS[kind](argument, options)
    if not argument.isidentifier():
        raise ValueError(f"judge {spec!r}: {argument!r} is not a class name (module.path:ClassName)")
    return _judge_class(kind, argument, spec)


__all__ = ["JUDGE_KINDS", "register_judge", "resolve_judge"]
