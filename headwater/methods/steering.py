"""The steering check (method.md §2): does adding a behaviour's probing vector to M0's residual
stream make M0 show the behaviour?

While :func:`steered` is active, the output of decoder block ℓ (the residual stream the datapoint
vectors are read from, ``hidden_states[ℓ]``) gets ``scale · v`` added at every position, prompt and
generated tokens alike. :func:`steering_rates` samples and judges M0 at several scales, with
bootstrap intervals over prompts, through the one evaluation path
(:func:`headwater.methods.evaluation.evaluate_model`). A probe that captures the behaviour raises
the rate as the scale grows (the paper: 0.8% → 29.2%); one that does not, leaves it.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

import torch

from headwater.data import Text
from headwater.engine.models import decoder_blocks, resolve_layer
from headwater.methods.evaluation import evaluate_model
from headwater.methods.judges import Judge


@contextlib.contextmanager
def steered(model: torch.nn.Module, vector: torch.Tensor, layer: int, scale: float) -> Iterator[None]:
    """Add ``scale · vector`` to the output of decoder block ``layer`` (1-based, negative from the
    end) inside the ``with`` block; the hook is removed on exit, even after an error.

    Args:
        model: a transformers causal LM.
        vector: [d] the direction (e.g. a probing vector, d = the hidden size), any float dtype.
        layer: the block ℓ, as :func:`headwater.engine.models.resolve_layer` reads it.
        scale: the multiple of ``vector`` added (0 leaves the model's outputs unchanged).

    Raises:
        ValueError: ``vector`` is not [d] with d the model's hidden size, or is not finite.
    """
    block = decoder_blocks(model)[resolve_layer(model, layer) - 1]
    hidden = model.config.hidden_size
    vector = torch.as_tensor(vector)
    if vector.shape != (hidden,):
        raise ValueError(f"the steering vector must be [{hidden}] (the hidden size), got {tuple(vector.shape)}")
    if not torch.isfinite(vector).all():
        raise ValueError("the steering vector holds inf or NaN")
    param = next(model.parameters())
    shift = (float(scale) * vector.to(torch.float32)).to(param.device, param.dtype)

    def add(module: torch.nn.Module, args: Any, output: Any) -> Any:
        if isinstance(output, tuple):
            return (output[0] + shift,) + tuple(output[1:])
        return output + shift

    handle = block.register_forward_hook(add)
    try:
        yield
    finally:
        handle.remove()


def steering_rates(
    model: torch.nn.Module, tokenizer: Any, prompts: Sequence[Text], judge: Judge, vector: torch.Tensor, *,
    layer: int, scales: Sequence[float], n_boot: int = 2000, **sampling: Any,
) -> list[dict[str, Any]]:
    """The judged behaviour rate of ``model`` steered by ``scale · vector`` at each scale.

    ``sampling`` holds :func:`headwater.methods.evaluation.judge_samples`' keywords (``n``,
    ``temperature``, ``max_new_tokens``, ``settings``, ``seed``, ...); every scale samples with the
    same seed. Returns one ``{"scale", "rate", "ci_low", "ci_high", "n_responses", ...}`` per scale
    (:meth:`EvalResult.to_dict`) with three example responses.
    """
    if not scales:
        raise ValueError("give at least one scale")
    out = []
    for scale in scales:
        with steered(model, vector, layer, scale):
            result = evaluate_model(model, tokenizer, prompts, judge, n_boot=n_boot, **sampling)
        out.append({"scale": float(scale), **result.to_dict(), "examples": [rs[0] for rs in result.responses[:3]]})
    return out


__all__ = ["steered", "steering_rates"]
