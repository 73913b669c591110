"""The editing data intervention: cutting a concept's words out of a response."""
from __future__ import annotations

import numpy as np

from headwater.audit.editing import _word_bounds, cut_concept


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


def test_edit_carriers_keeps_order_reports_copies_and_drops_emptied_pairs(tiny_tokenizer, monkeypatch):
    """The carriers and the token reads are given (they are tested elsewhere); what is checked is
    the bookkeeping: new ids, ``edited_from``, an edit that copies another pair, a dropped pair."""
    import headwater.audit.editing as editing
    from headwater.audit.cards import Decision
    from headwater.audit.interventions import Carriers
    from headwater.data import PreferenceDataset, make_pair

    signed = make_pair("Q", "Practice daily. Hope this helps!", "No.")
    plain = make_pair("Q", "Practice daily.", "No.")  # what the first becomes once edited
    only = make_pair("Q2", "Hope this helps!", "Sure.")  # nothing would be left: dropped
    other = make_pair("Q3", "Fine.", "Bad.")
    data = PreferenceDataset([signed, plain, only, other])
    monkeypatch.setattr(editing, "carriers", lambda *a, **k: Carriers([signed.pair_id, only.pair_id], {}))

    def read(model, tokenizer, sae, layer, prompts, responses, latents, settings):
        out = []
        for text in responses:
            ids = _tokens(tokenizer, text)
            out.append((ids, _active_on(tokenizer, ids, "Hope this helps")))
        return out

    monkeypatch.setattr(editing, "concept_token_activations", read)
    result, manifest = editing.edit_carriers(data, [Decision("c1", "suppress", (1,))], store=None, model=None,
                                             tokenizer=tiny_tokenizer, sae=None, layer=1)
    ids = [p.pair_id for p in result]
    assert ids[1:] == [plain.pair_id, other.pair_id] and ids[0] == plain.pair_id + "#1"
    assert result[0].chosen == "Practice daily." and result[0].metadata["edited_from"] == signed.pair_id
    assert manifest["copies_made"] == [plain.pair_id + "#1"] and manifest["dropped_pair_ids"] == [only.pair_id]
    assert manifest["n_edited"] == 1 and manifest["n_dropped"] == 1 and manifest["n_output"] == 3
    assert manifest["per_concept"]["c1"] == {"carriers": 2, "edited": 1, "dropped": 1, "unedited": {}, "runs_lost": 0,
                                             "threshold": 1.0}


def _cut_piece(text: str, piece: str) -> str:
    """``text`` with the first occurrence of ``piece`` cut as the edit widens it."""
    start = text.index(piece)
    a, b = _word_bounds(text, start, start + len(piece))
    return text[:a] + text[b:]


def test_words_joined_by_a_hyphen_or_apostrophe_and_emptied_quotes_go_whole():
    assert _cut_piece("It is a well-known fact.", "well") == "It is a fact."
    assert _cut_piece("It is a well-known fact.", "known") == "It is a fact."
    assert _cut_piece("I don't know.", "don") == "I know."
    assert _cut_piece('He said "hello" to me.', "hello") == "He said to me."
    assert _cut_piece("See (this) below.", "this") == "See below."
    assert _cut_piece("A - B", "A") == "- B"  # a hyphen between spaces joins nothing
    assert _cut_piece('He said "hello there" to me.', "hello") == 'He said "there" to me.'  # the quotes still hold a word


def test_a_quoted_word_is_cut_with_its_quotes(tiny_tokenizer):
    text = 'He said "hello" to me.'
    ids = _tokens(tiny_tokenizer, text)
    active = _active_on(tiny_tokenizer, ids, "hello")
    assert active.any()
    assert cut_concept(text, ids, active, tiny_tokenizer, threshold=1.0).text == "He said to me."


def test_quotes_and_brackets_holding_only_a_mark_or_cut_in_half_go_too():
    assert _cut_piece('Thanks. "Hope this helps!"', "Hope this helps") == "Thanks."
    assert _cut_piece("day. (Hope this helps!)", "Hope this helps") == "day."
    assert _cut_piece('He said "Hope this helps." and left', 'Hope this helps."') == "He said and left"  # a '."' token
    assert _cut_piece('He said "Hope this helps" and left', '"Hope this helps') == "He said and left"
    assert _cut_piece("I said 'no' and left", "no") == "I said and left"
    # a closing quote glued to a word, and code brackets, are not opened pairs
    assert _cut_piece('He said "yes"Hope this', "Hope") == 'He said "yes" this'
    assert _cut_piece("Call f(x) now", "x") == "Call f() now"
    assert _cut_piece("I don't know 'why' it is", "know") == "I don't 'why' it is"
