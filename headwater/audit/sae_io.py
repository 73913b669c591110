"""SAEs on disk: SAELens's format (read and written) and EleutherAI sparsify's (read and written).

SAELens (v6, inference form): a directory with ``cfg.json`` and ``sae_weights.safetensors``
holding ``W_enc`` [d_in, d_sae], ``b_enc`` [d_sae], ``W_dec`` [d_sae, d_in], ``b_dec`` [d_in] and,
for ``jumprelu``, ``threshold`` [d_sae]. A BatchTopK SAE is written in its inference form, as
SAELens writes one: ``"architecture": "jumprelu"`` with every threshold equal to the learned one.
``cfg.json`` carries ``d_in``, ``d_sae``, ``dtype``, ``device``, ``apply_b_dec_to_input``,
``normalize_activations``, ``reshape_activations``, ``architecture`` (and ``k``,
``rescale_acts_by_decoder_norm`` for topk) and ``metadata`` (``sae_lens_version`` ≥ 6 marks the
layout; ``model_name``, ``hook_name``; headwater's own record under ``metadata.headwater``).
Files from SAELens before v6 (flat keys, ``activation_fn_str``/``activation_fn_kwargs``) are read
too.

sparsify: a directory (one per hookpoint) with ``cfg.json`` (``d_in``, ``num_latents`` or
``expansion_factor``, ``k``, ``activation``, ``transcode``, ``skip_connection``, ...) and
``sae.safetensors`` holding ``encoder.weight`` [num_latents, d_in], ``encoder.bias``,
``W_dec`` [num_latents, d_in] and ``b_dec`` [d_in]. It encodes topk(ReLU((x − b_dec)·Wᵀ + b)),
which is SAELens's topk with ``W_enc = encoder.weightᵀ`` (ReLU and top-k commute on the values).

Reads verify shapes and say exactly what does not fit; writes are atomic (the directory is built
aside and swapped in).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from headwater.audit.sae import SparseAutoencoder
from headwater.engine.atomic import atomic_directory

SAELENS_CONFIG = "cfg.json"
SAELENS_WEIGHTS = "sae_weights.safetensors"
SPARSIFY_WEIGHTS = "sae.safetensors"
SAELENS_FORMAT_VERSION = "6.0.0"  # the layout we write; SAELens reads it as a v6 file
DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}


class SAEFormatError(ValueError):
    """A saved SAE that cannot be read as what it claims to be."""


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        raise SAEFormatError(f"{path} is missing") from None
    except ValueError as err:
        raise SAEFormatError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(value, dict):
        raise SAEFormatError(f"{path} must hold a JSON object, not {type(value).__name__}")
    return value


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise SAEFormatError(f"{path} is missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise SAEFormatError(f"{path} cannot be read as safetensors: {err}") from None


def _expect(tensors: dict[str, torch.Tensor], name: str, shape: tuple[int, ...], where: Path) -> torch.Tensor:
    if name not in tensors:
        raise SAEFormatError(f"{where} has no tensor {name!r} (it has {sorted(tensors)})")
    if tuple(tensors[name].shape) != shape:
        raise SAEFormatError(f"{where}: {name} has shape {tuple(tensors[name].shape)}, expected {shape}")
    return tensors[name]


def _int_field(cfg: dict[str, Any], key: str, where: Path) -> int:
    value = cfg.get(key)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise SAEFormatError(f"{where}: {key!r} must be a positive integer, got {value!r}")
    return value


# -- SAELens --------------------------------------------------------------------------------------


def save_sae(sae: SparseAutoencoder, path: str | os.PathLike[str], *, metadata: dict[str, Any] | None = None) -> Path:
    """Write ``sae`` in SAELens's v6 inference layout (BatchTopK as its JumpReLU form).

    ``metadata`` (e.g. ``model_name``, ``hook_name``, ``headwater``: provenance and quality) goes
    into ``cfg.json``'s ``metadata``.
    """
    sae = sae.inference_form()
    tensors = {"W_enc": sae.W_enc, "b_enc": sae.b_enc, "W_dec": sae.W_dec, "b_dec": sae.b_dec}
    cfg: dict[str, Any] = {
        "d_in": sae.d_in, "d_sae": sae.d_sae, "dtype": _dtype_name(sae.W_enc.dtype), "device": "cpu",
        "apply_b_dec_to_input": sae.apply_b_dec_to_input, "normalize_activations": "none",
        "reshape_activations": "none", "architecture": sae.architecture,
        "metadata": {"sae_lens_version": SAELENS_FORMAT_VERSION, **(metadata or {})},
    }
    if sae.architecture == "topk":
        cfg.update(k=sae.k, rescale_acts_by_decoder_norm=False)
    if sae.architecture == "jumprelu":
        tensors["threshold"] = sae.threshold
    target = Path(path)
    with atomic_directory(target) as tmp:
        save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(tmp / SAELENS_WEIGHTS))
        (tmp / SAELENS_CONFIG).write_text(json.dumps(cfg, indent=2) + "\n")
    return target


def _pre_v6_architecture(cfg: dict[str, Any]) -> tuple[str, int | None]:
    """(architecture, k) of a SAELens file from before v6."""
    activation = cfg.get("activation_fn_str") or cfg.get("activation_fn")
    if activation == "topk":
        kwargs = cfg.get("activation_fn_kwargs") or {}
        return "topk", kwargs.get("k")
    return cfg.get("architecture") or "standard", cfg.get("k")


def load_sae(path: str | os.PathLike[str], *, dtype: torch.dtype | None = None) -> SparseAutoencoder:
    """Read an SAE saved in SAELens's layout (v6, or older flat configs): architectures topk,
    jumprelu and standard (BatchTopK files are jumprelu). Encodings equal SAELens's own.

    Raises:
        SAEFormatError: a missing file, a shape that disagrees with ``cfg.json``, an architecture or
            activation normalisation headwater cannot reproduce.
    """
    root = Path(path)
    cfg = _read_json(root / SAELENS_CONFIG)
    version = cfg.get("sae_lens_version") or (cfg.get("metadata") or {}).get("sae_lens_version")
    modern = isinstance(version, str) and version.split(".")[0].isdigit() and int(version.split(".")[0]) >= 6
    architecture, k = (cfg.get("architecture"), cfg.get("k")) if modern else _pre_v6_architecture(cfg)
    if architecture not in ("topk", "jumprelu", "standard"):
        raise SAEFormatError(f"{root}: architecture {architecture!r} is not supported "
                             "(topk, jumprelu, standard; a BatchTopK SAE is saved as jumprelu)")
    normalisation = cfg.get("normalize_activations") or "none"
    if normalisation is True:
        normalisation = "expected_average_only_in"
    if normalisation not in ("none", "expected_average_only_in"):
        raise SAEFormatError(f"{root}: normalize_activations {normalisation!r} is applied at inference by SAELens; "
                             "headwater reads SAEs whose inputs are raw activations ('none', or a folded "
                             "'expected_average_only_in')")
    if cfg.get("reshape_activations", "none") not in ("none", None):
        raise SAEFormatError(f"{root}: reshape_activations {cfg['reshape_activations']!r} (attention heads) "
                             "is not a residual-stream SAE")
    d_in, d_sae = _int_field(cfg, "d_in", root), _int_field(cfg, "d_sae", root)
    if architecture == "topk":
        k = _int_field({"k": k}, "k", root)
    where = root / SAELENS_WEIGHTS
    tensors = _read_tensors(where)
    if "scaling_factor" in tensors:
        if not bool((tensors["scaling_factor"] == 1).all()):
            raise SAEFormatError(f"{where}: a fine-tuning scaling_factor other than 1 is not supported")
        del tensors["scaling_factor"]
    loaded = {
        "W_enc": _expect(tensors, "W_enc", (d_in, d_sae), where),
        "b_enc": _expect(tensors, "b_enc", (d_sae,), where),
        "W_dec": _expect(tensors, "W_dec", (d_sae, d_in), where),
        "b_dec": _expect(tensors, "b_dec", (d_in,), where),
    }
    threshold = (_expect(tensors, "threshold", (d_sae,), where) if architecture == "jumprelu"
                 else torch.zeros(d_sae))
    unknown = set(tensors) - set(loaded) - {"threshold"}
    if unknown:
        raise SAEFormatError(f"{where} has tensors headwater does not know: {sorted(unknown)}")
    if dtype is None:
        name = str(cfg.get("dtype", "float32")).removeprefix("torch.")
        dtype = DTYPES.get(name, loaded["W_enc"].dtype)
    sae = SparseAutoencoder(d_in, d_sae, architecture=architecture, k=k,
                            apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)), dtype=dtype)
    with torch.no_grad():
        for name, value in loaded.items():
            getattr(sae, name).copy_(value.to(dtype))
        sae.threshold.copy_(threshold.to(dtype))
        if architecture == "topk" and cfg.get("rescale_acts_by_decoder_norm"):
            # SAELens scales h by each decoder row's norm before top-k and divides it out before
            # decoding; folding the norms into W_enc, b_enc and W_dec gives the same map.
            norms = sae.W_dec.norm(dim=1)
            sae.W_enc.mul_(norms)
            sae.b_enc.mul_(norms)
            sae.W_dec.div_(norms.clamp_min(torch.finfo(dtype).tiny)[:, None])
    return sae


def sae_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``cfg.json``'s ``metadata`` of a saved SAE (empty for old files)."""
    return dict(_read_json(Path(path) / SAELENS_CONFIG).get("metadata") or {})


