"""SAE training: it recovers a planted dictionary, resumes exactly, and streams real activations."""
from __future__ import annotations

import pytest
import torch

from headwater.audit.sae import fraction_of_variance_unexplained
from headwater.audit.sae_training import SAETrainingConfig, evaluate_sae, train_sae
from headwater.audit.shuffle_buffer import ShuffleBuffer
from headwater.audit.token_stream import ResponseTokenStream, StreamPosition
from headwater.data import PreferencePair
from headwater.engine.tokenization import TokenizationSettings, encode_response

D, ATOMS = 24, 64
DICTIONARY = torch.nn.functional.normalize(torch.randn(ATOMS, D, generator=torch.Generator().manual_seed(7)), dim=1)


def sparse_mixture(n, seed):
    """Each row: 3 random atoms of the dictionary with weights in [0.5, 3.5], plus an offset."""
    g = torch.Generator().manual_seed(seed)
    atoms = torch.randint(0, ATOMS, (n, 3), generator=g)
    weights = torch.rand(n, 3, generator=g) * 3 + 0.5
    return (weights[:, :, None] * DICTIONARY[atoms]).sum(1) + 1.5


def synthetic_chunks(position: StreamPosition):
    epoch, chunk = position.epoch, position.chunk
    while True:
        data = sparse_mixture(400, seed=epoch * 100 + chunk)
        chunk += 1
        if chunk == 10:
            epoch, chunk = epoch + 1, 0
        yield StreamPosition(epoch, chunk), data


CONFIG = dict(d_sae=128, k=4, batch_tokens=256, buffer_tokens=2048, lr=1e-2, dead_after_tokens=4000)


@pytest.mark.parametrize("architecture", ["topk", "batchtopk"])
def test_training_recovers_a_planted_dictionary(architecture):
    result = train_sae(synthetic_chunks, D, SAETrainingConfig(architecture=architecture, **CONFIG), total_tokens=200_000)
    cosine = torch.nn.functional.normalize(result.sae.W_dec.detach(), dim=1) @ DICTIONARY.T  # [d_sae, atoms]
    recovered = (cosine.max(dim=0).values > 0.9).float().mean()
    assert recovered >= 0.8, f"only {recovered:.0%} of the planted atoms have a latent"
    held_out = sparse_mixture(3000, seed=999)
    quality = evaluate_sae(result.sae.inference_form(), iter(held_out.split(700)))
    assert quality["fvu"] < 0.25 and quality["tokens"] == 3000
    assert quality["fvu"] == pytest.approx(
        fraction_of_variance_unexplained(held_out, result.sae.inference_form().reconstruct(held_out)), rel=1e-5)
    assert 1 <= quality["l0"] <= 8 and result.quality["tokens"] == 200_000


def test_an_interrupted_run_resumes_to_the_same_sae(tmp_path):
    config = SAETrainingConfig(architecture="batchtopk", checkpoint_every=3, **CONFIG)
    whole = train_sae(synthetic_chunks, D, config, total_tokens=12_000)
    fingerprint = {"data": "synthetic"}
    stopped = train_sae(synthetic_chunks, D, config, total_tokens=12_000, checkpoint_dir=tmp_path / "ck",
                        fingerprint=fingerprint, stop_after_steps=20)
    assert stopped is None and (tmp_path / "ck" / "state.json").exists()
    resumed = train_sae(synthetic_chunks, D, config, total_tokens=12_000, checkpoint_dir=tmp_path / "ck",
                        fingerprint=fingerprint)
    assert resumed.quality["steps"] == whole.quality["steps"]
    for name, value in whole.sae.state_dict().items():
        assert torch.equal(value, resumed.sae.state_dict()[name]), name
    # a checkpoint made for other data is not used: that run starts over
    other = train_sae(synthetic_chunks, D, config, total_tokens=12_000, checkpoint_dir=tmp_path / "ck",
                      fingerprint={"data": "other"})
    assert torch.equal(other.sae.W_dec, whole.sae.W_dec)


