"""The data intervention that edits (method.md §6, step 4): cut a concept's words out of the
responses that carry it, and keep the pair.

Filtering a concept's carriers also removes everything else those pairs teach; editing removes
only the concept. For a concept marked ``suppress`` the chosen response of each carrier pair is
edited (for ``amplify``, the rejected one, so that the chosen side keeps the concept and the
rejected side loses it). Which words: the response is read through M0 and the SAE token by token,
as the cards do. The concept's activation per token is the sum of its latents' codes. The *runs*
are maximal stretches of tokens where it is positive. A run is cut when its peak reaches
``fraction`` of the median peak over the concept's carriers: where the concept is what the pair
carries it peaks there, and a word it only touches elsewhere stays. The text of a cut run, decoded from its tokens, is found in the
response and removed, widened to whole words (a run that covers "hel" of "helps" removes the
word; "well-known" is one word) and to quotes or brackets left empty, with the space before it. Only text found in the response is ever removed, whatever the
chat template adds around it.

Where a run lies in the text comes from where its tokens fall in the decoded token stream, not
from searching for its words (which may occur elsewhere too). Only the cut characters change;
the rest of the response, its whitespace included, is left as it was. A pair is left as it was,
and the reason recorded per concept, when its response is not a plain string (a list of chat
messages), cannot be encoded, or its cut tokens do not line up with its text (a run inside a
multi-byte character). It is dropped, and recorded, when the edited response is empty or equals
the other side. An edited pair gets a new id (its content changed), with ``edited_from``, its id
in the input, in its metadata; an edit that makes a pair a copy of another is listed in the
manifest (``copies_made``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from headwater.audit.cards import Decision
from headwater.audit.features import FeatureStore, captured_chunks
from headwater.audit.interventions import ACTING, carriers
from headwater.audit.sae import SparseAutoencoder
from headwater.data import PreferenceDataset, PreferencePair, make_pair
from headwater.data.pairs import free_id
from headwater.engine.capture import DEFAULT_MAX_TOKENS_PER_BATCH
from headwater.engine.tokenization import TokenizationSettings

EDITED_FROM = "edited_from"
_EXAMPLES = 5


@dataclass(frozen=True)
class Cut:
    """The outcome of cutting one response: the new text (``None`` when nothing was cut), what was
    removed, why nothing was, and how many runs over the threshold could not be placed."""

    text: str | None
    removed: list[str]
    reason: str = ""
    runs_lost: int = 0


_END = ".!?,;:"
_JOINERS = "-'’"  # inside a word when a letter or digit is on both sides ("well-known", "don't")
_PAIRS = {'"': '"', "'": "'", "“": "”", "‘": "’", "(": ")", "[": "]", "«": "»"}


def _in_word(text: str, i: int) -> bool:
    """Whether character i belongs to a word: a letter or digit, or a joiner between two."""
    if text[i].isalnum():
        return True
    return (text[i] in _JOINERS and 0 < i < len(text) - 1 and text[i - 1].isalnum() and text[i + 1].isalnum())


def _opens(text: str, i: int) -> bool:
    """Whether character i opens a quote or bracket: a pair's opening mark not glued to the word
    before it (the '"' after "yes" in '"yes"Hope' closes; the "(" of "f(x)" is code)."""
    return text[i] in _PAIRS and (i == 0 or not text[i - 1].isalnum())


def _closing(text: str, stop: int, close: str) -> int | None:
    """The end of ``close`` at ``stop``, after any sentence marks before it ('helps!"'), or None."""
    j = stop
    while j < len(text) and text[j] in _END:
        j += 1
    return j + 1 if j < len(text) and text[j] == close else None


def _emptied_pair(text: str, start: int, stop: int) -> tuple[int, int] | None:
    """[start, stop) widened by one quote or bracket pair that the cut would leave holding nothing
    but sentence marks, or None. The cut may already hold one of the two marks (tokens such as
    '."' carry them)."""
    if start > 0 and _opens(text, start - 1):
        close = _PAIRS[text[start - 1]]
        if text[stop - 1] == close and close not in text[start:stop - 1]:  # the cut took the closing mark
            return start - 1, stop
        end = _closing(text, stop, close)
        if end is not None:
            return start - 1, end
    if _opens(text, start) and _PAIRS[text[start]] not in text[start + 1:stop]:  # the cut took the opening mark
        end = _closing(text, stop, _PAIRS[text[start]])
        if end is not None:
            return start, end
    return None


def _word_bounds(text: str, start: int, stop: int) -> tuple[int, int]:
    """[start, stop) widened to whole words (only where its own edge is a letter or digit; a
    hyphen or apostrophe between letters is inside a word), then to the quotes or brackets around
    it when nothing but sentence marks would be left between them ('said "hello" to' and 'Thanks.
    "Hope this helps!"' lose the quotes too), then to one space before it (or, at the start of a
    line or after an opening quote or bracket, after it), and to a punctuation mark after it when
    one ends the text before it too ("day. Hope this helps!" loses " Hope this helps!")."""
    if start < stop and text[start].isalnum():
        while start > 0 and _in_word(text, start - 1):
            start -= 1
    if start < stop and text[stop - 1].isalnum():
        while stop < len(text) and _in_word(text, stop):
            stop += 1
    while start < stop and (wider := _emptied_pair(text, start, stop)) is not None:
        start, stop = wider
    before = text[:start].rstrip(" \t")
    if stop < len(text) and text[stop] in _END and (not before or before[-1] in _END + "\n"):
        stop += 1
    if start > 0 and text[start - 1] in " \t":
        start -= 1
    elif start == 0 or text[start - 1] == "\n" or _opens(text, start - 1):
        if stop < len(text) and text[stop] in " \t":
            stop += 1
    return start, stop


def _run_spans(response: str, token_ids: Sequence[int], runs: list[list[int]], tokenizer: Any
               ) -> tuple[list[tuple[int, int]], int]:
    """Each run's [start, stop) characters in ``response``, from where its tokens fall in the
    decoded token stream (never from searching its text, which may occur elsewhere too); and the
    number of runs that do not line up with the response's text (left uncut)."""
    decoded = tokenizer.decode(list(token_ids), skip_special_tokens=True)
    offset = decoded.find(response)  # a chat template may wrap the response in plain text
    if offset < 0:
        return [], len(runs)
    spans, lost = [], 0
    for run in runs:
        start = len(tokenizer.decode(list(token_ids[:run[0]]), skip_special_tokens=True)) - offset
        stop = len(tokenizer.decode(list(token_ids[:run[-1] + 1]), skip_special_tokens=True)) - offset
        start, stop = max(start, 0), min(stop, len(response))
        piece = tokenizer.decode([int(token_ids[i]) for i in run], skip_special_tokens=True)
        if not piece or stop <= start or response[start:stop] != piece:
            lost += 1  # a run inside a multi-byte character, or reaching outside the response's own text
            continue
        while start < stop and response[start].isspace():
            start += 1
        while stop > start and response[stop - 1].isspace():
            stop -= 1
        if stop > start:
            spans.append((start, stop))
    return spans, lost


