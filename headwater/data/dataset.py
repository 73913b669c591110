"""An ordered, immutable set of preference pairs with unique ids and one fingerprint."""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, overload

from headwater.data.pairs import ID_COLUMN, PAIR_COLUMNS, PreferencePair, SkippedRow
from headwater.engine.store import fingerprint_ids


class PreferenceDataset(Sequence[PreferencePair]):
    """An ordered, immutable collection of :class:`PreferencePair` with unique ids.

    Attributes:
        source: where the pairs came from (a path or a dataset name).
        skipped: rows left out on load, each a :class:`SkippedRow` (row, line, kind, reason).
        n_duplicates: rows whose content repeated an earlier row's (kept, ``#k`` ids).
        n_identical: kept rows whose chosen equals their rejected.
    """

    def __init__(
        self,
        pairs: Iterable[PreferencePair],
        *,
        source: str = "",
        skipped: Iterable[SkippedRow] = (),
        n_duplicates: int = 0,
        n_identical: int = 0,
    ):
        self._pairs: tuple[PreferencePair, ...] = tuple(pairs)
        self.source = source
        self.skipped: list[SkippedRow] = list(skipped)
        self.n_duplicates = n_duplicates
        self.n_identical = n_identical
        self._index: dict[str, int] = {}
        for i, pair in enumerate(self._pairs):
            if not isinstance(pair, PreferencePair):
                raise TypeError(f"item {i} is {type(pair).__name__}, expected PreferencePair")
            if pair.pair_id in self._index:
                raise ValueError(
                    f"duplicate pair_id {pair.pair_id!r} at positions {self._index[pair.pair_id]} and {i}"
                )
            self._index[pair.pair_id] = i
        self._fingerprint: str | None = None

    def __len__(self) -> int:
        return len(self._pairs)

    @overload
    def __getitem__(self, index: int) -> PreferencePair: ...

    @overload
    def __getitem__(self, index: slice) -> PreferenceDataset: ...

    def __getitem__(self, index: int | slice) -> PreferencePair | PreferenceDataset:
        if isinstance(index, slice):
            return PreferenceDataset(self._pairs[index], source=self.source)
        return self._pairs[index]

    def __iter__(self) -> Iterator[PreferencePair]:
        return iter(self._pairs)

    def __contains__(self, item: object) -> bool:
        """A pair id (str) or a PreferencePair equal to the one stored under its id."""
        if isinstance(item, str):
            return item in self._index
        if isinstance(item, PreferencePair) and item.pair_id in self._index:
            return self._pairs[self._index[item.pair_id]] == item
        return False

    def __repr__(self) -> str:
        return (
            f"PreferenceDataset({len(self)} pairs, source={self.source!r}, "
            f"skipped={len(self.skipped)}, fingerprint={self.fingerprint[:12]}...)"
        )

    @property
    def ids(self) -> list[str]:
        """The pair ids in order."""
        return [pair.pair_id for pair in self._pairs]

    @property
    def fingerprint(self) -> str:
        """sha256 (64 hex digits) over the pair ids in order: equal fingerprints, equal datasets.

        Used to check that a vector store was computed from this dataset.
        """
        if self._fingerprint is None:
            self._fingerprint = fingerprint_ids(pair.pair_id for pair in self._pairs)
        return self._fingerprint

    @property
    def conversational(self) -> bool | None:
        """True for message-list data, False for plain strings, None when empty."""
        return self._pairs[0].conversational if self._pairs else None

    def index_of(self, pair_id: str) -> int:
        """Position of the pair with this id; KeyError naming the id when absent."""
        try:
            return self._index[pair_id]
        except KeyError:
            raise KeyError(f"no pair with id {pair_id!r} in {self.source or 'this dataset'}") from None

    def by_id(self, pair_id: str) -> PreferencePair:
        """The pair with this id; KeyError naming the id when absent."""
        return self._pairs[self.index_of(pair_id)]

    def to_rows(self) -> list[dict[str, Any]]:
        """TRL-format rows: prompt, chosen, rejected, the metadata columns, then ``pair_id``.

        ``datasets.Dataset.from_list(ds.to_rows())`` gives a dataset DPOTrainer accepts.
        """
        return [pair_to_row(pair) for pair in self._pairs]


def pair_to_row(pair: PreferencePair) -> dict[str, Any]:
    clash = set(pair.metadata) & {*PAIR_COLUMNS, ID_COLUMN}
    if clash:
        raise ValueError(f"pair {pair.pair_id}: metadata key(s) {sorted(clash)} clash with the pair columns")
    return {
        "prompt": pair.prompt,
        "chosen": pair.chosen,
        "rejected": pair.rejected,
        **pair.metadata,
        ID_COLUMN: pair.pair_id,
    }
