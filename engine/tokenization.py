"""Tokenisation of (prompt, response) with exact response-token masks, the way TRL trains on them.

Two formats:

- ``"raw"`` (the attribution paper): the prompt text immediately followed by the response text,
  no chat template. As in TRL 1.16's non-conversational path, the EOS token text is appended to
  the response (``add_eos``), and ``prompt`` and ``prompt + response`` are tokenised jointly with
  the tokenizer's special tokens (BOS where the tokenizer adds one).
- ``"chat"``: the tokenizer's chat template, as TRL's conversational path: the prompt is rendered
  with ``add_generation_prompt=True``; prompt plus response is rendered as one conversation.

In both, the response starts where the tokenised prompt and the tokenised prompt+response stop
agreeing (TRL's ``common_prefix_length``): usually right after the prompt, earlier when a token
merges across the boundary or a template renders the prompt differently on its own. For a pair
the prompt length is the shorter of the two sides, so chosen and rejected share exactly the same
prompt tokens. ``"auto"`` picks ``"chat"`` for message lists and ``"raw"`` for strings.

Over-long sequences (``max_length``) follow ``overlong``:

- ``"truncate"``: keep the first ``max_length`` tokens (TRL's default ``keep_start``); when no
  response token would remain, the row cannot be used and is skipped with its reason.
- ``"skip"``: the row is skipped and recorded with its reason.
- ``"error"``: :class:`OverlongError` names the row.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Iterable, Literal, Sequence

import torch

FORMATS = ("auto", "raw", "chat")
OVERLONG_POLICIES = ("truncate", "skip", "error")


class TokenizationError(ValueError):
    """A (prompt, response) cannot be tokenised as asked."""


class OverlongError(TokenizationError):
    """The sequence is longer than ``max_length`` and the policy does not allow truncating it."""


class EmptyResponseError(TokenizationError):
    """The response has no token, so there is nothing to pool or train on."""


@dataclass(frozen=True)
class TokenizationSettings:
    """How (prompt, response) pairs become token ids; saved with every vector store.

    Attributes:
        format: ``"raw"`` (prompt text + response text, no template; the paper), ``"chat"`` (the
            tokenizer's chat template; TRL's conversational path) or ``"auto"`` (chat for message
            lists, raw for strings).
        max_length: the most tokens of prompt plus response; None means no limit (the paper).
        overlong: ``"truncate"``, ``"skip"`` or ``"error"`` for sequences over ``max_length``.
        add_eos: append the EOS token text to raw responses, as TRL does (ignored for chat,
            whose template ends the turn itself).
    """

    format: Literal["auto", "raw", "chat"] = "auto"
    max_length: int | None = None
    overlong: Literal["truncate", "skip", "error"] = "truncate"
    add_eos: bool = True

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"`format` must be one of {FORMATS}, got {self.format!r}")
        if self.overlong not in OVERLONG_POLICIES:
            raise ValueError(f"`overlong` must be one of {OVERLONG_POLICIES}, got {self.overlong!r}")
        if self.max_length is not None and self.max_length < 2:
            raise ValueError(f"`max_length` must be None or at least 2, got {self.max_length}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class EncodedResponse:
    """Token ids of prompt followed by response.

    Attributes:
        input_ids: prompt tokens then response tokens.
        prompt_length: number of prompt tokens; the response is ``input_ids[prompt_length:]``.
        truncated: whether tokens were cut to fit ``max_length``.
    """

    input_ids: list[int]
    prompt_length: int
    truncated: bool = False

    @property
    def response_length(self) -> int:
        return len(self.input_ids) - self.prompt_length

    @property
    def response_mask(self) -> list[bool]:
        return [i >= self.prompt_length for i in range(len(self.input_ids))]


@dataclass
class PaddedBatch:
    """A padded batch of encoded responses.

    Attributes:
        input_ids: [B, T] int64, padded with the pad token.
        attention_mask: [B, T] int64, 1 on real tokens.
        response_mask: [B, T] bool, True on response tokens.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor


@dataclass
class EncodedPairs:
    """The result of :func:`encode_pairs`: what was encoded, what was skipped and why.

    Attributes:
        encoded: (chosen, rejected) per kept pair, in input order.
        kept: input positions of the kept pairs (``encoded[i]`` belongs to ``pairs[kept[i]]``).
        skipped: (input position, reason) of every pair that could not be encoded.
        n_truncated: how many kept pairs had at least one side truncated.
    """

    encoded: list[tuple[EncodedResponse, EncodedResponse]] = field(default_factory=list)
    kept: list[int] = field(default_factory=list)
    skipped: list[tuple[int, str]] = field(default_factory=list)
    n_truncated: int = 0


