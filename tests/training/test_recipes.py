"""Named recipes: the paper's recipe field by field, the registry's errors."""
from __future__ import annotations

import pytest

from headwater.training.recipes import RECIPES, recipe, register_recipe


def test_the_paper_recipe_is_the_papers():
    config = recipe("paper-7b")
    assert (config.beta, config.length_normalize, config.lr, config.epochs, config.warmup_ratio) == (5.0, True, 1e-6, 1, 0.1)
    assert config.batch_size * config.grad_accum == 128
    assert config.settings.max_length == 2048 and config.settings.overlong == "truncate"
    assert recipe("paper-7b") is not config  # a fresh config each time


def test_unknown_and_clashing_recipes_are_refused():
    with pytest.raises(ValueError, match="unknown recipe"):
        recipe("no-such-recipe")
    with pytest.raises(ValueError, match="already registered"):
        register_recipe("paper-7b", lambda: None)
    assert "paper-7b" in RECIPES
