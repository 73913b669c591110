"""What describes a discovered behaviour to a person: distinguishing words and plain-text cards
(method.md §3, step 5)."""
from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any, Sequence

from headwater.data import Text


_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]")


def words(text: Text) -> list[str]:
    """Lower-cased word and punctuation tokens of a response (message lists: their contents)."""
    if not isinstance(text, str):
        text = " ".join(m["content"] for m in text)
    return _WORD.findall(text.lower())


def distinguishing_words(
    chosen: Sequence[Text], rejected: Sequence[Text], n: int = 10, prior: float = 0.01
) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """Words over-represented in ``chosen`` versus ``rejected`` and the reverse.

    Log-odds ratio with an informative Dirichlet prior (Monroe, Colaresi & Quinn 2008), the
    prior being ``prior`` × the pooled counts; each word's z-score is its log-odds difference
    over its estimated standard deviation. Returns ``(chosen words, rejected words)``, ``n`` each,
    as ``(word, z)`` with z > 0 (chosen side) and z < 0 (rejected side), strongest first.
    """
    a, b = Counter(w for t in chosen for w in words(t)), Counter(w for t in rejected for w in words(t))
    pooled = a + b
    if not pooled:
        return [], []
    alpha = {w: prior * c for w, c in pooled.items()}
    alpha0 = sum(alpha.values())
    na, nb = sum(a.values()), sum(b.values())
    z: dict[str, float] = {}
    for w, aw in alpha.items():
        ya, yb = a[w], b[w]
        delta = math.log((ya + aw) / (na + alpha0 - ya - aw)) - math.log((yb + aw) / (nb + alpha0 - yb - aw))
        z[w] = delta / math.sqrt(1.0 / (ya + aw) + 1.0 / (yb + aw))
    ranked = sorted(z.items(), key=lambda item: (-item[1], item[0]))
    pos = [(w, round(s, 3)) for w, s in ranked if s > 0][:n]
    neg = [(w, round(s, 3)) for w, s in sorted(z.items(), key=lambda item: (item[1], item[0])) if s < 0][:n]
    return pos, neg


def format_cards(discovery: Any, *, width: int = 100) -> str:
    """Plain-text cards of the clusters of a :class:`headwater.methods.discovery.Discovery`."""
    def short(text: Text) -> str:
        s = text if isinstance(text, str) else " | ".join(m["content"] for m in text)
        s = " ".join(s.split())
        return s if len(s) <= width else s[: width - 1] + "…"

    lines = [f"{len(discovery.clusters)} clusters; {len(discovery.near_zero)} near-zero behaviour vectors dropped"]
    for c in discovery.clusters:
        lines += ["", f"cluster {c.cluster_id}: {c.size} behaviour vectors, {len(c.prompts)} prompts, "
                      f"coherence {c.coherence:.2f}"]
        for ex in c.examples:
            lines += [f"  prompt: {short(ex['prompt'])}", f"    M0: {short(ex['m0'])}", f"    M1: {short(ex['m1'])}"]
        if c.judged is not None:
            share = {side: "n/a" if c.judged[side] is None else f"{c.judged[side]:.0%}" for side in ("m0", "m1")}
            unscored = f" ({c.judged['unscored']} unscored)" if c.judged.get("unscored") else ""
            lines.append(f"  judged {c.judged['judge']}: M0 {share['m0']}, M1 {share['m1']} of its responses{unscored}")
        lines.append("  top pairs: " + ", ".join(f"{p} {s:+.3f}" for p, s in c.top_pairs[:5]))
        if c.words_chosen or c.words_rejected:
            lines.append("  chosen words: " + " ".join(w for w, _ in c.words_chosen))
            lines.append("  rejected words: " + " ".join(w for w, _ in c.words_rejected))
    return "\n".join(lines)


__all__ = ["distinguishing_words", "format_cards", "words"]
