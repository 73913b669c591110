"""A small byte-level BPE tokenizer trained offline on the world's text.

Wrapped as a transformers :class:`~transformers.PreTrainedTokenizerFast` with BOS/EOS/PAD set and
a minimal chat template, so both the raw and the chat tokenisation formats work with it, and
saved beside each model with ``save_pretrained``.
"""
from __future__ import annotations

from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
SPECIAL_TOKENS = (PAD, BOS, EOS, *ROLE_TOKENS)

# Like Llama's: BOS first, each turn opened by its role token, an assistant turn closed by EOS.
# The prompt rendered with add_generation_prompt is a prefix of the full conversation, so the
# response mask of the chat format is exact.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2048) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts``.

    The tokenizer prepends BOS when called with ``add_special_tokens=True`` (as Llama's does),
    pads on the right, and never adds a prefix space, so ``prompt + response`` tokenises the
    same whether or not the prompt ends on a word boundary.

    Args:
        texts: the training corpus (prompts and responses of the world).
        vocab_size: the target vocabulary size, special tokens and the 256 bytes included.
    """
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"`vocab_size` must be at least {256 + len(SPECIAL_TOKENS)}, got {vocab_size}")
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    bos_id = backend.token_to_id(BOS)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, bos_id)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=list(ROLE_TOKENS),
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
