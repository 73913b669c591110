"""Named DPO recipes: a registry of :class:`~headwater.training.dpo.DPOConfig` factories.

``paper-7b`` is the attribution paper's recipe for a 7B model (β = 5 with length normalisation,
lr 1e-6, 10% warm-up, effective batch 128, one epoch, sequences of at most 2,048 tokens, longer
ones truncated). The model organism registers
``organism`` (the recipe its M1 was trained with) when :mod:`headwater.organism` is imported;
``headwater retrain --recipe NAME`` starts from one and flags override its fields.
"""
from __future__ import annotations

from typing import Callable

from headwater.engine.tokenization import TokenizationSettings
from headwater.training.dpo import DPOConfig

RECIPES: dict[str, Callable[[], DPOConfig]] = {}


def register_recipe(name: str, factory: Callable[[], DPOConfig]) -> None:
    """Make ``name`` resolve to ``factory()``; a name registered with another factory is an error."""
    if not name or RECIPES.get(name, factory) is not factory:
        raise ValueError(f"recipe {name!r} is empty or already registered")
    RECIPES[name] = factory


def recipe(name: str) -> DPOConfig:
    """A fresh :class:`DPOConfig` of the recipe ``name``."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; known: {sorted(RECIPES)}")
    return RECIPES[name]()


PAPER_MAX_LENGTH = 2048  # the paper's maximum sequence length (prompt + response)


def paper_7b() -> DPOConfig:
    return DPOConfig(beta=5.0, length_normalize=True, lr=1e-6, epochs=1, batch_size=16, grad_accum=8,
                     warmup_ratio=0.1, settings=TokenizationSettings(format="raw", max_length=PAPER_MAX_LENGTH))


register_recipe("paper-7b", paper_7b)

__all__ = ["RECIPES", "paper_7b", "recipe", "register_recipe"]
