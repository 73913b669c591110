"""Sparse autoencoders: encoders against a float64 reference written from the formats' own math,
chunking, sparse decoding, and the SAELens and sparsify files read and written."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from headwater.audit import sae as sae_module
from headwater.audit.sae import SparseAutoencoder, SparseCode, fraction_of_variance_unexplained
from headwater.audit.sae_io import SAEFormatError, load_sae, load_sparsify, sae_metadata, save_sae, save_sparsify


def random_sae(architecture="topk", d_in=12, d_sae=40, k=5, seed=0, dtype=torch.float64, apply_b_dec=True):
    g = torch.Generator().manual_seed(seed)
    sae = SparseAutoencoder(d_in, d_sae, architecture=architecture, k=k, apply_b_dec_to_input=apply_b_dec, dtype=dtype)
    with torch.no_grad():
        for p in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec):
            p.copy_(torch.randn(p.shape, generator=g, dtype=dtype))
        sae.threshold.copy_(torch.rand(d_sae, generator=g, dtype=dtype))
    return sae


def reference_encode(sae, x):
    """SAELens's math in float64, dense: topk then ReLU; JumpReLU ReLU(h)·[h > θ]; standard ReLU."""
    W_enc, b_enc, b_dec = sae.W_enc.double(), sae.b_enc.double(), sae.b_dec.double()
    h = (x.double() - (b_dec if sae.apply_b_dec_to_input else 0)) @ W_enc + b_enc
    if sae.architecture == "topk":
        values, indices = h.topk(sae.k, dim=1)
        return torch.zeros_like(h).scatter(1, indices, values.clamp_min(0))
    if sae.architecture == "standard":
        return h.clamp_min(0)
    return h.clamp_min(0) * (h > sae.threshold.double())


@pytest.mark.parametrize("architecture", ["topk", "jumprelu", "batchtopk", "standard"])
def test_encode_and_decode_equal_the_float64_reference(architecture):
    sae = random_sae(architecture)
    x = torch.randn(30, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    f = sae.encode(x)
    torch.testing.assert_close(f, reference_encode(sae, x), rtol=0, atol=1e-12)
    dense = f @ sae.W_dec + sae.b_dec
    torch.testing.assert_close(sae.reconstruct(x), dense, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sae.decode(f), dense, rtol=1e-12, atol=1e-12)


def test_float32_encoding_matches_float64(monkeypatch):
    sae64 = random_sae("topk", d_in=64, d_sae=256, k=8)
    sae32 = SparseAutoencoder(64, 256, k=8)
    sae32.load_state_dict({k: v.float() for k, v in sae64.state_dict().items()})
    x = torch.randn(50, 64, dtype=torch.float64)
    torch.testing.assert_close(sae32.encode(x.float()).double(), reference_encode(sae64, x), rtol=1e-4, atol=1e-4)


def test_chunked_encoding_equals_one_chunk(monkeypatch):
    sae = random_sae("jumprelu", d_sae=40)
    x = torch.randn(33, 12, dtype=torch.float64)
    whole = sae.encode(x)
    monkeypatch.setattr(sae_module, "ENCODE_CHUNK_ELEMENTS", 40 * 4)  # four tokens per chunk
    assert sae.chunk_rows() == 4
    code = sae.encode_sparse(x)
    assert code.n == 33 and bool((code.rows[1:] >= code.rows[:-1]).all())  # rows ascending across chunks
    torch.testing.assert_close(code.to_dense(40), whole, rtol=0, atol=0)
    torch.testing.assert_close(sae.decode_sparse(code), whole @ sae.W_dec + sae.b_dec, rtol=1e-12, atol=1e-12)


def test_an_outlier_token_with_many_active_latents_costs_no_padding():
    sae = random_sae("jumprelu", d_sae=40)
    with torch.no_grad():
        sae.threshold.fill_(0.0)
    x = torch.randn(50, 12, dtype=torch.float64)
    x[7] *= 1000  # about half of all latents fire on it
    code = sae.encode_sparse(x)
    assert code.values.numel() == int((code.to_dense(40) > 0).sum())
    torch.testing.assert_close(code.to_dense(40), reference_encode(sae, x), rtol=0, atol=1e-9)


def test_edge_cases_k_equal_d_sae_zero_input_ties_and_no_rows():
    sae = random_sae("topk", d_sae=6, k=6)
    x = torch.zeros(3, 12, dtype=torch.float64)
    torch.testing.assert_close(sae.encode(x), reference_encode(sae, x))
    tied = random_sae("topk", d_sae=8, k=2)
    with torch.no_grad():
        tied.W_enc.zero_()
        tied.b_enc.copy_(torch.tensor([1.0, 3.0, 3.0, 3.0, 0.0, -1.0, 2.0, 3.0], dtype=torch.float64))
    code = tied.encode_sparse(torch.randn(2, 12, dtype=torch.float64))
    assert torch.all(code.values == 3.0) and code.counts().tolist() == [2, 2]  # any two tied latents
    empty = sae.encode_sparse(torch.zeros(0, 12, dtype=torch.float64))
    assert empty.n == 0 and empty.values.numel() == 0
    assert sae.reconstruct(torch.zeros(0, 12, dtype=torch.float64)).shape == (0, 12)
    with pytest.raises(ValueError, match="d_in=12"):
        sae.encode(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="k must be"):
        SparseAutoencoder(4, 8, k=9)
    with pytest.raises(ValueError, match="architecture"):
        SparseAutoencoder(4, 8, architecture="gated")


def test_sparse_code_and_fvu():
    code = SparseCode(torch.tensor([0, 1, 1]), torch.tensor([1, 0, 2]), torch.tensor([2.0, 1.0, 3.0]), 3)
    assert code.to_dense(3).tolist() == [[0.0, 2.0, 0.0], [1.0, 0.0, 3.0], [0.0, 0.0, 0.0]]
    assert code.counts().tolist() == [1, 2, 0]
    x = torch.randn(20, 4, dtype=torch.float64)
    assert fraction_of_variance_unexplained(x, x) == 0.0
    mean = x.mean(0).expand_as(x)
    assert fraction_of_variance_unexplained(x, mean) == pytest.approx(1.0)


def test_decoder_normalisation_and_parallel_gradient():
    sae = random_sae("topk")
    sae.normalise_decoder()
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(40, dtype=torch.float64))
    sae.W_dec.grad = torch.randn_like(sae.W_dec)
    sae.remove_parallel_gradient()
    along = (sae.W_dec.grad * sae.W_dec).sum(dim=1)
    torch.testing.assert_close(along, torch.zeros(40, dtype=torch.float64), rtol=0, atol=1e-12)


