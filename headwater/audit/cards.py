"""Concept cards and the feedback file (method.md §6, step 3).

A card shows a person what a concept is: a label from the tokens where it is most active, its
statistics, and its top contributing pairs with every response token highlighted by the concept's
activation (the latent's value, or the sum over a cluster's latents), recomputed from the model
for those few pairs only.

The feedback file is plain tab-separated text, one concept per line::

    concept	decision	latents	d	label
    c3	suppress	12,40,41	0.52	"sure", "great", "!"

``decision`` is one of keep, suppress, amplify, ignore; a person edits that column. Reading it
back checks every line and names the first one that does not fit.
"""
from __future__ import annotations

import csv
import html
import io
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from headwater.audit.sae import SparseAutoencoder
from headwater.engine import atomic
from headwater.engine.capture import pad_token_id_of, response_token_activations
from headwater.engine.tokenization import TokenizationSettings, encode_response

DECISIONS = ("keep", "suppress", "amplify", "ignore")
FEEDBACK_COLUMNS = ("concept", "decision", "latents", "d", "label")


@dataclass(frozen=True)
class HighlightedResponse:
    """A response's tokens (decoded one by one) and the concept's activation on each."""

    tokens: list[str]
    activations: list[float]


def _highlight(model: Any, tokenizer: Any, sae: SparseAutoencoder, layer: int, latents: Sequence[int],
               prompt: Any, responses: Sequence[Any], settings: TokenizationSettings) -> list[HighlightedResponse]:
    encoded = [encode_response(tokenizer, prompt, r, settings) for r in responses]
    captured = response_token_activations(model, encoded, layer, pad_token_id=pad_token_id_of(tokenizer))
    dense = sae.encode(captured.activations)[:, list(latents)].sum(dim=1)
    out, start = [], 0
    for length in captured.lengths:
        ids = captured.token_ids[start:start + length].tolist()
        tokens = [tokenizer.decode([i]) for i in ids]
        out.append(HighlightedResponse(tokens, [float(v) for v in dense[start:start + length]]))
        start += length
    return out


def marked_text(response: dict[str, Any], limit: int | None = None) -> str:
    """A highlighted response as plain text, each run of active tokens in [brackets] (one line,
    at most ``limit`` characters)."""
    marked, inside = [], False
    for token, value in zip(response["tokens"], response["activations"]):
        if value > 0 and not inside:
            marked.append("[")
        if value <= 0 and inside:
            marked.append("]")
        inside = value > 0
        marked.append(token)
    if inside:
        marked.append("]")
    text = " ".join("".join(marked).split())
    return text if limit is None or len(text) <= limit else text[:limit - 1] + "…"


def active_spans(response: HighlightedResponse) -> list[tuple[str, float]]:
    """Runs of consecutive tokens where the concept is active: (their text, stripped; their summed
    activation)."""
    spans, text, weight = [], "", 0.0
    for token, value in zip(response.tokens + [""], response.activations + [0.0]):
        if value > 0:
            text, weight = text + token, weight + value
        elif text:
            spans.append((text.strip() or text, weight))
            text, weight = "", 0.0
    return spans


def concept_cards(model: Any, tokenizer: Any, sae: SparseAutoencoder, layer: int, pairs: Sequence[Any],
                  concepts: Sequence[dict[str, Any]], settings: TokenizationSettings = TokenizationSettings(),
                  *, pairs_per_card: int = 3, label_spans: int = 3) -> list[dict[str, Any]]:
    """A card per concept (rows of :meth:`AuditResult.concepts`): label, statistics, top pairs.

    The label lists the text spans (runs of consecutive active tokens, so that words split into
    sub-word tokens read whole) that carry the most activation in the top pairs' responses.

    Empty or over-long responses of a top pair are shown without highlights rather than failing.
    """
    cards = []
    sae = sae.inference_form()  # once, not per example
    with torch.no_grad():
        for concept in concepts:
            examples, spans = [], Counter()
            for position in concept["top_pairs"][:pairs_per_card]:
                pair = pairs[position]
                try:
                    chosen, rejected = _highlight(model, tokenizer, sae, layer, concept["latents"], pair.prompt,
                                                  [pair.chosen, pair.rejected], settings)
                except ValueError as err:
                    examples.append({"pair_id": pair.pair_id, "position": position, "error": str(err)})
                    continue
                for response in (chosen, rejected):
                    for text, weight in active_spans(response):
                        spans[text] += weight
                examples.append({"pair_id": pair.pair_id, "position": position, "prompt": pair.prompt,
                                 "chosen": chosen.__dict__, "rejected": rejected.__dict__})
            label = ", ".join(repr(t) for t, _ in spans.most_common(label_spans)) or "(no active token)"
            cards.append({**concept, "label": label, "examples": examples})
    return cards


def _render_tokens(response: dict[str, Any], scale: float) -> str:
    spans = []
    for token, value in zip(response["tokens"], response["activations"]):
        alpha = min(1.0, value / scale) if scale > 0 and value > 0 else 0.0
        title = f' title="{value:.3g}"' if value > 0 else ""
        spans.append(f'<span style="background: rgba(255,140,0,{alpha:.2f})"{title}>{html.escape(token)}</span>')
    return "".join(spans)


def _title(card: dict[str, Any]) -> str:
    """A card's name: the LLM's label with the spans beside it, or the spans alone."""
    return f"{card['llm_label']} (spans: {card['label']})" if card.get("llm_label") else card["label"]


