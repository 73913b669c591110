"""Prompt files: test prompts, labelled responses and behaviour scenarios (JSONL and text).

- test prompts (``headwater evaluate`` and ``discover``): ``.txt``, one per non-blank line, or
  ``.jsonl`` rows with a ``prompt`` (a string or a message list; a bare JSON string also works);
- labelled responses (``headwater attribute --probe-data``): JSONL rows
  ``{"prompt", "response", "exhibits": true|false}``;
- scenarios (``headwater behaviors``): JSONL rows
  ``{"scenario": name, "trigger": prompt, "no_trigger": prompt}``; ``scenario`` is optional
  (default ``line-<n>``), ``no_trigger`` is optional.

Every reader names ``file:line`` and the problem for a malformed row.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from headwater.data.pairs import RowProblem, Text, normalise_text
from headwater.data.readers import iter_jsonl
from headwater.engine import atomic


def load_prompts(path: str | Path) -> list[Text]:
    """Test prompts from ``.txt`` (one per non-blank line) or ``.jsonl`` (rows with a ``prompt``
    field: a string or a list of messages; a bare JSON string per line also works)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {path} does not exist")
    lines = path.read_text(encoding="utf-8").splitlines()
    if path.suffix == ".txt":
        prompts: list[Text] = [line for line in lines if line.strip()]
    elif path.suffix in (".jsonl", ".json"):
        prompts = []
        for number, row in iter_jsonl(path):
            prompt = row.get("prompt") if isinstance(row, dict) else row
            if not (isinstance(prompt, str) and prompt) and not (isinstance(prompt, list) and prompt):
                raise ValueError(f"{path}:{number}: expected a non-empty 'prompt' string or message list")
            prompts.append(prompt)
    else:
        raise ValueError(f"{path}: prompts are read from .txt or .jsonl, not {path.suffix!r}")
    if not prompts:
        raise ValueError(f"{path} holds no prompt")
    return prompts


def read_labelled_responses(path: str | Path) -> tuple[list[Any], list[Any], list[bool]]:
    """Rows ``{"prompt", "response", "exhibits"}`` from a JSONL file, each checked."""
    prompts, responses, labels = [], [], []
    for line_no, row in iter_jsonl(path):
        missing = [k for k in ("prompt", "response", "exhibits") if not isinstance(row, dict) or k not in row]
        if missing:
            raise ValueError(f"{path}:{line_no}: missing field(s) {missing}")
        if not isinstance(row["exhibits"], bool):
            raise ValueError(f"{path}:{line_no}: 'exhibits' must be true or false, got {row['exhibits']!r}")
        try:
            prompts.append(normalise_text("prompt", row["prompt"]))
            responses.append(normalise_text("response", row["response"]))
        except RowProblem as problem:
            raise ValueError(f"{path}:{line_no}: {problem.reason} [{problem.kind}]") from None
        labels.append(row["exhibits"])
    if not prompts:
        raise ValueError(f"{path}: no labelled responses")
    return prompts, responses, labels


@dataclass(frozen=True)
class Scenario:
    """One test prompt with its trigger and, optionally, the same prompt without it.

    Attributes:
        name: unique within a scenario set.
        trigger: the prompt carrying the trigger (a string or a message list).
        no_trigger: the same prompt without the trigger, or None.
    """

    name: str
    trigger: Text
    no_trigger: Text | None = None

    def prompt(self, variant: str) -> Text | None:
        return self.trigger if variant == "trigger" else self.no_trigger


def is_prompt(value: Any) -> bool:
    """A non-empty string, or a non-empty list of {"role", "content"} messages."""
    if isinstance(value, str):
        return bool(value.strip())
    return (
        isinstance(value, list) and bool(value)
        and all(isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in value)
    )


def load_scenarios(path: str | Path) -> list[Scenario]:
    """Scenarios from a JSONL file (the format in this module's docstring).

    Raises:
        FileNotFoundError: no such file.
        ValueError: a malformed row (naming ``file:line``), a repeated name, or no scenario.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"scenario file {path} does not exist")
    scenarios: list[Scenario] = []
    seen: dict[str, int] = {}
    for number, row in iter_jsonl(path):
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{number}: expected an object with 'trigger' (and optional 'scenario', 'no_trigger')")
        unknown = set(row) - {"scenario", "trigger", "no_trigger"}
        if unknown:
            raise ValueError(f"{path}:{number}: unknown field(s) {sorted(unknown)}; use scenario, trigger, no_trigger")
        if not is_prompt(row.get("trigger")):
            raise ValueError(f"{path}:{number}: 'trigger' must be a non-empty prompt string or message list")
        no_trigger = row.get("no_trigger")
        if no_trigger is not None and not is_prompt(no_trigger):
            raise ValueError(f"{path}:{number}: 'no_trigger' must be a non-empty prompt string or message list, or absent")
        name = row.get("scenario", f"line-{number}")
        if not isinstance(name, str) or not name or "\n" in name:
            raise ValueError(f"{path}:{number}: 'scenario' must be a non-empty one-line string")
        if name in seen:
            raise ValueError(f"{path}:{number}: scenario {name!r} repeats line {seen[name]}")
        seen[name] = number
        scenarios.append(Scenario(name, row["trigger"], no_trigger))
    if not scenarios:
        raise ValueError(f"{path} holds no scenario")
    return scenarios


def save_scenarios(scenarios: Sequence[Scenario], path: str | Path) -> Path:
    """Write scenarios as JSONL that :func:`load_scenarios` reads back."""
    path = Path(path)
    lines = []
    for s in scenarios:
        row: dict[str, Any] = {"scenario": s.name, "trigger": s.trigger}
        if s.no_trigger is not None:
            row["no_trigger"] = s.no_trigger
        lines.append(json.dumps(row, ensure_ascii=False) + "\n")
    return atomic.write_text(path, "".join(lines))
