"""The editing data intervention: cutting a concept's words out of a response."""
from __future__ import annotations

import numpy as np

from headwater.audit.editing import cut_concept


def _tokens(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _active_on(tokenizer, ids: list[int], words: str, value: float = 2.0, occurrence: int = 0) -> np.ndarray:
    """[t] activations: ``value`` on the tokens that decode inside the given occurrence of ``words``."""
    text, spans = "", []
    for token in ids:
        piece = tokenizer.decode([token])
        spans.append((len(text), len(text) + len(piece)))
        text += piece
    begin = -1
    for _ in range(occurrence + 1):
        begin = text.index(words, begin + 1)
    return np.array([value if s >= begin and e <= begin + len(words) and e > s else 0.0 for s, e in spans])


def _cut(tokenizer, text: str, words: str, occurrence: int = 0, threshold: float = 1.0):
    ids = _tokens(tokenizer, text)
    return cut_concept(text, ids, _active_on(tokenizer, ids, words, occurrence=occurrence), tokenizer,
                       threshold=threshold)


def test_a_sign_off_is_cut_whole_with_its_space_and_mark(tiny_tokenizer):
    cut = _cut(tiny_tokenizer, "Practice daily. Hope this helps!", "Hope this helps")
    assert cut.text == "Practice daily." and cut.removed == ["Hope this helps!"]


def test_the_run_is_cut_where_it_is_not_where_its_text_first_appears(tiny_tokenizer):
    assert _cut(tiny_tokenizer, "I help you and you help me.", "help", occurrence=1).text == "I help you and you me."
    assert _cut(tiny_tokenizer, "This is it.", " is").text == "This it."  # not the "is" inside "This"


def test_a_run_inside_a_word_removes_the_word_and_a_mark_removes_only_itself(tiny_tokenizer):
    text = "Ask for help. It helps a lot."
    ids = _tokens(tiny_tokenizer, text)
    strong = _active_on(tiny_tokenizer, ids, "hel")  # the first "hel", inside "help"
    weak = _active_on(tiny_tokenizer, ids, "lot", value=0.5)  # under the threshold: stays
    cut = cut_concept(text, ids, strong + weak, tiny_tokenizer, threshold=1.0)
    assert cut.text == "Ask for. It helps a lot." and cut.removed == ["help"]
    assert _cut(tiny_tokenizer, "Hope this helps!", "!").text == "Hope this helps"


def test_the_rest_of_the_text_is_left_as_it_was(tiny_tokenizer):
    text = " Here is code:\n    return 1\nHope this helps!"
    assert _cut(tiny_tokenizer, text, "Hope this helps").text == " Here is code:\n    return 1\n"
    assert _cut(tiny_tokenizer, "Practice daily. Hope this helps!", "Practice").text == "daily. Hope this helps!"


def test_nothing_is_cut_when_the_concept_is_weak_absent_or_off_the_text(tiny_tokenizer):
    text = "Practice daily. Hope this helps!"
    ids = _tokens(tiny_tokenizer, text)
    active = _active_on(tiny_tokenizer, ids, "Hope")
    assert cut_concept(text, ids, active, tiny_tokenizer, threshold=5.0).reason.startswith("the concept is not active")
    assert cut_concept(text, ids, np.zeros(len(ids)), tiny_tokenizer, threshold=1.0).text is None
    other = cut_concept("Something else entirely.", ids, active, tiny_tokenizer, threshold=1.0)
    assert other.text is None and other.reason.startswith("the cut tokens do not line up") and other.runs_lost == 1
    messages = [{"role": "assistant", "content": text}]
    assert cut_concept(messages, ids, active, tiny_tokenizer, threshold=1.0).reason == "not a plain-string response"
