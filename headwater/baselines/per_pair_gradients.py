"""Per-pair weight gradients of bias-free linear layers from one backward pass over a batch.

For a linear layer y_t = W x_t applied at every position t of a sequence, the gradient of a loss
that depends only on that sequence is ∂L/∂W = Σ_t g_t x_tᵀ, with g_t = ∂L/∂y_t. A forward hook
keeps each layer's input x [B, T, in] and a hook on its output keeps g [B, T, out]; after one
backward pass of Σ_pairs L_pair, the gradient of every single pair is an einsum over its own rows.
This is the classic per-example gradient identity (Goodfellow 2015), exact up to float rounding:
rows of a batch never interact in a causal LM with an attention mask, and padded positions get
g_t = 0 because the loss ignores them.

In a DPO batch the rows are [chosen_1 … chosen_n, rejected_1 … rejected_n]: pair i owns rows i
and n + i, so its gradient sums the two (:func:`pair_weight_gradients`).
"""
from __future__ import annotations

from typing import Iterator

import torch


class LinearGradientCapture:
    """Hooks on named bias-free ``nn.Linear`` modules that record what per-row gradients need.

    Use as a context manager around the forward and backward pass; the hooks are removed on exit.
    Only forward passes that build a graph (grad enabled, output requiring grad) are recorded, so
    a reference pass under ``torch.no_grad()`` in between leaves the records alone.

    Args:
        modules: parameter name of the weight (e.g. ``"...lora_A.default.weight"``) → module.
    """

    def __init__(self, modules: dict[str, torch.nn.Linear]) -> None:
        for name, module in modules.items():
            if not isinstance(module, torch.nn.Linear) or module.bias is not None:
                raise ValueError(f"{name}: per-row gradients need a bias-free nn.Linear, got {module!r}")
        self.modules = modules
        self.inputs: dict[str, torch.Tensor] = {}
        self.output_grads: dict[str, torch.Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> "LinearGradientCapture":
        for name, module in self.modules.items():
            self._handles.append(module.register_forward_hook(self._forward_hook(name)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _forward_hook(self, name: str):
        def hook(module: torch.nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            if not (torch.is_grad_enabled() and output.requires_grad):
                return
            if name in self.inputs:
                raise RuntimeError(f"{name} ran twice in one forward pass; per-row gradients assume one use")
            self.inputs[name] = args[0].detach()

            def keep(grad: torch.Tensor) -> None:
                self.output_grads[name] = grad.detach()

            output.register_hook(keep)

        return hook

    def clear(self) -> None:
        """Forget the recorded tensors (call before the next batch)."""
        self.inputs.clear()
        self.output_grads.clear()

    def row_groups(self) -> Iterator[tuple[str, torch.Tensor, torch.Tensor]]:
        """(name, input [B, T, in], output gradient [B, T, out]) of every module that got a gradient."""
        for name in self.modules:
            if name in self.output_grads:
                yield name, self.inputs[name], self.output_grads[name]


def pair_weight_gradients(capture: LinearGradientCapture, n_pairs: int) -> Iterator[tuple[str, torch.Tensor]]:
    """Per-pair weight gradients, one layer at a time (only one layer's [n, out, in] is alive).

    Args:
        capture: hooks that saw one forward and backward pass over 2 · ``n_pairs`` rows ordered
            [chosen_1 … chosen_n, rejected_1 … rejected_n].
        n_pairs: n.

    Yields:
        (weight name, [n, out, in] gradients, float32, or float64 for a float64 model); row i is
        ∂L_i/∂W.
    """
    for name, inputs, grads in capture.row_groups():
        if inputs.shape[0] != 2 * n_pairs:
            raise ValueError(f"{name}: {inputs.shape[0]} rows for {n_pairs} pairs (expected chosen rows, then rejected)")
        # Pair i's two rows side by side along the sequence axis: [n, 2T, ·].
        x = torch.cat([inputs[:n_pairs], inputs[n_pairs:]], dim=1)
        g = torch.cat([grads[:n_pairs], grads[n_pairs:]], dim=1)
        dtype = torch.promote_types(x.dtype, torch.float32)  # bf16 activations sum in float32
        yield name, torch.einsum("bto,bti->boi", g.to(dtype), x.to(dtype))


__all__ = ["LinearGradientCapture", "pair_weight_gradients"]