# -- SAELens files --------------------------------------------------------------------------------


@pytest.mark.parametrize("architecture", ["topk", "jumprelu", "standard", "batchtopk"])
def test_saelens_round_trip(tmp_path, architecture):
    sae = random_sae(architecture, dtype=torch.float32)
    save_sae(sae, tmp_path / "sae", metadata={"model_name": "tiny", "hook_name": "blocks.1.hook_resid_post"})
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    assert cfg["architecture"] == ("jumprelu" if architecture == "batchtopk" else architecture)
    assert cfg["metadata"]["sae_lens_version"].startswith("6") and cfg["d_sae"] == 40
    loaded = load_sae(tmp_path / "sae")
    x = torch.randn(25, 12)
    torch.testing.assert_close(loaded.encode(x), sae.encode(x), rtol=0, atol=0)
    assert sae_metadata(tmp_path / "sae")["model_name"] == "tiny"


def test_saelens_topk_with_decoder_norm_rescaling_is_folded(tmp_path):
    sae = random_sae("topk")
    norms = sae.W_dec.norm(dim=1)
    x = torch.randn(20, 12, dtype=torch.float64)
    # SAELens's rescaled TopK: h·‖W_dec‖ selects and activates; f/‖W_dec‖ is decoded.
    h = ((x - sae.b_dec) @ sae.W_enc + sae.b_enc) * norms
    values, indices = h.topk(sae.k, dim=1)
    f_scaled = torch.zeros_like(h).scatter(1, indices, values.clamp_min(0))
    x_hat = (f_scaled / norms) @ sae.W_dec + sae.b_dec
    save_sae(sae, tmp_path / "s")
    cfg_path = tmp_path / "s" / "cfg.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["rescale_acts_by_decoder_norm"] = True
    cfg_path.write_text(json.dumps(cfg))
    loaded = load_sae(tmp_path / "s")
    torch.testing.assert_close(loaded.encode(x), f_scaled, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(loaded.reconstruct(x), x_hat, rtol=1e-12, atol=1e-12)


def test_pre_v6_saelens_config_is_read(tmp_path):
    sae = random_sae("topk", dtype=torch.float32)
    root = tmp_path / "old"
    root.mkdir()
    save_file({"W_enc": sae.W_enc.detach(), "b_enc": sae.b_enc.detach(), "W_dec": sae.W_dec.detach(),
               "b_dec": sae.b_dec.detach(), "scaling_factor": torch.ones(40)}, str(root / "sae_weights.safetensors"))
    (root / "cfg.json").write_text(json.dumps({
        "d_in": 12, "d_sae": 40, "dtype": "float32", "activation_fn_str": "topk", "activation_fn_kwargs": {"k": 5},
        "apply_b_dec_to_input": True, "normalize_activations": False, "hook_name": "blocks.1.hook_resid_post"}))
    x = torch.randn(10, 12)
    torch.testing.assert_close(load_sae(root).encode(x), sae.encode(x), rtol=0, atol=0)


def test_saelens_files_that_do_not_fit_are_refused_clearly(tmp_path):
    sae = random_sae("jumprelu", dtype=torch.float32)
    save_sae(sae, tmp_path / "s")
    cfg_path = tmp_path / "s" / "cfg.json"
    cfg = json.loads(cfg_path.read_text())
    for change, message in [({"d_sae": 41}, "W_enc has shape"), ({"architecture": "gated"}, "not supported"),
                            ({"normalize_activations": "layer_norm"}, "raw activations"), ({"d_in": 0}, "positive")]:
        cfg_path.write_text(json.dumps({**cfg, **change}))
        with pytest.raises(SAEFormatError, match=message):
            load_sae(tmp_path / "s")
    cfg_path.write_text("{not json")
    with pytest.raises(SAEFormatError, match="not valid JSON"):
        load_sae(tmp_path / "s")
    cfg_path.write_text(json.dumps(cfg))
    (tmp_path / "s" / "sae_weights.safetensors").write_bytes(b"garbage")
    with pytest.raises(SAEFormatError, match="safetensors"):
        load_sae(tmp_path / "s")
    with pytest.raises(SAEFormatError, match="missing"):
        load_sae(tmp_path / "nowhere")


# -- sparsify files -------------------------------------------------------------------------------


def sparsify_reference(weight, bias, w_dec, b_dec, k, x, transcode=False):
    """sparsify's math, float64: topk(ReLU((x − b_dec)·Wᵀ + b)), decoded Σ v·W_dec[i] + b_dec."""
    pre = torch.relu((x if transcode else x - b_dec) @ weight.T + bias)
    values, indices = pre.topk(k, dim=1)
    return torch.zeros_like(pre).scatter(1, indices, values), (values[:, :, None] * w_dec[indices]).sum(1) + b_dec


@pytest.mark.parametrize("transcode", [False, True])
def test_sparsify_files_are_read_with_sparsifys_math(tmp_path, transcode):
    g = torch.Generator().manual_seed(3)
    weight, bias = torch.randn(48, 12, generator=g), torch.randn(48, generator=g)
    w_dec, b_dec = torch.randn(48, 12, generator=g), torch.randn(12, generator=g)
    hook = tmp_path / "run" / "layers.2"
    hook.mkdir(parents=True)
    save_file({"encoder.weight": weight, "encoder.bias": bias, "W_dec": w_dec, "b_dec": b_dec},
              str(hook / "sae.safetensors"))
    (hook / "cfg.json").write_text(json.dumps({"activation": "topk", "expansion_factor": 4, "normalize_decoder": True,
                                               "num_latents": 0, "k": 6, "multi_topk": False,
                                               "skip_connection": False, "transcode": transcode, "d_in": 12}))
    with pytest.raises(SAEFormatError, match="choose one of \\['layers.2'\\]"):
        load_sparsify(tmp_path / "run")
    sae = load_sparsify(tmp_path / "run", hookpoint="layers.2")
    x = torch.randn(30, 12, generator=g)
    f_ref, x_hat_ref = sparsify_reference(weight.double(), bias.double(), w_dec.double(), b_dec.double(), 6,
                                          x.double(), transcode)
    torch.testing.assert_close(sae.encode(x).double(), f_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sae.reconstruct(x).double(), x_hat_ref, rtol=1e-5, atol=1e-5)
    # and back out, in both formats, unchanged
    save_sparsify(sae, tmp_path / "again")
    torch.testing.assert_close(load_sparsify(tmp_path / "again").encode(x), sae.encode(x), rtol=0, atol=0)
    save_sae(sae, tmp_path / "as-saelens")
    torch.testing.assert_close(load_sae(tmp_path / "as-saelens").encode(x), sae.encode(x), rtol=0, atol=0)


def test_unsupported_sparsify_files_are_refused(tmp_path):
    root = tmp_path / "s"
    root.mkdir()
    save_file({"encoder.weight": torch.zeros(8, 4), "encoder.bias": torch.zeros(8), "W_dec": torch.zeros(8, 4),
               "b_dec": torch.zeros(4)}, str(root / "sae.safetensors"))
    for cfg, message in [({"activation": "groupmax", "k": 2, "d_in": 4, "num_latents": 8}, "only topk"),
                         ({"skip_connection": True, "k": 2, "d_in": 4, "num_latents": 8}, "skip connection"),
                         ({"k": 2, "d_in": 4, "num_latents": 9}, "shape"),
                         ({"k": 20, "d_in": 4, "num_latents": 8}, "exceeds")]:
        (root / "cfg.json").write_text(json.dumps(cfg))
        with pytest.raises(SAEFormatError, match=message):
            load_sparsify(root)
    with pytest.raises(SAEFormatError, match="not a sparsify"):
        load_sparsify(tmp_path / "s" / "missing")
