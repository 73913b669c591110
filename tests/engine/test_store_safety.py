"""A vector store trusts nothing it reads and lets one writer in at a time."""
from __future__ import annotations

import json
import os

import pytest
import torch

from headwater.engine.engine import Engine
from headwater.engine.store import MANIFEST, StoreError, VectorStore, store_lock

from test_engine import make_pairs, one_thread  # noqa: F401 (autouse fixture)


@pytest.fixture()
def store(tmp_path, tiny_llama, tiny_tokenizer):
    root = tmp_path / "s"
    Engine(tiny_llama, tiny_tokenizer, layer=2).encode_pairs(make_pairs(12, seed=3), root, shard_pairs=4, progress=False)
    return root


def _tamper(root, change):
    manifest = json.loads((root / MANIFEST).read_text())
    change(manifest)
    (root / MANIFEST).write_text(json.dumps(manifest))


@pytest.mark.parametrize("change, message", [
    (lambda m: m["shards"][0].update(file="../../x.npy"), "shard 0 is named '../../x.npy'"),
    (lambda m: m["shards"][0].update(file="/etc/passwd"), "shard 0 is named '/etc/passwd'"),
    (lambda m: m["shards"].insert(1, dict(m["shards"][0])), "shard 1 is named 'shard-00000.npy'"),
    (lambda m: m["shards"][1].update(start=5), "shard 1 covers positions 5..8; expected to start at 4"),
    (lambda m: m.pop("dim"), "'dim' is missing"),
    (lambda m: m.update(dim="32"), "'dim' must be a positive integer"),
    (lambda m: m.update(shards={"a": 1}), "'shards' must be a list"),
    (lambda m: m["shards"][2].update(rows="4"), "shard 2 has no valid 'rows'"),
    (lambda m: m.update(n_vectors=11), "the shards hold 12 rows but n_vectors is 11"),
    (lambda m: m["shards"].pop(), "the shards hold 8 rows but n_vectors is 12"),
    (lambda m: (m["shards"].pop(), m.update(n_vectors=8)), "the shards cover 8 dataset positions but n_pairs_in_dataset is 12"),
])
def test_a_tampered_manifest_is_refused_with_its_reason(store, change, message):
    _tamper(store, change)
    with pytest.raises(StoreError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        VectorStore.open(store)


def test_a_special_file_as_a_shard_is_refused_without_hanging(store):
    shard = store / "shard-00001.npy"
    shard.unlink()
    os.mkfifo(shard)  # reading a FIFO would block forever
    with pytest.raises(StoreError, match="not a regular file"):
        VectorStore.open(store)
    with pytest.raises(StoreError, match="not a regular file"):
        VectorStore.open(store, verify=False).shard(1)


def test_a_second_writer_gets_a_clear_error(store, tiny_llama, tiny_tokenizer):
    engine = Engine(tiny_llama, tiny_tokenizer, layer=2)
    with store_lock(store):
        with pytest.raises(StoreError, match="being written by another process"):
            engine.encode_pairs(make_pairs(12, seed=3), store, shard_pairs=4, progress=False, overwrite=True)
    # released: the same run goes through
    engine.encode_pairs(make_pairs(12, seed=3), store, shard_pairs=4, progress=False, overwrite=True)
    assert len(VectorStore.open(store)) == 12


def test_resume_refuses_other_batching_settings(tmp_path, tiny_llama, tiny_tokenizer):
    """Batches are padded: another batch composition changes float rounding, so the resumed
    shards would not be bit-identical to the first run's."""
    pairs = make_pairs(12, seed=4)
    root = tmp_path / "s"

    def stop_after_one(record):
        raise OSError("disk full")  # the run dies after its first durable shard

    with pytest.raises(RuntimeError, match="writing shards failed"):
        Engine(tiny_llama, tiny_tokenizer, layer=2, max_tokens_per_batch=64).encode_pairs(
            pairs, root, shard_pairs=4, progress=False, on_shard=stop_after_one)
    assert (root / "run.json").exists() and not (root / MANIFEST).exists()
    for other, message in (
        (Engine(tiny_llama, tiny_tokenizer, layer=2, max_tokens_per_batch=96), "max_tokens_per_batch: store has 64, expected 96"),
        (Engine(tiny_llama, tiny_tokenizer, layer=2, max_tokens_per_batch=64, share_prompt=False), "prompt_sharing"),
    ):
        with pytest.raises(StoreError, match=message):
            other.encode_pairs(pairs, root, shard_pairs=4, progress=False, resume=True)
    same = Engine(tiny_llama, tiny_tokenizer, layer=2, max_tokens_per_batch=64)
    assert len(same.encode_pairs(pairs, root, shard_pairs=4, progress=False, resume=True)) == 12


def test_a_file_where_the_store_should_be_is_an_error(tmp_path, tiny_llama, tiny_tokenizer):
    path = tmp_path / "taken"
    path.write_text("not a directory")
    with pytest.raises(StoreError, match="is a file, not a directory"):
        Engine(tiny_llama, tiny_tokenizer, layer=2).encode_pairs(make_pairs(2, seed=1), path, progress=False)


def test_keys_and_ids_are_written_atomically_and_verified(store):
    assert not list(store.glob(".*.tmp"))  # nothing left half-written
    ids = store / "pair_ids.txt"
    ids.write_text(ids.read_text()[:-5])
    with pytest.raises(StoreError, match="pair_ids.txt is missing or does not match"):
        VectorStore.open(store)


def test_bad_vectors_never_reach_a_search(store):
    shard = store / "shard-00002.npy"
    data = bytearray(shard.read_bytes())
    data[-4:] = b"\x00\x00\xc0\x7f"  # NaN, with the checksum no longer matching
    shard.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="corrupt"):
        VectorStore.open(store)
    assert torch.isnan(VectorStore.open(store, verify=False).shard(2)).any()  # what verify protects from