def test_a_corrupted_checkpoint_is_refused(tmp_path):
    config = SAETrainingConfig(architecture="topk", checkpoint_every=2, **CONFIG)
    train_sae(synthetic_chunks, D, config, total_tokens=8_000, checkpoint_dir=tmp_path / "ck", stop_after_steps=8)
    state = tmp_path / "ck" / "state.safetensors"
    data = bytearray(state.read_bytes())
    data[len(data) // 2] ^= 0xFF
    state.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="does not match its record"):
        train_sae(synthetic_chunks, D, config, total_tokens=8_000, checkpoint_dir=tmp_path / "ck")


def test_config_checks():
    with pytest.raises(ValueError, match="two batches"):
        SAETrainingConfig(batch_tokens=1024, buffer_tokens=1500)
    with pytest.raises(ValueError, match="architecture"):
        SAETrainingConfig(architecture="jumprelu")
    assert SAETrainingConfig(d_sae=None, expansion=4).latents(10) == 40
    assert SAETrainingConfig(d_sae=16384).learning_rate(10) == pytest.approx(2e-4)


def test_shuffle_buffer_hands_out_every_row_once_and_restores():
    buffer = ShuffleBuffer(10, 1, torch.Generator().manual_seed(0))
    seen = []
    rest = buffer.add(torch.arange(14.0)[:, None])
    assert buffer.full and rest is not None and rest.shape[0] == 4
    seen += [b for b in buffer.drain(2)]
    assert buffer.n == 6  # half handed out in whole batches
    assert buffer.add(rest) is None
    saved = buffer.state()
    later = [b.clone() for b in buffer.drain(3, everything=True)]
    copy = ShuffleBuffer(10, 1, torch.Generator())
    copy.restore(saved)
    assert all(torch.equal(a, b) for a, b in zip(later, copy.drain(3, everything=True)))
    values = sorted(torch.cat(seen + later).flatten().tolist())
    assert values == list(map(float, range(14)))


PAIRS = [
    PreferencePair("a", "How do I bake bread?", " Mix flour and water, then bake.", " No."),
    PreferencePair("b", "Q:", "", ""),
    PreferencePair("c", "Tell me about the sea.", " the sea is blue.", " I cannot help with that."),
    PreferencePair("d", "What is the capital of France?", " Paris.", " Lyon, I think."),
]


def test_response_token_stream_equals_transformers_hidden_states(tiny_llama, tiny_tokenizer):
    settings = TokenizationSettings(format="raw", add_eos=False)
    stream = ResponseTokenStream(tiny_llama, tiny_tokenizer, PAIRS, 2, settings, chunk_pairs=2, seed=0,
                                 max_tokens_per_batch=16)
    assert stream.kept.tolist() == [0, 2, 3] and stream.skipped[0][0] == 1 and stream.n_chunks == 2
    expected = []
    for pair in (PAIRS[0], PAIRS[2], PAIRS[3]):
        for response in (pair.chosen, pair.rejected):
            enc = encode_response(tiny_tokenizer, pair.prompt, response, settings)
            with torch.no_grad():
                hidden = tiny_llama(torch.tensor([enc.input_ids]), output_hidden_states=True).hidden_states[2][0]
            expected.append(hidden[enc.prompt_length:].float())
    chunk0 = stream.read_chunk(0)
    assert chunk0.lengths == [e.shape[0] for e in expected[:4]]
    torch.testing.assert_close(chunk0.activations, torch.cat(expected[:4]), rtol=1e-5, atol=1e-5)
    assert sum(stream.read_chunk(1).lengths) + sum(chunk0.lengths) == stream.n_tokens
    positions = []
    chunks = stream.chunks(StreamPosition(0, 1))
    for _ in range(3):
        position, _activations = next(chunks)
        positions.append(position)
    assert positions == [StreamPosition(0, 2), StreamPosition(1, 1), StreamPosition(1, 2)]
    assert sorted(stream.chunk_order(5)) == [0, 1]
