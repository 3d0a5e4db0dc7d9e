"""Weights files read weights-only, checked against a network, and the UNet settings they fit.

Used by :func:`pipeline.training.checkpoints.load_weights` and
:func:`pipeline.training.model_settings.load_network`; it imports no engine or handler, so the
inference code that an exported bundle carries stays small.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import torch


def read_weights(path: str | Path) -> dict:
    """The state_dict of ``model.pt`` (a plain state_dict) or of a training checkpoint (its ``network``).

    Loading is weights-only: a file that needs arbitrary pickled objects is refused.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a weights-only checkpoint, or holds no state_dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; pass --ckpt_path /path/to/model.pt")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(
            f"{path} cannot be loaded weights-only ({type(error).__name__}: {str(error).splitlines()[0]}). "
            "Checkpoints holding arbitrary pickled objects are refused: they can run code when loaded. "
            "Re-save the weights with torch.save(network.state_dict(), path)."
        ) from error
    if isinstance(state, dict) and "network" in state and isinstance(state["network"], dict):
        state = state["network"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, expected a state_dict of tensors")
    return state


def weights_mismatch(network: torch.nn.Module, state: Mapping) -> str | None:
    """Why ``state`` does not fit ``network``: the first mismatching shapes, missing and unexpected
    keys; None when it fits."""
    target = network.state_dict()
    missing = sorted(set(target) - set(state))
    unexpected = sorted(set(state) - set(target))
    shapes = [
        k for k in target if k in state and tuple(getattr(state[k], "shape", ())) != tuple(target[k].shape)
    ]
    details = []
    if shapes:
        details.append(
            "shape mismatch: "
            + ", ".join(f"{k} {tuple(state[k].shape)} vs {tuple(target[k].shape)}" for k in shapes[:3])
        )
    if missing:
        details.append(f"missing keys: {missing[:3]}")
    if unexpected:
        details.append(f"unexpected keys: {unexpected[:3]}")
    return "; ".join(details) or None


def unet_settings_of(state: Mapping) -> dict | None:
    """The ``networks.UNet`` arguments that shaped ``state`` (channels_in, n_classes, depth,
    n_filters), or None when it is not a UNet's state_dict."""
    first, head = state.get("down.0.0.weight"), state.get("head.weight")
    if first is None or head is None or getattr(first, "ndim", 0) != 4:
        return None
    depth = len({key.split(".")[1] for key in state if key.startswith("down.") and key.endswith(".0.weight")})
    n_filters = math.log2(first.shape[0])
    if not n_filters.is_integer():
        return None
    return {
        "channels_in": int(first.shape[1]),
        "n_classes": int(head.shape[0]),
        "depth": depth,
        "n_filters": int(n_filters),
    }
