"""A small world tokenizer, a tiny Llama and a little data for the trainers' tests."""
from __future__ import annotations

import pytest

from headwater.organism import dataset as organism_data
from headwater.organism.model import organism_model
from headwater.organism.tokenizer import train_tokenizer
from headwater.organism.world import WorldSplit


@pytest.fixture(scope="session")
def split():
    return WorldSplit.from_seed(0)


@pytest.fixture(scope="session")
def tokenizer(split):
    return train_tokenizer(organism_data.tokenizer_corpus(split, 0, n=300), vocab_size=500)


@pytest.fixture
def make_model(tokenizer):
    def make(seed: int = 0):
        return organism_model(tokenizer, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, seed=seed)

    return make
