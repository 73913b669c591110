"""Sparse autoencoders over residual-stream activations: TopK, BatchTopK and JumpReLU encoders.

One module holds every architecture headwater reads or trains, in SAELens's parameter layout:

- ``W_enc`` [d_in, d_sae], ``b_enc`` [d_sae], ``W_dec`` [d_sae, d_in], ``b_dec`` [d_in], and for a
  thresholded encoder ``threshold`` [d_sae];
- pre-activations ``h = (x − b_dec) · W_enc + b_enc`` (``apply_b_dec_to_input``, the default;
  otherwise ``h = x · W_enc + b_enc``);
- ``topk``: keep each token's k largest entries of h, then ReLU (the rest are 0);
- ``jumprelu`` (also BatchTopK's inference form): ``f = h · [h > threshold]`` per latent;
- ``standard``: ReLU(h) (loaded, never trained here);
- ``batchtopk`` while training: keep the k·B largest entries of ReLU(h) over a batch of B tokens;
  at inference it is a JumpReLU whose threshold is the running estimate kept in training;
- decoding ``x̂ = f · W_dec + b_dec``.

Encoding never builds a dense [tokens, d_sae] matrix larger than one chunk: tokens are encoded in
chunks sized by :data:`ENCODE_CHUNK_ELEMENTS`, and the sparse form (row, latent and value of each
active entry) is what leaves :meth:`SparseAutoencoder.encode_sparse`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

ARCHITECTURES = ("topk", "batchtopk", "jumprelu", "standard")
# One chunk of pre-activations holds at most this many floats (64 MiB in float32), whatever d_sae.
ENCODE_CHUNK_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class SparseCode:
    """The active latents of n tokens (or responses), entry by entry (coordinate form).

    Attributes:
        rows: [nnz] int64 row of each entry, ascending.
        indices: [nnz] int64 latent of each entry.
        values: [nnz] activation of each entry (> 0).
        n: the number of rows (rows without an active latent have no entry).
    """

    rows: torch.Tensor
    indices: torch.Tensor
    values: torch.Tensor
    n: int

    def to_dense(self, d_sae: int) -> torch.Tensor:
        """[n, d_sae] in the values' dtype."""
        dense = torch.zeros((self.n, d_sae), dtype=self.values.dtype)
        dense[self.rows, self.indices] = self.values
        return dense

    def counts(self) -> torch.Tensor:
        """[n] int64 active latents per row (L0)."""
        return torch.bincount(self.rows, minlength=self.n)