def _what(card: dict[str, Any]) -> str:
    """What kind of concept a card shows, and of how many latents."""
    if card.get("kind") == "response":
        return f"response cluster, set apart by {len(card['latents'])} latent(s)"
    return f"{card['kind']} of {len(card['latents'])} latent(s)"


def _scope(card: dict[str, Any]) -> str:
    """Where a concept's statistics come from, when not from every pair."""
    if card.get("kind") in ("topic", "response") and "topic" in card:
        return f" within prompt topic t{card['topic']} ({card.get('topic_label', '')}, {card['n_pairs']} pairs)"
    return ""


def render_cards_html(cards: Sequence[dict[str, Any]]) -> str:
    """An HTML section with one card per concept, tokens shaded by the concept's activation."""
    parts = ['<section class="concept-cards"><h2>Concepts</h2>']
    for card in cards:
        low, high = card["ci95"]
        parts.append(
            f'<div class="card"><h3>{html.escape(card["concept"])}: {html.escape(_title(card))}</h3>'
            f'<p>{html.escape(_what(card))}{html.escape(_scope(card))}; Δ = {card["delta"]:.4g} '
            f'[{low:.4g}, {high:.4g}], d = {card["d"]:.3g}, q = {card["q"]:.3g}; fires on {card["side"]} '
            f'(chosen {card["chosen_rate"]:.0%}, rejected {card["rejected_rate"]:.0%}); split halves '
            f'{"agree" if card["split_half_agree"] else "disagree"}</p>'
        )
        scale = max((v for ex in card["examples"] if "chosen" in ex
                     for side in ("chosen", "rejected") for v in ex[side]["activations"]), default=0.0)
        for ex in card["examples"]:
            if "error" in ex:
                parts.append(f'<p>pair {html.escape(ex["pair_id"])}: {html.escape(ex["error"])}</p>')
                continue
            parts.append(
                f'<p><b>pair {html.escape(ex["pair_id"])}</b>: {html.escape(str(ex["prompt"]))}</p>'
                f'<p>chosen: {_render_tokens(ex["chosen"], scale)}</p>'
                f'<p>rejected: {_render_tokens(ex["rejected"], scale)}</p>'
            )
        parts.append("</div>")
    parts.append("</section>")
    return "\n".join(parts)


def format_cards(cards: Sequence[dict[str, Any]]) -> str:
    """Plain-text cards for the terminal."""
    lines = []
    for card in cards:
        low, high = card["ci95"]
        lines.append(f"{card['concept']} ({_what(card)}{_scope(card)}): {_title(card)}")
        lines.append(f"  Δ {card['delta']:+.4g} [{low:+.4g}, {high:+.4g}]  d {card['d']:+.3f}  q {card['q']:.2g}  "
                     f"fires on {card['side']} ({card['chosen_rate']:.0%} / {card['rejected_rate']:.0%})")
        for ex in card["examples"][:2]:
            if "chosen" in ex:
                lines.append(f"  {ex['pair_id']} chosen: {marked_text(ex['chosen'], 160)}")
    return "\n".join(lines)


def write_feedback_template(concepts: Sequence[dict[str, Any]], path: str | os.PathLike[str],
                            *, labels: dict[str, str] | None = None) -> Path:
    """A feedback file listing ``concepts`` with decision ``keep`` for a person to edit."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
    writer.writerow(FEEDBACK_COLUMNS)
    for c in concepts:
        label = (labels or {}).get(c["concept"], c.get("label", ""))
        writer.writerow([c["concept"], "keep", ",".join(str(v) for v in c["latents"]), f"{c['d']:.4f}", label])
    return atomic.write_text(path, buffer.getvalue())


@dataclass(frozen=True)
class Decision:
    """One line of a feedback file."""

    concept: str
    decision: str
    latents: tuple[int, ...]


def read_feedback(path: str | os.PathLike[str]) -> list[Decision]:
    """The decisions of a feedback file; a line that does not fit is named with its problem."""
    text = Path(path).read_text(encoding="utf-8")
    rows = list(csv.reader(io.StringIO(text), delimiter="\t"))
    if not rows or [h.strip() for h in rows[0][:3]] != list(FEEDBACK_COLUMNS[:3]):
        raise ValueError(f"{path}: the first line must be the header {' '.join(FEEDBACK_COLUMNS)} (tab-separated)")
    decisions, seen = [], set()
    for number, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) < 3:
            raise ValueError(f"{path}, line {number}: expected concept, decision and latents, got {row}")
        concept, decision, latents = row[0].strip(), row[1].strip().lower(), row[2].strip()
        if decision not in DECISIONS:
            raise ValueError(f"{path}, line {number}: decision {row[1]!r} is not one of {', '.join(DECISIONS)}")
        if concept in seen:
            raise ValueError(f"{path}, line {number}: concept {concept!r} appears twice")
        try:
            ids = tuple(int(v) for v in latents.split(",") if v.strip())
        except ValueError:
            raise ValueError(f"{path}, line {number}: latents must be comma-separated integers, got {latents!r}") from None
        if not ids or min(ids) < 0:
            raise ValueError(f"{path}, line {number}: concept {concept!r} lists no valid latent")
        seen.add(concept)
        decisions.append(Decision(concept, decision, ids))
    return decisions


__all__ = ["DECISIONS", "Decision", "HighlightedResponse", "active_spans", "concept_cards", "marked_text", "format_cards", "read_feedback",
           "render_cards_html", "write_feedback_template"]