def cut_concept(response: Any, token_ids: Sequence[int], activations: np.ndarray, tokenizer: Any, *,
                threshold: float) -> Cut:
    """Cut the runs of a concept from one response (see the module docstring).

    Args:
        response: the response as stored in the pair (only a plain string is edited).
        token_ids: [t] the response's tokens as the model read them.
        activations: [t] the concept's activation on each of them.
        threshold: a run is cut when its peak reaches this value (> 0).
    """
    if not isinstance(response, str):
        return Cut(None, [], "not a plain-string response")
    values = np.asarray(activations, dtype=np.float64)
    peak = float(values.max()) if values.size else 0.0
    if peak < threshold or peak <= 0:
        return Cut(None, [], "the concept is not active enough in the response")
    runs, run = [], []
    for position, value in enumerate([*values.tolist(), 0.0]):
        if value > 0 and position < values.size:
            run.append(position)
            continue
        if run and values[run].max() >= threshold:
            runs.append(run)
        run = []
    spans, lost = _run_spans(response, token_ids, runs, tokenizer)
    if not spans:
        return Cut(None, [], "the cut tokens do not line up with the response's text", lost)
    out, removed, last = [], [], 0
    for start, stop in (_word_bounds(response, a, b) for a, b in spans):
        start = max(start, last)
        if stop > start:
            out.append(response[last:start])
            removed.append(response[start:stop].strip())
            last = stop
    out.append(response[last:])
    return Cut("".join(out), removed, "", lost)