def common_prefix_length(ids: Sequence[int], other_ids: Sequence[int]) -> int:
    """Number of leading tokens the two sequences share."""
    n = 0
    for a, b in zip(ids, other_ids):
        if a != b:
            break
        n += 1
    return n


def _is_messages(value: Any) -> bool:
    return isinstance(value, list)


def resolve_format(settings: TokenizationSettings, prompt: Any, response: Any) -> str:
    """The concrete format (``"raw"`` or ``"chat"``) for this prompt and response."""
    if settings.format != "auto":
        return settings.format
    return "chat" if _is_messages(prompt) or _is_messages(response) else "raw"


def settings_as_used(settings: TokenizationSettings, pairs: Sequence[Any]) -> TokenizationSettings:
    """``settings`` with ``format="auto"`` resolved to ``"chat"`` or ``"raw"`` for a dataset (all
    message lists or all strings, so its first pair decides): what a store records, so a reader
    rebuilds the same tokens."""
    if settings.format == "auto" and len(pairs):
        return replace(settings, format=resolve_format(settings, pairs[0].prompt, pairs[0].chosen))
    return settings


def _as_messages(value: Any, role: str) -> list[dict[str, str]]:
    return list(value) if _is_messages(value) else [{"role": role, "content": value}]


def _chat_ids(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool) -> list[int]:
    if getattr(tokenizer, "chat_template", None) is None:
        raise TokenizationError(
            f"format='chat' needs a chat template, and tokenizer {type(tokenizer).__name__} "
            "has none; use format='raw' or set tokenizer.chat_template"
        )
    if not messages:
        raise TokenizationError("the conversation is empty (no prompt turn): the chat template has nothing to render")
    try:
        out = tokenizer.apply_chat_template(
            messages, add_generation_prompt=add_generation_prompt, tokenize=True, return_dict=True
        )
    except Exception as err:  # jinja2 and tokenizers raise their own types; the row is what failed
        raise TokenizationError(f"the chat template cannot render this conversation ({type(err).__name__}: {err})") from None
    return list(out["input_ids"])


def _text_ids(tokenizer: Any, text: str) -> list[int]:
    try:
        return list(tokenizer(text)["input_ids"])
    except (UnicodeError, TypeError, ValueError) as err:  # e.g. a lone surrogate in the text
        raise TokenizationError(f"the text cannot be tokenised ({type(err).__name__}: {err})") from None


def _raw_text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise TokenizationError(
            f"format='raw' needs plain-string {what}s, got {type(value).__name__}; "
            "use format='chat' (or 'auto') for conversational data"
        )
    return value


def encode_prompt(tokenizer: Any, prompt: Any, settings: TokenizationSettings = TokenizationSettings()) -> list[int]:
    """The token ids a model continues from when it answers ``prompt`` (for generation)."""
    if resolve_format(settings, prompt, "") == "chat":
        return _chat_ids(tokenizer, _as_messages(prompt, "user"), add_generation_prompt=True)
    return _text_ids(tokenizer, _raw_text(prompt, "prompt"))


def _full_ids(tokenizer: Any, prompt: Any, response: Any, fmt: str, settings: TokenizationSettings) -> list[int]:
    if fmt == "chat":
        messages = _as_messages(prompt, "user") + _as_messages(response, "assistant")
        return _chat_ids(tokenizer, messages, add_generation_prompt=False)
    text = _raw_text(response, "response")
    eos = getattr(tokenizer, "eos_token", None)
    if settings.add_eos and eos and not text.endswith(eos):
        text = text + eos
    return _text_ids(tokenizer, _raw_text(prompt, "prompt") + text)


def _finish(full_ids: list[int], prompt_length: int, settings: TokenizationSettings) -> EncodedResponse:
    """Apply the empty-response check and the over-long policy."""
    if len(full_ids) <= prompt_length:
        raise EmptyResponseError("the response has no token after the prompt")
    limit = settings.max_length
    if limit is None or len(full_ids) <= limit:
        return EncodedResponse(full_ids, prompt_length)
    if settings.overlong != "truncate":
        raise OverlongError(f"{len(full_ids)} tokens > max_length={limit} (policy '{settings.overlong}')")
    if prompt_length >= limit:
        raise OverlongError(
            f"the prompt alone has {prompt_length} tokens ≥ max_length={limit}: truncation would "
            "leave no response token"
        )
    return EncodedResponse(full_ids[:limit], prompt_length, truncated=True)


