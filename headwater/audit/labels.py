"""Concept labels from an LLM on an OpenAI-compatible server (vLLM, llama.cpp's server, a hosted API).

A card's automatic label is the text spans its concept is most active on; a model can read those
spans in their sentences and name the concept in a few words. The request shows the spans and up
to six highlighted contexts ([brackets] around the active spans) and asks for a name of at most
six words. Calls are retried with backoff on 429, 5xx and timeouts (the openai client), replies
are cached on disk, and a call that fails or returns nothing usable is counted and leaves the
label empty: the card keeps its span label, nothing is made up.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from headwater.audit.cards import marked_text
from headwater.methods.llm_judges import KEY_VARIABLES, ReplyCache

PROMPT = (
    "Below are text spans where one feature of a language model is most active, then sentences in which it "
    "fires, with the active spans in [brackets]. Name the concept the feature stands for in at most six words. "
    "Answer with the name only.\n\nSpans: {spans}\n\nSentences:\n{contexts}"
)


@dataclass
class LabelStats:
    """What the labeller did: calls made, replies served from the cache, calls that failed after
    retries, and replies with no usable name."""

    calls: int = 0
    cached: int = 0
    failed: int = 0
    empty: int = 0
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def label_request(card: dict[str, Any]) -> str:
    """The text sent for one card (its span label and highlighted contexts)."""
    contexts = []
    for example in card.get("examples", []):
        for side in ("chosen", "rejected"):
            if side in example and any(v > 0 for v in example[side]["activations"]):
                contexts.append("- " + marked_text(example[side], 300))
    return PROMPT.format(spans=card.get("label", ""), contexts="\n".join(contexts[:6]) or "- (none)")


def clean_label(reply: str | None) -> str | None:
    """The first line of a reply without quotes or a trailing full stop, at most 80 characters;
    None when nothing is left."""
    if not reply:
        return None
    line = next((ln.strip() for ln in reply.strip().splitlines() if ln.strip()), "")
    line = line.strip("\"'`*").removeprefix("Name:").strip().rstrip(".").strip()
    return line[:80] or None


class ConceptLabeler:
    """Names concepts with a model on an OpenAI-compatible chat-completions endpoint.

    Args:
        model: the model name the server serves.
        base_url: e.g. ``http://127.0.0.1:8000/v1``; the key comes from ``$HEADWATER_JUDGE_API_KEY``
            or ``$OPENAI_API_KEY``.
        concurrency: requests in flight.
        cache_dir: where replies are cached (default ``<cache root>/label-replies``).
    """

    def __init__(self, model: str, *, base_url: str | None = None, concurrency: int = 4, max_retries: int = 5,
                 timeout: float = 60.0, max_tokens: int = 24, cache_dir: str | Path | None = None) -> None:
        import openai

        if not model:
            raise ValueError("the labelling model needs a name, e.g. openai:gpt-4o-mini")
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        key = next((os.environ[v] for v in KEY_VARIABLES if os.environ.get(v)), None)
        self.model, self.base_url, self.concurrency, self.max_tokens = model, base_url, concurrency, max_tokens
        self.client = openai.OpenAI(api_key=key or "no-key", base_url=base_url, max_retries=max_retries,
                                    timeout=timeout)
        self._errors = (openai.APIError, openai.APIConnectionError, openai.APITimeoutError)
        from headwater.engine.models import cache_root

        self.cache = ReplyCache(Path(cache_dir) if cache_dir is not None else cache_root() / "label-replies")
        self.stats = LabelStats()
        self._lock = threading.Lock()

    def _count(self, **increments: int) -> None:
        with self._lock:
            for name, value in increments.items():
                setattr(self.stats, name, getattr(self.stats, name) + value)

    def label(self, card: dict[str, Any]) -> str | None:
        """The model's name for one card's concept, or None (failed call, empty reply)."""
        content = label_request(card)
        key = hashlib.sha256(json.dumps({"model": self.model, "url": self.base_url, "content": content,
                                         "max_tokens": self.max_tokens}, sort_keys=True).encode()).hexdigest()
        cached = self.cache.get(key)
        if cached is not None:
            self._count(cached=1)
            return cached["label"]
        self._count(calls=1)
        try:
            reply = self.client.chat.completions.create(
                model=self.model, messages=[{"role": "user", "content": content}], temperature=0.0,
                max_tokens=self.max_tokens,
            )
        except self._errors as err:
            self._count(failed=1)
            with self._lock:
                self.stats.errors.append(f"{type(err).__name__}: {str(err)[:200]}")
            return None
        label = clean_label(reply.choices[0].message.content if reply.choices else None)
        if label is None:
            self._count(empty=1)
            return None
        self.cache.put(key, {"label": label, "model": self.model})
        return label

    def label_cards(self, cards: Sequence[dict[str, Any]]) -> list[str | None]:
        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="headwater-label") as pool:
            return list(pool.map(self.label, cards))


__all__ = ["ConceptLabeler", "LabelStats", "clean_label", "label_request"]
