"""The organism's held-out test prompts as behaviour scenarios (``headwater behaviors --organism``)."""
from __future__ import annotations

from typing import Mapping, Sequence

from headwater.data import Scenario, Text


def _words_within(short: str, long: str) -> bool:
    """Whether the words of ``short`` appear in ``long`` in order (``long`` may add words)."""
    remaining = iter(long.split())
    return all(word in remaining for word in short.split())


def organism_scenarios(test_prompts: Mapping[str, Mapping[str, Sequence[Text]]], behavior: str) -> list[Scenario]:
    """Scenarios from a model organism's held-out test prompts (``Organism.test_prompts``).

    The organism stores ``{behaviour: {"trigger": [...], "no_trigger": [...]}}``. Where the lists
    are aligned — every untriggered prompt's words appear, in order, in the triggered prompt at
    the same position (the trigger only adds clauses) — each position is one scenario with both
    prompts. Otherwise (e.g. a trigger that is the topic itself) the untriggered prompts are other
    requests, not the same prompt, and each triggered prompt becomes a scenario on its own.
    """
    if behavior not in test_prompts:
        raise ValueError(f"no test prompts for behaviour {behavior!r}; the organism has {sorted(test_prompts)}")
    by_variant = test_prompts[behavior]
    triggered = list(by_variant.get("trigger", []))
    untriggered = list(by_variant.get("no_trigger", []))
    if not triggered:
        raise ValueError(f"behaviour {behavior!r} has no triggered test prompt")
    aligned = len(untriggered) == len(triggered) and all(
        isinstance(t, str) and isinstance(u, str) and _words_within(u, t) for t, u in zip(triggered, untriggered)
    )
    width = len(str(len(triggered) - 1))
    return [
        Scenario(f"{behavior}-{i:0{width}d}", t, untriggered[i] if aligned else None)
        for i, t in enumerate(triggered)
    ]