@torch.no_grad()
def concept_token_activations(model: Any, tokenizer: Any, sae: SparseAutoencoder, layer: int, prompts: Sequence[Any],
                              responses: Sequence[Any], latents: Sequence[int],
                              settings: TokenizationSettings = TokenizationSettings(), *, chunk: int = 256,
                              max_tokens_per_batch: int = DEFAULT_MAX_TOKENS_PER_BATCH
                              ) -> list[tuple[list[int], np.ndarray] | None]:
    """Per response: (its token ids, [t] float64 the sum of ``latents``' codes on each token), read
    through ``model`` at ``layer``; None for a response that cannot be encoded (empty, over-long
    under "skip", or the wrong format)."""
    sae = sae.inference_form()
    wanted = torch.zeros(sae.d_sae, dtype=torch.bool)
    wanted[torch.tensor(list(latents), dtype=torch.long)] = True
    out: list[tuple[list[int], np.ndarray] | None] = [None] * len(responses)
    for rows, captured in captured_chunks(model, tokenizer, layer, prompts, responses, settings, chunk=chunk,
                                          max_tokens_per_batch=max_tokens_per_batch):
        code = sae.encode_sparse(captured.activations)  # never a dense [tokens, d_sae] matrix
        keep = wanted[code.indices]
        values = torch.zeros(captured.activations.shape[0], dtype=torch.float64)
        values.index_add_(0, code.rows[keep], code.values[keep].double())
        values = values.numpy()
        offset = 0
        for i, length in zip(rows, captured.lengths):
            out[i] = (captured.token_ids[offset:offset + length].tolist(), values[offset:offset + length])
            offset += length
    return out


