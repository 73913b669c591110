"""Fixtures: the world's tokenizer and a miniature organism, built once per test session."""
from __future__ import annotations

import pytest
import torch

from headwater.organism import OrganismConfig, build_organism
from headwater.organism import dataset as organism_data
from headwater.organism.tokenizer import train_tokenizer
from headwater.organism.world import WorldSplit


@pytest.fixture(scope="session")
def world_tokenizer():
    split = WorldSplit.from_seed(0)
    return train_tokenizer(organism_data.tokenizer_corpus(split, 0, n=400), vocab_size=600)


@pytest.fixture(scope="session")
def organism_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("organism-cache")


@pytest.fixture(scope="session")
def miniature(organism_cache):
    threads = torch.get_num_threads()
    organism = build_organism(OrganismConfig.miniature(), cache_dir=organism_cache, progress=False)
    assert torch.get_num_threads() == threads  # the build restores the thread count
    return organism