class SparseAutoencoder(nn.Module):
    """A sparse autoencoder with SAELens's parameters and encoders (see the module docstring).

    Args:
        d_in: width of the activations it reads.
        d_sae: number of latents.
        architecture: ``"topk"``, ``"batchtopk"``, ``"jumprelu"`` or ``"standard"``.
        k: active latents per token (topk, batchtopk); ignored by the others.
        apply_b_dec_to_input: subtract ``b_dec`` from the input before encoding.
        dtype: parameter dtype (float32 unless a test asks for float64).
    """

    def __init__(
        self,
        d_in: int,
        d_sae: int,
        *,
        architecture: str = "topk",
        k: int | None = 32,
        apply_b_dec_to_input: bool = True,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}")
        if d_in < 1 or d_sae < 1:
            raise ValueError(f"d_in and d_sae must be positive, got {d_in} and {d_sae}")
        if architecture in ("topk", "batchtopk") and (k is None or not 1 <= k <= d_sae):
            raise ValueError(f"k must be in [1, d_sae={d_sae}] for {architecture}, got {k}")
        self.d_in, self.d_sae, self.architecture = d_in, d_sae, architecture
        self.k = int(k) if k is not None else None
        self.apply_b_dec_to_input = apply_b_dec_to_input
        self.W_enc = nn.Parameter(torch.zeros(d_in, d_sae, dtype=dtype))
        self.b_enc = nn.Parameter(torch.zeros(d_sae, dtype=dtype))
        self.W_dec = nn.Parameter(torch.zeros(d_sae, d_in, dtype=dtype))
        self.b_dec = nn.Parameter(torch.zeros(d_in, dtype=dtype))
        # JumpReLU's per-latent threshold; BatchTopK keeps its running estimate here (all equal).
        self.register_buffer("threshold", torch.zeros(d_sae, dtype=dtype))

    def extra_repr(self) -> str:
        return f"d_in={self.d_in}, d_sae={self.d_sae}, architecture={self.architecture}, k={self.k}"

    # -- encoding -------------------------------------------------------------------------------

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """[n, d_in] → [n, d_sae] h = (x − b_dec)·W_enc + b_enc in the parameters' dtype."""
        x = x.to(self.W_enc.dtype)
        if self.apply_b_dec_to_input:
            x = x - self.b_dec
        return torch.addmm(self.b_enc, x, self.W_enc)

    def _activate(self, h: torch.Tensor) -> SparseCode:
        """The inference encoder on pre-activations [n, d_sae] → its sparse code."""
        if self.architecture == "topk":
            values, indices = h.topk(self.k, dim=1)
            keep = values > 0  # ReLU after the selection
            rows = torch.arange(h.shape[0]).unsqueeze(1).expand_as(indices)
            return SparseCode(rows[keep], indices[keep], values[keep], h.shape[0])
        # JumpReLU (and BatchTopK at inference): ReLU(h)·[h > threshold]; standard: ReLU(h). The
        # number of active latents is not bounded (an outlier token may light up thousands), so
        # the code is kept entry by entry, never padded to the widest row.
        bar = self.threshold.clamp_min(0) if self.architecture != "standard" else torch.zeros_like(self.threshold)
        rows, cols = (h > bar).nonzero(as_tuple=True)
        return SparseCode(rows, cols, h[rows, cols], h.shape[0])

    def chunk_rows(self) -> int:
        """Tokens per encoding chunk so one [rows, d_sae] block stays within ENCODE_CHUNK_ELEMENTS."""
        return max(1, ENCODE_CHUNK_ELEMENTS // self.d_sae)

    def _chunks(self, x: torch.Tensor) -> Iterator[torch.Tensor]:
        rows = self.chunk_rows()
        for start in range(0, x.shape[0], rows):
            yield x[start:start + rows]

    @torch.no_grad()
    def encode_sparse(self, x: torch.Tensor) -> SparseCode:
        """Inference encoding of [n, d_in] activations, in chunks, as one sparse code."""
        self._check_input(x)
        rows, indices, values, offset = [], [], [], 0
        for chunk in self._chunks(x):
            code = self._activate(self.pre_activations(chunk))
            rows.append(code.rows + offset)
            indices.append(code.indices)
            values.append(code.values)
            offset += chunk.shape[0]
        if not rows:
            empty = torch.zeros(0, dtype=torch.long)
            return SparseCode(empty, empty.clone(), torch.zeros(0, dtype=self.W_enc.dtype), 0)
        return SparseCode(torch.cat(rows), torch.cat(indices), torch.cat(values), x.shape[0])

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Dense inference encoding [n, d_in] → [n, d_sae] (for small n; prefer encode_sparse)."""
        return self.encode_sparse(x).to_dense(self.d_sae)

    def encode_training(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Differentiable training encoding of one batch: (f [B, d_sae], h [B, d_sae]).

        TopK keeps each row's k largest entries; BatchTopK the k·B largest entries of ReLU(h) over
        the batch; JumpReLU is not trained here (it is loaded, or BatchTopK's inference form).
        """
        h = self.pre_activations(x)
        if self.architecture == "topk":
            values, indices = h.topk(self.k, dim=1)
            f = torch.zeros_like(h).scatter(1, indices, values.clamp_min(0))
        elif self.architecture == "batchtopk":
            relu = h.clamp_min(0)
            flat = relu.flatten()
            keep = min(self.k * h.shape[0], flat.numel())
            values, indices = flat.topk(keep)
            f = torch.zeros_like(flat).scatter(0, indices, values).view_as(h)
        else:
            raise ValueError(f"a {self.architecture} SAE is not trained by headwater; train topk or batchtopk")
        return f, h

    # -- decoding -------------------------------------------------------------------------------

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """[n, d_sae] → [n, d_in] x̂ = f·W_dec + b_dec."""
        return torch.addmm(self.b_dec, f.to(self.W_dec.dtype), self.W_dec)

    def decode_sparse(self, code: SparseCode) -> torch.Tensor:
        """x̂ from a sparse code without a dense [n, d_sae] matrix: Σ_j value_j · W_dec[index_j] + b_dec
        (a sparse × dense product)."""
        f = torch.sparse_coo_tensor(torch.stack([code.rows, code.indices]), code.values.to(self.W_dec.dtype),
                                    (code.n, self.d_sae))
        return torch.sparse.mm(f, self.W_dec) + self.b_dec

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Inference encode then decode, chunked: [n, d_in] → [n, d_in]."""
        self._check_input(x)
        parts = [self.decode_sparse(self._activate(self.pre_activations(c))) for c in self._chunks(x)]
        return torch.cat(parts) if parts else torch.zeros((0, self.d_in), dtype=self.W_dec.dtype)

    # -- helpers --------------------------------------------------------------------------------

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 2 or x.shape[1] != self.d_in:
            raise ValueError(f"activations must be [n, d_in={self.d_in}], got {tuple(x.shape)}")

    @torch.no_grad()
    def normalise_decoder(self) -> None:
        """Scale every decoder row to unit norm (rows of zeros are left as they are)."""
        norms = self.W_dec.norm(dim=1, keepdim=True)
        self.W_dec.div_(torch.where(norms > 0, norms, torch.ones_like(norms)))

    @torch.no_grad()
    def remove_parallel_gradient(self) -> None:
        """Drop the part of W_dec's gradient along its (unit) rows, so a step keeps them unit-norm
        to first order (Bricken et al.; Gao et al.)."""
        if self.W_dec.grad is None:
            return
        along = (self.W_dec.grad * self.W_dec).sum(dim=1, keepdim=True)
        self.W_dec.grad.sub_(along * self.W_dec)

    def inference_form(self) -> SparseAutoencoder:
        """The SAE as it encodes at inference: BatchTopK becomes JumpReLU with its threshold."""
        if self.architecture != "batchtopk":
            return self
        out = SparseAutoencoder(self.d_in, self.d_sae, architecture="jumprelu", k=self.k,
                                apply_b_dec_to_input=self.apply_b_dec_to_input, dtype=self.W_enc.dtype)
        out.load_state_dict(self.state_dict())
        return out


def fraction_of_variance_unexplained(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Σ‖x − x̂‖² / Σ‖x − mean(x)‖² over the rows of [n, d] (float64 sums); NaN for n < 2."""
    if x.shape[0] < 2:
        return math.nan
    x64, r64 = x.double(), x_hat.double()
    residual = (x64 - r64).pow(2).sum()
    total = (x64 - x64.mean(dim=0)).pow(2).sum()
    return float(residual / total) if total > 0 else math.nan


__all__ = ["ARCHITECTURES", "ENCODE_CHUNK_ELEMENTS", "SparseAutoencoder", "SparseCode",
           "fraction_of_variance_unexplained"]