def encode_response(
    tokenizer: Any, prompt: Any, response: Any, settings: TokenizationSettings = TokenizationSettings()
) -> EncodedResponse:
    """Token ids of ``prompt`` followed by ``response`` with the response boundary.

    Raises:
        OverlongError: over ``max_length`` and the policy is ``"skip"`` or ``"error"``, or nothing
            of the response would survive truncation.
        EmptyResponseError: the response has no token.
        TokenizationError: the format does not fit the data (e.g. messages with ``"raw"``).
    """
    fmt = resolve_format(settings, prompt, response)
    prompt_ids = encode_prompt(tokenizer, prompt, TokenizationSettings(format=fmt))
    full_ids = _full_ids(tokenizer, prompt, response, fmt, settings)
    return _finish(full_ids, common_prefix_length(prompt_ids, full_ids), settings)


def encode_pair(
    tokenizer: Any, pair: Any, settings: TokenizationSettings = TokenizationSettings()
) -> tuple[EncodedResponse, EncodedResponse]:
    """(chosen, rejected) of a preference pair, sharing exactly the same prompt tokens.

    ``pair`` is anything with ``prompt``, ``chosen`` and ``rejected`` attributes (a
    :class:`headwater.data.PreferencePair`). Raises as :func:`encode_response`.
    """
    fmt = resolve_format(settings, pair.prompt, pair.chosen)
    prompt_ids = encode_prompt(tokenizer, pair.prompt, TokenizationSettings(format=fmt))
    chosen_ids = _full_ids(tokenizer, pair.prompt, pair.chosen, fmt, settings)
    rejected_ids = _full_ids(tokenizer, pair.prompt, pair.rejected, fmt, settings)
    # TRL takes the shorter common prefix so that both sides see the same prompt tokens.
    prompt_length = min(
        common_prefix_length(prompt_ids, chosen_ids), common_prefix_length(prompt_ids, rejected_ids)
    )
    return _finish(chosen_ids, prompt_length, settings), _finish(rejected_ids, prompt_length, settings)


def encode_pairs(
    tokenizer: Any, pairs: Iterable[Any], settings: TokenizationSettings = TokenizationSettings()
) -> EncodedPairs:
    """Encode many pairs, applying the over-long policy; nothing is dropped without a reason.

    Raises:
        OverlongError: with ``overlong="error"``, naming the pair's position and id.
        TokenizationError: a pair whose format does not fit, naming it.
    """
    result = EncodedPairs()
    for position, pair in enumerate(pairs):
        name = f"pair {position} (id {getattr(pair, 'pair_id', '?')})"
        try:
            chosen, rejected = encode_pair(tokenizer, pair, settings)
        except OverlongError as err:
            if settings.overlong == "error":
                raise OverlongError(f"{name}: {err}") from None
            result.skipped.append((position, f"overlong: {err}"))
            continue
        except EmptyResponseError as err:
            result.skipped.append((position, f"empty response: {err}"))
            continue
        except TokenizationError as err:
            raise type(err)(f"{name}: {err}") from None
        result.encoded.append((chosen, rejected))
        result.kept.append(position)
        result.n_truncated += int(chosen.truncated or rejected.truncated)
    return result


def round_up(n: int, multiple: int) -> int:
    """``n`` rounded up to a multiple of ``multiple`` (≥ 1)."""
    return -(-n // multiple) * multiple


def pad_batch(
    encoded: Sequence[EncodedResponse],
    pad_token_id: int,
    *,
    side: Literal["right", "left"] = "right",
    pad_multiple: int = 1,
) -> PaddedBatch:
    """Stack encoded sequences into [B, T] tensors (T = the longest sequence, rounded up to a
    multiple of ``pad_multiple``)."""
    if not encoded:
        raise ValueError("pad_batch needs at least one sequence")
    if side not in ("right", "left"):
        raise ValueError(f"`side` must be 'right' or 'left', got {side!r}")
    if pad_multiple < 1:
        raise ValueError(f"`pad_multiple` must be positive, got {pad_multiple}")
    width = round_up(max(len(e.input_ids) for e in encoded), pad_multiple)
    input_ids = torch.full((len(encoded), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(encoded), width), dtype=torch.long)
    response_mask = torch.zeros((len(encoded), width), dtype=torch.bool)
    for row, e in enumerate(encoded):
        n = len(e.input_ids)
        start = 0 if side == "right" else width - n
        input_ids[row, start : start + n] = torch.tensor(e.input_ids, dtype=torch.long)
        attention_mask[row, start : start + n] = 1
        response_mask[row, start + e.prompt_length : start + n] = True
    return PaddedBatch(input_ids, attention_mask, response_mask)
