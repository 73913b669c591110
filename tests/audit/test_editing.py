"""The editing data intervention: cutting a concept's words out of a response."""
from __future__ import annotations

import numpy as np

from headwater.audit.editing import cut_concept


def _tokens(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _active_on(tokenizer, ids: list[int], words: str, value: float = 2.0) -> np.ndarray:
    """[t] activations: ``value`` on the tokens that decode inside the first occurrence of ``words``."""
    text, spans = "", []
    for token in ids:
        piece = tokenizer.decode([token])
        spans.append((len(text), len(text) + len(piece)))
        text += piece
    begin = text.index(words)
    return np.array([value if s >= begin and e <= begin + len(words) and e > s else 0.0 for s, e in spans])


def test_a_sign_off_is_cut_whole_with_its_space_and_mark(tiny_tokenizer):
    text = "Practice daily. Hope this helps!"
    ids = _tokens(tiny_tokenizer, text)
    cut = cut_concept(text, ids, _active_on(tiny_tokenizer, ids, "Hope this helps"), tiny_tokenizer, threshold=1.0)
    assert cut.text == "Practice daily." and cut.removed == ["Hope this helps!"]


def test_a_run_inside_a_word_removes_the_word_and_weak_runs_stay(tiny_tokenizer):
    text = "Ask for help. It helps a lot."
    ids = _tokens(tiny_tokenizer, text)
    strong = _active_on(tiny_tokenizer, ids, "hel")  # the first "hel", inside "help"
    weak = _active_on(tiny_tokenizer, ids, "lot", value=0.5)
    cut = cut_concept(text, ids, strong + weak, tiny_tokenizer, threshold=1.0)
    assert cut.text == "Ask for. It helps a lot." and cut.removed == ["help"]


def test_nothing_is_cut_when_the_concept_is_weak_absent_or_the_text_is_not_found(tiny_tokenizer):
    text = "Practice daily. Hope this helps!"
    ids = _tokens(tiny_tokenizer, text)
    active = _active_on(tiny_tokenizer, ids, "Hope")
    assert cut_concept(text, ids, active, tiny_tokenizer, threshold=5.0).reason.startswith("the concept is not active")
    assert cut_concept(text, ids, np.zeros(len(ids)), tiny_tokenizer, threshold=1.0).text is None
    other = "Something else entirely."
    assert cut_concept(other, ids, active, tiny_tokenizer, threshold=1.0).reason == "no cut text is found in the response"
    messages = [{"role": "assistant", "content": text}]
    assert cut_concept(messages, ids, active, tiny_tokenizer, threshold=1.0).reason == "not a plain-string response"
    # a cut at the very start takes the space after it
    start = _active_on(tiny_tokenizer, ids, "Practice")
    assert cut_concept(text, ids, start, tiny_tokenizer, threshold=1.0).text == "daily. Hope this helps!"