# -- sparsify -------------------------------------------------------------------------------------


def _sparsify_directory(root: Path, hookpoint: str | None) -> Path:
    if hookpoint is not None:
        root = root / hookpoint
    if (root / SPARSIFY_WEIGHTS).exists():
        return root
    inside = sorted(p.name for p in root.iterdir() if (p / SPARSIFY_WEIGHTS).exists()) if root.is_dir() else []
    if inside:
        raise SAEFormatError(f"{root} holds one sparsify SAE per hookpoint: choose one of {inside}")
    raise SAEFormatError(f"{root} has no {SPARSIFY_WEIGHTS} (not a sparsify SAE directory)")


def load_sparsify(path: str | os.PathLike[str], *, hookpoint: str | None = None) -> SparseAutoencoder:
    """Read an EleutherAI sparsify SAE (``activation: topk``, no skip connection) as a topk SAE
    whose encodings equal sparsify's. ``hookpoint`` picks a subdirectory of a run directory."""
    root = _sparsify_directory(Path(path), hookpoint)
    cfg = _read_json(root / SAELENS_CONFIG)
    if cfg.get("activation", "topk") != "topk":
        raise SAEFormatError(f"{root}: activation {cfg.get('activation')!r} is not supported (only topk)")
    if cfg.get("skip_connection"):
        raise SAEFormatError(f"{root}: SAEs with a skip connection (W_skip) are not supported")
    d_in = _int_field(cfg, "d_in", root)
    num_latents = cfg.get("num_latents") or d_in * _int_field(cfg, "expansion_factor", root)
    num_latents = _int_field({"num_latents": num_latents}, "num_latents", root)
    k = _int_field(cfg, "k", root)
    if k > num_latents:
        raise SAEFormatError(f"{root}: k = {k} exceeds num_latents = {num_latents}")
    where = root / SPARSIFY_WEIGHTS
    tensors = _read_tensors(where)
    weight = _expect(tensors, "encoder.weight", (num_latents, d_in), where)
    bias = _expect(tensors, "encoder.bias", (num_latents,), where)
    w_dec = _expect(tensors, "W_dec", (num_latents, d_in), where)
    b_dec = _expect(tensors, "b_dec", (d_in,), where)
    dtype = weight.dtype if weight.dtype in (torch.float32, torch.float64) else torch.float32
    sae = SparseAutoencoder(d_in, num_latents, architecture="topk", k=k,
                            apply_b_dec_to_input=not cfg.get("transcode", False), dtype=dtype)
    with torch.no_grad():
        sae.W_enc.copy_(weight.T.to(dtype))
        sae.b_enc.copy_(bias.to(dtype))
        sae.W_dec.copy_(w_dec.to(dtype))
        sae.b_dec.copy_(b_dec.to(dtype))
    return sae


def save_sparsify(sae: SparseAutoencoder, path: str | os.PathLike[str]) -> Path:
    """Write a topk SAE in sparsify's layout (for exchange with sparsify users)."""
    if sae.architecture != "topk":
        raise ValueError(f"sparsify stores topk SAEs only, not {sae.architecture}")
    cfg = {"activation": "topk", "expansion_factor": max(1, sae.d_sae // sae.d_in), "normalize_decoder": True,
           "num_latents": sae.d_sae, "k": sae.k, "multi_topk": False, "skip_connection": False,
           "transcode": not sae.apply_b_dec_to_input, "d_in": sae.d_in}
    tensors = {"encoder.weight": sae.W_enc.T, "encoder.bias": sae.b_enc, "W_dec": sae.W_dec, "b_dec": sae.b_dec}
    target = Path(path)
    with atomic_directory(target) as tmp:
        save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(tmp / SPARSIFY_WEIGHTS))
        (tmp / SAELENS_CONFIG).write_text(json.dumps(cfg, indent=2) + "\n")
    return target


__all__ = ["SAEFormatError", "load_sae", "load_sparsify", "sae_metadata", "save_sae", "save_sparsify"]
