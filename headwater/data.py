"""Preference data: the rows TRL's DPOTrainer reads, normalised to :class:`PreferencePair`.

A row is ``prompt`` / ``chosen`` / ``rejected``. Each field is either a plain string
("standard" format) or a list of ``{"role", "content"}`` messages ("conversational" format).
The prompt may be explicit (its own column) or implicit (the shared leading part of
``chosen`` and ``rejected``, which is split off on load exactly as TRL's ``extract_prompt`` does).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

Message = dict[str, str]
Text = Union[str, list[Message]]


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
