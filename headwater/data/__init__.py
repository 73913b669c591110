"""Preference data: pairs, their ids, readers, writers and the prompt files of the methods.

- :mod:`~headwater.data.pairs`: :class:`PreferencePair`, the content-hash id rule, row checks;
- :mod:`~headwater.data.dataset`: :class:`PreferenceDataset` and its fingerprint;
- :mod:`~headwater.data.readers`: :func:`load_preferences` (JSONL, Parquet, saved HF datasets);
- :mod:`~headwater.data.writers`: :func:`save_preferences` (TRL's format);
- :mod:`~headwater.data.prompts`: test prompts, labelled responses, scenarios.
"""
from headwater.data.dataset import PreferenceDataset
from headwater.data.pairs import (
    ID_COLUMN,
    PAIR_COLUMNS,
    MalformedRowError,
    Message,
    PreferenceDataWarning,
    PreferencePair,
    SkippedRow,
    Text,
    extract_prompt,
    free_id,
    make_pair,
    pair_id,
)
from headwater.data.prompts import Scenario, load_prompts, load_scenarios, read_labelled_responses, save_scenarios
from headwater.data.readers import iter_jsonl, load_preferences
from headwater.data.writers import save_preferences

__all__ = [
    "ID_COLUMN", "PAIR_COLUMNS", "MalformedRowError", "Message", "PreferenceDataWarning", "PreferenceDataset",
    "PreferencePair", "Scenario", "SkippedRow", "Text", "extract_prompt", "free_id", "iter_jsonl", "load_preferences",
    "load_prompts", "load_scenarios", "make_pair", "pair_id", "read_labelled_responses", "save_preferences",
    "save_scenarios",
]
