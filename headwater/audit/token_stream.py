"""Response-token activations of a preference dataset, streamed in a seeded, resumable order.

An SAE trains on the activations at block ℓ of every response token (chosen and rejected) of the
pre-DPO model. The dataset is read in chunks of pairs; each epoch visits the chunks in a seeded
random order, and a position (epoch, chunk) says exactly where a stream stands, so a resumed run
continues with the very next chunk. Only one chunk's activations exist at a time.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Sequence

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
    construction, and listed in :attr:`skipped`.
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
        encoded = encode_pairs(tokenizer, pairs, settings)
        if not encoded.encoded:
            raise ValueError(f"no pair could be encoded; reasons: {encoded.skipped[:5]}")
        self.model, self.layer, self.seed = model, layer, seed
        self.pad_token_id = pad_token_id_of(tokenizer)
        self.max_tokens_per_batch = max_tokens_per_batch
        self.sequences: list[EncodedResponse] = [side for pair in encoded.encoded for side in pair]
        self.kept, self.skipped = encoded.kept, encoded.skipped
        self.chunk_sequences = 2 * chunk_pairs
        self.n_chunks = -(-len(self.sequences) // self.chunk_sequences)
        self.n_tokens = sum(s.response_length for s in self.sequences)

    def chunk_order(self, epoch: int) -> list[int]:
        """The order in which epoch ``epoch`` visits the chunks (seeded by seed and epoch)."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n_chunks, generator=generator).tolist()

    def read_chunk(self, number: int) -> ResponseTokens:
        """The response-token activations of chunk ``number`` (its sequences in dataset order)."""
        start = number * self.chunk_sequences
        return response_token_activations(
            self.model, self.sequences[start:start + self.chunk_sequences], self.layer,
            pad_token_id=self.pad_token_id, max_tokens_per_batch=self.max_tokens_per_batch,
        )

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
