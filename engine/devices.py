"""Devices: a name checked against this machine before any model is loaded on it."""
from __future__ import annotations

import torch


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch.device that exists on this machine.

    Raises:
        ValueError: a name torch does not know, or a CUDA (or MPS) device this machine lacks.
    """
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"unknown device {device!r} ({err}); use e.g. cpu, cuda or cuda:1") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise ValueError(f"device {device!r}: CUDA is not available here (torch {torch.__version__}, {build})")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif resolved.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ValueError(f"device {device!r}: MPS is not available here")
    return resolved


__all__ = ["check_device"]
