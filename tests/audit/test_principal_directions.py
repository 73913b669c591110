"""The projection's principal directions: the |Δ|-weighted decoder rows' top singular vectors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from headwater.audit.interventions import concept_differences, latent_deltas, principal_directions
from headwater.audit.sae import SparseAutoencoder

from audit_data import store_from


def sae_with_rows(rows: np.ndarray) -> SparseAutoencoder:
    d_sae, d_in = rows.shape
    sae = SparseAutoencoder(d_in, d_sae, architecture="topk", k=1)
    with torch.no_grad():
        sae.W_dec.copy_(torch.tensor(rows, dtype=torch.float32))
    return sae


def projector(basis: np.ndarray) -> np.ndarray:
    q, _ = np.linalg.qr(basis.T)
    return q @ q.T


def test_principal_directions_equal_a_float64_svd_of_the_weighted_unit_rows():
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((12, 16)) * rng.uniform(0.5, 3.0, (12, 1))  # rows of any length: unit first
    weights = rng.uniform(0.0, 2.0, 12)
    latents = [0, 2, 3, 5, 7, 11]
    sae = sae_with_rows(rows)
    got = principal_directions(sae, latents, weights[latents], energy=0.9).double().numpy()
    unit = rows[latents] / np.linalg.norm(rows[latents], axis=1, keepdims=True)
    _, s, vh = np.linalg.svd(unit * weights[latents][:, None], full_matrices=False)
    r = int(np.searchsorted(np.cumsum(s ** 2) / np.sum(s ** 2), 0.9) + 1)
    assert got.shape == (r, 16)
    np.testing.assert_allclose(got @ got.T, np.eye(r), atol=1e-6)  # orthonormal
    np.testing.assert_allclose(projector(got), projector(vh[:r]), atol=1e-5)  # the same subspace
    assert principal_directions(sae, latents, weights[latents], energy=1.0).shape[0] == len(latents)


def test_a_latent_the_data_does_not_move_adds_no_direction():
    rows = np.eye(6)[:4] * 2.0  # four orthogonal rows
    sae = sae_with_rows(rows)
    basis = principal_directions(sae, [0, 1, 2, 3], np.array([3.0, 0.0, 1.0, 0.0]), energy=1.0).numpy()
    assert basis.shape == (2, 6)  # rows 1 and 3 have weight 0
    np.testing.assert_allclose(basis[:, [1, 3, 4, 5]], 0.0, atol=1e-7)
    first = principal_directions(sae, [0, 1, 2, 3], np.array([3.0, 0.0, 1.0, 0.0]), energy=0.5).numpy()
    np.testing.assert_allclose(np.abs(first), [[1, 0, 0, 0, 0, 0]], atol=1e-7)  # 9 of 10 parts of the mass


def test_bad_weights_and_energy_are_refused():
    sae = sae_with_rows(np.eye(4))
    with pytest.raises(ValueError, match="energy"):
        principal_directions(sae, [0, 1], np.ones(2), energy=0.0)
    with pytest.raises(ValueError, match="weights must be 2"):
        principal_directions(sae, [0, 1], np.ones(3))
    with pytest.raises(ValueError, match="weights must be 2"):
        principal_directions(sae, [0, 1], np.array([1.0, -1.0]))
    with pytest.raises(ValueError, match="every weight is zero"):
        principal_directions(sae, [0, 1], np.zeros(2))
    with pytest.raises(ValueError, match="no latents"):
        principal_directions(sae, [], np.zeros(0))


def test_latent_deltas_are_the_mean_paired_differences(tmp_path):
    rng = np.random.default_rng(1)
    chosen, rejected = rng.random((150, 5)) * (rng.random((150, 5)) > 0.5), rng.random((150, 5))
    store = store_from(tmp_path, chosen, rejected, part_rows=40)
    _, diffs, _ = concept_differences(store, [[v] for v in (4, 0, 2)])
    np.testing.assert_allclose(latent_deltas(store, [4, 0, 2]), diffs.mean(axis=0), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(latent_deltas(store, [4, 0, 2]), (chosen - rejected)[:, [4, 0, 2]].mean(axis=0),
                               rtol=1e-5, atol=1e-6)


def test_retrain_refuses_options_that_do_not_apply_before_reading_anything(tmp_path):
    from headwater.workflows.audit_feedback import retrain_with_feedback

    missing = dict(model_path=str(tmp_path / "no-model"), data=str(tmp_path / "no-data.jsonl"),
                   audit_dir=tmp_path / "no-audit", out_dir=tmp_path / "out")
    with pytest.raises(ValueError, match="applies to mode='project' only"):
        retrain_with_feedback(**missing, mode="offset", directions="principal")
    for energy in (0.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="energy must be in"):
            retrain_with_feedback(**missing, directions="principal", energy=energy)
    with pytest.raises(ValueError, match="directions must be one of"):
        retrain_with_feedback(**missing, directions="pca")
