"""A preference pair, its content-hash id and the checks every row passes (TRL's formats).

A row is ``prompt`` / ``chosen`` / ``rejected``; each field is a plain string ("standard") or a
list of ``{"role", "content"}`` messages ("conversational"). :func:`pair_id` is the one id rule:
16 hex digits of sha256 over the canonical JSON of the normalised content; a repeat within one
dataset gets ``<hash>#k`` (:func:`free_id`). The row checks raise :class:`RowProblem` with a
short kind code (see :mod:`headwater.data` for the table of kinds).
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Union

Message = dict[str, str]
Text = Union[str, list[Message]]

#: The columns TRL's DPOTrainer reads, and the id column headwater adds when it writes.
PAIR_COLUMNS = ("prompt", "chosen", "rejected")
ID_COLUMN = "pair_id"
ID_HEX = 16
ID_PATTERN = re.compile(rf"^([0-9a-f]{{{ID_HEX}}})(?:#([1-9][0-9]*))?$")


@dataclass(frozen=True)
class PreferencePair:
    """One preference pair d = (p, r⁺, r⁻) with a stable content-hash id.

    Attributes:
        pair_id: stable id derived from the content (see :func:`pair_id`), so that rankings,
            interventions and reports point back to the same pair across runs.
        prompt: the prompt text, or the list of prompt messages ("" / [] when there is none).
        chosen: the preferred response (text, or the list of assistant messages).
        rejected: the dispreferred response, same type as ``chosen``.
        row: 0-based row index in the source.
        source: where the row came from (a file path or a dataset name).
        metadata: every other column of the row, kept as is (e.g. a data-source column).
    """

    pair_id: str
    prompt: Text
    chosen: Text
    rejected: Text
    row: int = -1
    source: str = ""
    metadata: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def conversational(self) -> bool:
        """True when the responses are message lists rather than plain strings."""
        return not isinstance(self.chosen, str)


# ---------------------------------------------------------------------------------------------
# Errors and warnings


class MalformedRowError(ValueError):
    """A row of preference data that cannot become a :class:`PreferencePair`.

    Attributes:
        source: the file (or dataset name) the row came from.
        line: 1-based line of a JSONL file, or 1-based row of a table / dataset / list.
        unit: ``"line"`` or ``"row"``, the unit of ``line``.
        kind: a short code for the problem (see the module docstring).
        reason: what is wrong, in words.
    """

    def __init__(self, source: str, line: int, unit: str, kind: str, reason: str):
        self.source, self.line, self.unit, self.kind, self.reason = source, line, unit, kind, reason
        super().__init__(f"{source}, {unit} {line}: {reason} [{kind}]")


class PreferenceDataWarning(UserWarning):
    """Something in preference data that was kept or skipped and deserves a look."""


class SkippedRow(NamedTuple):
    """A row left out of a :class:`PreferenceDataset`, and why.

    ``row`` is the 0-based data row in the source (blank JSONL lines do not count); ``line`` is
    the 1-based line of a JSONL file or 1-based row of a table; ``kind`` is a short code (see the
    module docstring); ``reason`` says what is wrong.
    """

    row: int
    line: int
    kind: str
    reason: str


class RowProblem(Exception):
    """Raised inside row validation; turned into MalformedRowError or a SkippedRow."""

    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind, self.reason = kind, reason


# ---------------------------------------------------------------------------------------------
# Content: normalisation, TRL's prompt extraction, ids


def extract_prompt(chosen: Text, rejected: Text) -> tuple[Text, Text, Text]:
    """Split the shared leading part off ``chosen`` and ``rejected``, as TRL 1.16 does.

    Behaves exactly like ``trl.data_utils.extract_prompt`` (which DPOTrainer maps over a
    dataset without a ``prompt`` column), so the pair headwater attributes is the pair TRL
    trains on — quirks included:

    - the split point is the first differing character (string) or message (list); for strings,
      when the character before it is a space, the space goes to the responses;
    - when one side is a prefix of the other, the split is one element *before* the end of the
      shorter side, so both responses stay non-empty;
    - for strings that differ at the first character while ``chosen`` ends with a space, TRL's
      ``chosen[idx - 1]`` wraps round to the last character and the split index becomes -1: the
      prompt is ``chosen[:-1]``. Reproduced (TRL trains on that), and warned about on load.

    Returns:
        ``(prompt, chosen, rejected)``, each the same type as the inputs.

    Raises:
        ValueError: when either side is empty (TRL fails there with UnboundLocalError).
    """
    split = prompt_split_index(chosen, rejected)
    return chosen[:split], chosen[split:], rejected[split:]


def prompt_split_index(chosen: Text, rejected: Text) -> int:
    shorter = min(len(chosen), len(rejected))
    if shorter == 0:
        raise ValueError("cannot extract a prompt: chosen or rejected is empty")
    # A line-for-line port of TRL 1.16's loop; `idx` deliberately survives the loop.
    for idx in range(shorter):
        if chosen[idx] != rejected[idx]:
            if chosen[idx - 1] == " ":
                idx -= 1
            break
    return idx


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def pair_id(prompt: Text, chosen: Text, rejected: Text) -> str:
    """The content hash of a pair: 16 hex digits of sha256 over canonical JSON.

    The inputs must already be normalised (as :func:`load_preferences` leaves them); the same
    content gives the same id in every process and from every file format. Duplicates within a
    dataset get a ``#k`` suffix on top of this (see the module docstring).
    """
    payload = canonical_json({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:ID_HEX]


def free_id(base: str, taken: set[str] | frozenset[str], start: int = 1) -> str:
    """``base`` itself when free, otherwise the smallest free ``<base>#k`` with k ≥ ``start``:
    the id of a repeated content within one dataset (the first occurrence keeps the bare hash)."""
    if base not in taken:
        return base
    k = start
    while f"{base}#{k}" in taken:
        k += 1
    return f"{base}#{k}"


def make_pair(
    prompt: Text,
    chosen: Text,
    rejected: Text,
    *,
    row: int = -1,
    source: str = "",
    metadata: Mapping[str, Any] | None = None,
) -> PreferencePair:
    """Build a validated :class:`PreferencePair` whose id is its content hash (no ``#k`` suffix).

    For code that creates pairs (the organism, interventions). Raises :class:`ValueError` with
    the same messages as :func:`load_preferences` for malformed content.
    """
    try:
        prompt, chosen, rejected = normalise_explicit(prompt, chosen, rejected)
    except RowProblem as problem:
        raise ValueError(f"{problem.reason} [{problem.kind}]") from None
    return PreferencePair(
        pair_id(prompt, chosen, rejected), prompt, chosen, rejected, row, source, dict(metadata or {})
    )


def describe_value(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def is_null(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def check_unicode(name: str, text: str) -> None:
    """A lone surrogate (JSON's "\\ud800") is not text: no file format or tokenizer takes it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise RowProblem("invalid_text", f"{name} holds a lone surrogate {text[err.start:err.end]!r} at character "
                                         f"{err.start}, which is not valid Unicode") from None


def normalise_text(name: str, value: Any) -> Text:
    """Check one field and return it normalised (messages: null extra keys dropped)."""
    if is_null(value):
        raise RowProblem("null_value", f"{name} is {'NaN' if value is not None else 'null'}")
    if isinstance(value, str):
        check_unicode(name, value)
        return value
    if not isinstance(value, (list, tuple)):
        raise RowProblem(
            "wrong_type",
            f"{name} is {type(value).__name__} {describe_value(value)}, expected a string or a list of "
            "{'role', 'content'} messages",
        )
    messages: list[Message] = []
    for j, message in enumerate(value):
        where = f"{name}[{j}]"
        # `type(...) is dict` first: the ABC check costs more and nearly every message is a dict.
        if type(message) is not dict and not isinstance(message, Mapping):
            raise RowProblem(
                "bad_message", f"{where} is {type(message).__name__} {describe_value(message)}, expected a "
                "message object with 'role' and 'content'"
            )
        for key in ("role", "content"):
            if key not in message or message[key] is None:
                hint = (
                    " (from/value messages: convert them with TRL's maybe_convert_to_chatml)"
                    if "from" in message or "value" in message
                    else ""
                )
                raise RowProblem("bad_message", f"{where} has no {key!r}{hint}")
            if not isinstance(message[key], str):
                raise RowProblem(
                    "bad_message",
                    f"{where}[{key!r}] is {type(message[key]).__name__} {describe_value(message[key])}, "
                    "expected a string",
                )
        if not message["role"]:
            raise RowProblem("bad_message", f"{where} has an empty 'role'")
        check_unicode(f"{where}['content']", message["content"])
        # Arrow pads struct keys that only some messages have with nulls; drop them so that a
        # message reads the same from JSONL and from Parquet.
        messages.append({k: v for k, v in message.items() if v is not None})
    return messages


def check_responses(chosen: Any, rejected: Any) -> tuple[Text, Text]:
    chosen = normalise_text("chosen", chosen)
    rejected = normalise_text("rejected", rejected)
    if isinstance(chosen, str) != isinstance(rejected, str):
        kinds = ("a string", "a list of messages")
        raise RowProblem(
            "type_mismatch",
            f"chosen is {kinds[not isinstance(chosen, str)]} but rejected is "
            f"{kinds[not isinstance(rejected, str)]}",
        )
    for name, value in (("chosen", chosen), ("rejected", rejected)):
        if len(value) == 0:
            raise RowProblem("empty", f"{name} is empty")
    return chosen, rejected


def normalise_explicit(prompt: Any, chosen: Any, rejected: Any) -> tuple[Text, Text, Text]:
    chosen, rejected = check_responses(chosen, rejected)
    return check_prompt(prompt, chosen), chosen, rejected


def check_prompt(prompt: Any, chosen: Text) -> Text:
    """Normalise an explicit prompt; it must be of the same kind as the (checked) responses."""
    prompt = normalise_text("prompt", prompt)
    if isinstance(prompt, str) != isinstance(chosen, str):
        kinds = ("a string", "a list of messages")
        raise RowProblem(
            "type_mismatch",
            f"prompt is {kinds[not isinstance(prompt, str)]} but chosen/rejected are "
            f"{'strings' if isinstance(chosen, str) else 'message lists'}",
        )
    return prompt
