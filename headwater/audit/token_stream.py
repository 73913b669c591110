"""Response-token activations of a preference dataset, streamed in a seeded, resumable order.

An SAE trains on the activations at block ℓ of every response token (chosen and rejected) of the
pre-DPO model. The dataset is read in chunks of pairs; each epoch visits the chunks in a seeded
random order, and a position (epoch, chunk) says exactly where a stream stands, so a resumed run
continues with the very next chunk. Only one chunk's activations exist at a time.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from headwater.engine.capture import (
    DEFAULT_MAX_TOKENS_PER_BATCH,
    ResponseTokens,
    pad_token_id_of,
    response_token_activations,
)
from headwater.engine.tokenization import EncodedResponse, TokenizationSettings, encode_pairs


@dataclass(frozen=True)
class StreamPosition:
    """Where a stream stands: the next chunk to read is ``chunk`` of epoch ``epoch``."""

    epoch: int = 0
    chunk: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "chunk": self.chunk}


class ResponseTokenStream:
    """Chunks of response-token activations at block ℓ, epoch after epoch.

    Args:
        model: a transformers causal LM in eval mode (the pre-DPO model M0).
        tokenizer: its tokenizer.
        pairs: the preference pairs (anything :func:`encode_pairs` reads).
        layer: 1-based block ℓ.
        settings: tokenisation settings (recorded with whatever is trained on the stream).
        chunk_pairs: pairs per chunk (one chunk's tokens are in memory at a time).
        seed: seeds every epoch's chunk order.
        max_tokens_per_batch: the forward passes' padded token budget.

    Pairs that cannot be encoded (empty or over-long under ``"skip"``) are left out once, at
    construction, and listed in :attr:`skipped`; :attr:`kept` holds the positions of the others.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        pairs: Sequence[Any],
        layer: int,
        settings: TokenizationSettings = TokenizationSettings(),
        *,
        chunk_pairs: int = 64,
        seed: int = 0,
        max_tokens_per_batch: int = DEFAULT_MAX_TOKENS_PER_BATCH,
    ) -> None:
        if chunk_pairs < 1:
            raise ValueError(f"chunk_pairs must be positive, got {chunk_pairs}")
        self.model, self.tokenizer, self.pairs, self.layer, self.seed = model, tokenizer, pairs, layer, seed
        self.settings = settings
        self.pad_token_id = pad_token_id_of(tokenizer)
        self.max_tokens_per_batch = max_tokens_per_batch
        # One pass to learn which pairs encode and how many response tokens they hold; the token
        # ids themselves are not kept (a chunk is tokenised again when it is read), so memory is a
        # few integers per pair however large the dataset.
        kept: list[int] = []
        self.skipped: list[tuple[int, str]] = []
        n_tokens = 0
        for start in range(0, len(pairs), 4096):
            part = encode_pairs(tokenizer, pairs[start:start + 4096], settings)
            kept.extend(start + k for k in part.kept)
            self.skipped.extend((start + k, why) for k, why in part.skipped)
            n_tokens += sum(c.response_length + r.response_length for c, r in part.encoded)
        if not kept:
            raise ValueError(f"no pair could be encoded; reasons: {self.skipped[:5]}")
        self.kept = np.asarray(kept, dtype=np.int64)
        self.chunk_pairs = chunk_pairs
        self.n_chunks = -(-len(kept) // chunk_pairs)
        self.n_tokens = n_tokens

    def chunk_order(self, epoch: int) -> list[int]:
        """The order in which epoch ``epoch`` visits the chunks (seeded by seed and epoch)."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n_chunks, generator=generator).tolist()

    def read_chunk(self, number: int) -> ResponseTokens:
        """The response-token activations of chunk ``number``: its pairs' chosen and rejected
        responses, pair after pair in dataset order."""
        positions = self.kept[number * self.chunk_pairs:(number + 1) * self.chunk_pairs]
        encoded = encode_pairs(self.tokenizer, [self.pairs[int(i)] for i in positions], self.settings)
        if len(encoded.encoded) != len(positions):  # the same pairs, the same settings: never
            raise RuntimeError("a pair encoded at construction no longer encodes; was the dataset changed?")
        sequences: list[EncodedResponse] = [side for pair in encoded.encoded for side in pair]
        return response_token_activations(self.model, sequences, self.layer, pad_token_id=self.pad_token_id,
                                          max_tokens_per_batch=self.max_tokens_per_batch)

    def chunks(self, start: StreamPosition = StreamPosition()) -> Iterator[tuple[StreamPosition, torch.Tensor]]:
        """Endless (position after the chunk, [n_tokens, d] float32) from ``start`` on."""
        epoch, chunk = start.epoch, start.chunk
        while True:
            order = self.chunk_order(epoch)
            while chunk < self.n_chunks:
                activations = self.read_chunk(order[chunk]).activations
                chunk += 1
                yield StreamPosition(epoch, chunk), activations
            epoch, chunk = epoch + 1, 0


__all__ = ["ResponseTokenStream", "StreamPosition"]