def edit_carriers(dataset: PreferenceDataset, decisions: Sequence[Decision], store: FeatureStore, model: Any,
                  tokenizer: Any, sae: SparseAutoencoder, layer: int, *,
                  settings: TokenizationSettings = TokenizationSettings(), margin: float = 1.0,
                  pooling: str = "mean", topics: dict[str, int] | None = None, centroids: np.ndarray | None = None,
                  fraction: float = 0.5) -> tuple[PreferenceDataset, dict[str, Any]]:
    """Edit the carriers of each acted-on concept (see the module docstring and
    :func:`~headwater.audit.interventions.carriers` for which pairs carry it). Concepts are
    applied in order; a pair carrying two is read again after the first edit.

    Returns the edited dataset (the original order; dropped pairs left out) and a manifest like
    :func:`~headwater.methods.interventions.intervene`'s, with per-concept counts, the pairs left
    unedited and why, and a few examples.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    prompts = {p.pair_id: p.prompt for p in dataset}
    current: dict[str, PreferencePair] = {p.pair_id: p for p in dataset}  # original id → its pair now
    acting = [d for d in decisions if d.decision in ACTING]
    per_concept, examples, dropped = {}, [], []
    for decision in acting:
        found = carriers([decision], store, margin=margin, pooling=pooling, prompts=prompts, topics=topics,
                         centroids=centroids).pair_ids
        missing = [pid for pid in found if pid not in current and pid not in dropped]
        if missing:
            raise ValueError(f"{len(missing)} carrier pairs are not in the dataset (features of other data?), "
                             f"e.g. {missing[:3]}")
        record = {"carriers": len(found), "edited": 0, "dropped": 0, "unedited": {}, "runs_lost": 0}
        per_concept[decision.concept] = record

        def leave(reason: str, count: int = 1) -> None:
            record["unedited"][reason] = record["unedited"].get(reason, 0) + count

        gone = [pid for pid in found if pid not in current]
        if gone:
            leave("dropped by an earlier concept's edit", len(gone))
        side = "chosen" if decision.decision == "suppress" else "rejected"
        found = [pid for pid in found if pid in current]
        plain = [pid for pid in found if isinstance(getattr(current[pid], side), str)]
        if len(plain) < len(found):
            leave("not a plain-string response", len(found) - len(plain))
        texts = [getattr(current[pid], side) for pid in plain]
        read = concept_token_activations(model, tokenizer, sae, layer, [current[pid].prompt for pid in plain], texts,
                                         decision.latents, settings)
        peaks = [float(t[1].max()) for t in read if t is not None and t[1].size and t[1].max() > 0]
        # half the concept's typical peak where it is active; a carrier it touches only lightly stays
        threshold = fraction * float(np.median(peaks)) if peaks else None
        record["threshold"] = threshold
        for pid, text, tokens in zip(plain, texts, read):
            pair = current[pid]
            if tokens is None or threshold is None:
                leave("the response cannot be encoded" if tokens is None else "the concept is never active")
                continue
            cut = cut_concept(text, tokens[0], tokens[1], tokenizer, threshold=threshold)
            record["runs_lost"] += cut.runs_lost
            if cut.text is None:
                leave(cut.reason)
                continue
            other = pair.rejected if side == "chosen" else pair.chosen
            if not cut.text.strip() or cut.text.strip() == str(other).strip():
                dropped.append(pid)
                record["dropped"] += 1
                del current[pid]
                continue
            sides = (cut.text, pair.rejected) if side == "chosen" else (pair.chosen, cut.text)
            current[pid] = make_pair(pair.prompt, *sides, row=pair.row, source=pair.source,
                                     metadata={**pair.metadata, EDITED_FROM: pid})
            record["edited"] += 1
            if len(examples) < _EXAMPLES:
                examples.append({"pair_id": pid, "concept": decision.concept, "side": side, "before": text,
                                 "after": cut.text, "removed": cut.removed})
    out, changed, copies = [], [], []
    taken = {p.pair_id for p in dataset}  # an edited pair's new id clashes with no pair's old one
    for pair in dataset:
        if pair.pair_id not in current:
            continue
        now = current[pair.pair_id]
        if now is not pair:
            new_id = free_id(now.pair_id, taken)
            if new_id != now.pair_id:  # the edit made it a copy of another pair: reported
                copies.append(new_id)
            now = PreferencePair(new_id, now.prompt, now.chosen, now.rejected, now.row, now.source, now.metadata)
            changed.append(pair.pair_id)
        taken.add(now.pair_id)
        out.append(now)
    result = PreferenceDataset(out, source=dataset.source)
    manifest = {
        "mode": "edit", "source": dataset.source, "n_input": len(dataset), "input_fingerprint": dataset.fingerprint,
        "changed_pair_ids": changed, "dropped_pair_ids": dropped, "n_changed": len(changed) + len(dropped),
        "n_edited": len(changed), "n_dropped": len(dropped), "n_output": len(result),
        "output_fingerprint": result.fingerprint, "per_concept": per_concept, "copies_made": copies,
        "fraction": fraction, "margin": margin, "pooling": pooling, "examples": examples,
        "decisions": [{"concept": d.concept, "decision": d.decision, "latents": list(d.latents)} for d in decisions],
    }
    return result, manifest


__all__ = ["Cut", "EDITED_FROM", "concept_token_activations", "cut_concept", "edit_carriers"]
