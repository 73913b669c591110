"""Backend choice for every kernel op, the compiled extension loader, and logging of both.

Backends, by name:

- ``"triton"``: the Triton kernels; needs CUDA tensors, or ``TRITON_INTERPRET=1`` set before
  ``headwater.kernels`` is imported (the interpreter, used by the tests on CPU machines).
- ``"cpp"``: the C++ extension ``headwater._C`` (OpenMP threads) for CPU tensors.
- ``"torch"``: plain torch operations; runs everywhere and is the fallback.
- ``"auto"``: ``triton`` for CUDA tensors, else ``cpp`` when the extension loads, else ``torch``.

Each choice is logged once per (op, backend, reason), like faiss's ``loader.py`` logs which build it
loaded and why the others were not used.
"""
from __future__ import annotations

import importlib
import logging
import os
import re
from types import ModuleType

import torch

LOG = logging.getLogger("headwater.kernels")

_logged: set[tuple[str, str, str]] = set()
_extension: ModuleType | None = None
_extension_error: str | None = None
_extension_tried = False


def log_once(op: str, backend: str, reason: str) -> None:
    """Log the backend used for ``op`` the first time this (op, backend, reason) occurs."""
    key = (op, backend, reason)
    if key not in _logged:
        _logged.add(key)
        LOG.debug("%s: using the %s backend (%s)", op, backend, reason)  # shown with -v


def load_extension() -> ModuleType | None:
    """``headwater._C`` or None; the import error is remembered and logged once as a warning."""
    global _extension, _extension_error, _extension_tried
    if not _extension_tried:
        _extension_tried = True
        try:
            _extension = importlib.import_module("headwater._C")
        except ImportError as error:  # not built: fall back to torch, say why
            _extension_error = (
                f"headwater._C is not available ({error}); build it with "
                "`pip install --no-build-isolation -e .`"
            )
            LOG.warning("%s; CPU kernels fall back to torch", _extension_error)
    return _extension


def extension_error() -> str | None:
    """Why ``headwater._C`` could not be imported, or None when it loaded."""
    load_extension()
    return _extension_error


def triton_interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _major_minor(version: str) -> tuple[int, int]:
    parts = re.findall(r"\d+", version)[:2]
    return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0


def interpreter_incompatibility(triton_version: str, numpy_version: str) -> str | None:
    """Why the Triton interpreter of this version pair cannot run kernels, or None.

    triton < 3.7's interpreter turns scalar kernel arguments into Python ints with
    ``int(one_element_array)`` (a loop bound such as ``range(0, T, BLOCK_T)`` does this), which
    numpy >= 2.4 rejects; triton 3.7 squeezes the array first. Compiled kernels on a GPU are not
    affected.
    """
    if _major_minor(triton_version) < (3, 7) and _major_minor(numpy_version) >= (2, 4):
        return (
            f"the Triton {triton_version} interpreter cannot run with numpy {numpy_version} "
            "(it calls int() on one-element arrays, an error since numpy 2.4); use triton >= 3.7 "
            "or numpy < 2.4 for TRITON_INTERPRET=1"
        )
    return None


def triton_unavailable_reason(device: torch.device) -> str | None:
    """None when Triton kernels can run on tensors of ``device``, else why not."""
    try:
        triton = importlib.import_module("triton")
    except ImportError as error:
        return f"triton is not installed ({error})"
    if device.type == "cuda":
        return None
    if triton_interpreter_enabled():
        import numpy

        return interpreter_incompatibility(triton.__version__, numpy.__version__)
    return (
        f"tensors are on {device.type}, and Triton runs on CUDA devices only (or under "
        "TRITON_INTERPRET=1, set before headwater.kernels is imported)"
    )


def resolve_backend(
    op: str,
    requested: str,
    device: torch.device,
    available: tuple[str, ...] = ("triton", "cpp", "torch"),
) -> str:
    """The concrete backend for ``op`` on ``device``: ``"triton"``, ``"cpp"`` or ``"torch"``.

    ``available`` lists the backends ``op`` implements.

    Raises:
        ValueError: ``requested`` is not ``"auto"`` or one of ``available``.
        RuntimeError: a backend was requested by name and cannot run here (with the reason).
    """
    if requested != "auto" and requested not in available:
        raise ValueError(f"{op}: backend must be one of {('auto', *available)}, got {requested!r}")
    if requested == "auto":
        if device.type == "cuda":
            reason = triton_unavailable_reason(device)
            if reason is None:
                log_once(op, "triton", "CUDA tensors")
                return "triton"
            log_once(op, "torch", reason)
            return "torch"
        if "cpp" not in available:
            log_once(op, "torch", f"tensors on {device.type}; no C++ kernel for this op")
            return "torch"
        if device.type == "cpu" and load_extension() is not None:
            log_once(op, "cpp", "CPU tensors, headwater._C loaded")
            return "cpp"
        log_once(op, "torch", extension_error() or f"tensors on {device.type}")
        return "torch"
    if requested == "triton":
        reason = triton_unavailable_reason(device)
        if reason is not None:
            raise RuntimeError(f"{op}: backend='triton' cannot run: {reason}")
    elif requested == "cpp":
        if device.type != "cpu":
            raise RuntimeError(f"{op}: backend='cpp' needs CPU tensors, got {device.type}")
        if load_extension() is None:
            raise RuntimeError(f"{op}: backend='cpp' cannot run: {extension_error()}")
    log_once(op, requested, "requested by name")
    return requested
