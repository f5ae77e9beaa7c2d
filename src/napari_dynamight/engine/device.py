"""The torch device a command runs on, checked before any work (one line naming ``--device``)."""

from __future__ import annotations

import torch

from .errors import InputError


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch device that exists here; InputError otherwise."""
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"--device {device!r} is not a torch device; use cpu or cuda:0") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {device}: CUDA is not available here; use --device cpu")
    return chosen
