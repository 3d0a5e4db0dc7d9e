"""Fold ensembles: the k fold models of a cross-validation applied as one network.

:class:`FoldEnsemble` returns, for each pixel, the logit of the mean of its members' sigmoid
probabilities. Returning a logit (not the probability) keeps everything downstream unchanged:
inference and evaluation apply the sigmoid, the threshold and flip TTA to logits as for a single
model. Decisions:

- The mean is of probabilities, not of logits: one over-confident member (a logit of 30) cannot
  outvote the others, and the mean is the ensemble's estimate of the probability.
- The mean is clamped to ``[eps, 1 - eps]`` (eps 1e-6, logits within about +-13.8) so that the
  logit stays finite when every member is certain. An ensemble of one gives its member's logits
  within float rounding wherever they are within that range, and the same masks.
- With ``--tta true`` the flip average is of the ensemble's logits (each member sees both the slice
  and its flip).
- Members must take the same input and give the same output: the same image size, channels in
  and out, and preprocessing (``intensity``, ``crop`` and ``deterministic_transforms`` of their run configs);
  their architectures may differ. Otherwise they are refused, naming the checkpoints
  (:func:`check_members`).

Where the members come from: :mod:`pipeline.inference.fold_models` (a cross-validation folder, a
fold run folder, or a list of checkpoints). The configs (inference.json, evaluate.json) build the
network with :func:`load_model`: the single model of ``ckpt_path`` when ``crossval`` is null, else
the ensemble of its folds, each with its own trained settings. An exported ensemble bundle holds
the ensemble's state_dict (``members.<i>.*``) in one ``models/model.pt``, loaded by
:func:`load_ensemble`.
"""

from __future__ import annotations

import json
import logging
import pydoc
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.inference.fold_models import crossval_folder, fold_checkpoints
from pipeline.training.model_settings import (
    TrainedSettings,
    build_network,
    check_image_size,
    load_network,
    resolved,
    run_parser,
    trained_settings,
)
from pipeline.training.weights import read_weights, weights_mismatch

__all__ = [
    "FoldEnsemble",
    "check_members",
    "crossval_folder",
    "ensemble_settings",
    "fold_ensemble",
    "held_out",
    "load_ensemble",
    "load_model",
    "member_settings",
]

logger = logging.getLogger(__name__)

EPS = 1e-6
# the run-config keys that decide what the network sees; members must agree on them
PREPROCESSING_KEYS = ("intensity", "crop", "deterministic_transforms")


class FoldEnsemble(nn.Module):
    """The logit of the mean of the members' sigmoid probabilities (module docstring).

    Args:
        members: the networks, each mapping (B, C, H, W) to (B, 1, H, W) logits.
        eps: the mean probability is clamped to ``[eps, 1 - eps]``. Default 1e-6.

    Raises:
        ValueError: no member, ``eps`` outside (0, 0.5), or members with different ``channels_in``
            or ``n_classes`` (where they have those attributes).
    """

    def __init__(self, members: Sequence[nn.Module], eps: float = EPS) -> None:
        super().__init__()
        if len(members) == 0:
            raise ValueError("FoldEnsemble needs at least one member, got none")
        if not 0.0 < eps < 0.5:
            raise ValueError(f"eps must be in (0, 0.5), not {eps}")
        for attribute in ("channels_in", "n_classes"):
            values = [getattr(m, attribute, None) for m in members]
            known = {v for v in values if v is not None}
            if len(known) > 1:
                raise ValueError(f"FoldEnsemble members differ in {attribute}: {values} (member order)")
        self.members = nn.ModuleList(members)
        self.eps = float(eps)
        self.channels_in = int(getattr(members[0], "channels_in", 3))

    def member_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (k, B, 1, H, W): each member's sigmoid probabilities (for their spread)."""
        return torch.stack([torch.sigmoid(member(x)) for member in self.members])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, 1, H, W) logits; H and W as each member requires."""
        mean = torch.clamp(self.member_probabilities(x).mean(dim=0), self.eps, 1.0 - self.eps)
        return torch.log(mean) - torch.log1p(-mean)


def _differences(first: TrainedSettings, other: TrainedSettings) -> list[str]:
    out = []
    if first.image_size != other.image_size:
        out.append(f"image size {first.image_size} vs {other.image_size} px")
    for key in ("channels_in", "n_classes"):
        a, b = first.network.get(key), other.network.get(key)
        if a is not None and b is not None and a != b:
            out.append(f"network_def#{key} {a} vs {b}")
    for key in PREPROCESSING_KEYS:
        if first.config.get(key) != other.config.get(key):
            out.append(f"{key} of the run configs")
    return out


def check_members(settings: Sequence[TrainedSettings]) -> None:
    """Refuse members that do not see the same input (module docstring).

    Raises:
        ValueError: naming the two checkpoints and what differs.
    """
    for other in settings[1:]:
        differ = _differences(settings[0], other)
        if differ:
            raise ValueError(
                f"ensemble members {settings[0].checkpoint} and {other.checkpoint} differ in "
                f"{', '.join(differ)}: the members of an ensemble must be trained on the same input; "
                "average the folds of one cross-validation (or checkpoints of one recipe)"
            )


def member_settings(crossval: str | Path | Sequence[str | Path]) -> list[TrainedSettings]:
    """The trained settings of every member of ``crossval``
    (:func:`pipeline.inference.fold_models.fold_checkpoints`), checked by :func:`check_members`."""
    settings = [trained_settings(c) for c in fold_checkpoints(crossval)]
    check_members(settings)
    return settings


def ensemble_settings(crossval: str | Path | Sequence[str | Path]) -> TrainedSettings:
    """The settings the configs read for an ensemble (``trained_with``): the first member's, which
    every member shares (:func:`member_settings`)."""
    return member_settings(crossval)[0]


def _recorded_class(trained: TrainedSettings) -> Any:
    """The network class a member's run config names (``network_def#_target_``).

    Raises:
        ValueError: it names none, or one that cannot be imported.
    """
    target = trained.network.get("_target_")
    found = pydoc.locate(str(target)) if isinstance(target, str) else None
    if not callable(found):
        raise ValueError(
            f"{trained.config_file or trained.checkpoint}: network_def#_target_ {target!r} is no importable "
            "network class; pass network_def"
        )
    return found


def fold_ensemble(
    crossval: str | Path | Sequence[str | Path],
    network_def: Any = None,
    image_size: int | None = None,
    allow_other_image_size: bool | str = False,
    device: str | torch.device | None = None,
) -> FoldEnsemble:
    """The ensemble of ``crossval``'s members, each built and loaded with its own trained settings
    (:func:`pipeline.training.model_settings.load_network`).

    Args:
        crossval: a cross-validation folder, a fold run folder or a list of checkpoints.
        network_def: the config's ``network_def``; its non-null values replace every member's.
            Default None: each member's recorded network class and settings.
        image_size, allow_other_image_size: the image-size check of each member. Default None:
            not checked.
        device: default None: the CPU.
    """
    settings = member_settings(crossval)
    members = [
        load_network(network_def or _recorded_class(s), s, image_size, allow_other_image_size)
        for s in settings
    ]
    ensemble = FoldEnsemble(members)
    logger.info("Fold ensemble of %d models: %s", len(members), ", ".join(s.checkpoint for s in settings))
    return ensemble if device is None else ensemble.to(device)


def load_model(
    network_def: Any,
    trained: TrainedSettings,
    crossval: str | Path | Sequence[str | Path] | None = None,
    image_size: int | None = None,
    allow_other_image_size: bool | str = False,
    device: str | torch.device | None = None,
) -> nn.Module:
    """The configs' ``network``: ``trained``'s single model, or the fold ensemble of ``crossval``.

    Args:
        network_def, image_size, allow_other_image_size, device: as for
            :func:`pipeline.training.model_settings.load_network`.
        trained: the single model's settings (``trained_with``); with ``crossval`` only its image size
            is used (:func:`ensemble_settings` gives the members').
        crossval: a cross-validation folder, a fold run folder or a list of checkpoints. Default
            None (or ""): the single model.
    """
    if crossval is None or crossval == "":
        return load_network(network_def, trained, image_size, allow_other_image_size, device)
    return fold_ensemble(crossval, network_def, image_size, allow_other_image_size, device)


def load_ensemble(
    network_def: Any,
    trained: TrainedSettings,
    folds: int,
    image_size: int | None = None,
    allow_other_image_size: bool | str = False,
    device: str | torch.device | None = None,
) -> FoldEnsemble:
    """An exported ensemble: ``folds`` networks of ``trained``'s settings, the ensemble's state_dict
    (``members.<i>.*``) read from ``trained.checkpoint``.

    Raises:
        ValueError: another image size than trained, or the weights do not fit ``folds`` members.
    """
    if image_size is not None:
        check_image_size(trained, image_size, allow_other_image_size)
    ensemble = FoldEnsemble([build_network(network_def, trained)[0] for _ in range(int(folds))])
    state = read_weights(trained.checkpoint)
    details = weights_mismatch(ensemble, state)
    if details:
        raise ValueError(
            f"{trained.checkpoint} does not hold a {folds}-member ensemble of the network of "
            f"{trained.config_file} ({details}); export the cross-validation again"
        )
    ensemble.load_state_dict(state)
    logger.info("Fold ensemble of %d models from %s", int(folds), trained.checkpoint)
    return ensemble if device is None else ensemble.to(device)


def _seen_patients(trained: TrainedSettings) -> set[str]:
    """The patients a member trained or was selected on (its split file's ``train`` and ``val``);
    empty when its run config names no readable split file."""
    if trained.run_dir is None:
        return set()
    split_file = resolved(
        run_parser(trained.config, trained.run_dir), "split_file", trained.config_file or ""
    )
    try:
        split = json.loads(Path(str(split_file)).read_text())
    except (OSError, ValueError, TypeError):
        logger.warning(
            "%s: split file %s not readable; its patients are not checked", trained.checkpoint, split_file
        )
        return set()
    return {str(p) for key in ("train", "val") for p in split.get(key, [])}


def held_out(records: list[dict], crossval: str | Path | Sequence[str | Path] | None = None) -> list[dict]:
    """evaluate.json's records, unchanged, after checking that no member of the ensemble
    ``crossval`` trained or was selected on their patients (None: a single model, not checked).

    A fold ensemble has seen every patient of its cross-validation (fold ``i``'s are the training
    patients of the other folds), so it can only be evaluated on other data; its out-of-fold
    estimate is the cross-validation's pooled summary.

    Raises:
        ValueError: naming the patients seen and the held-out evaluation to run instead.
    """
    if crossval is None or crossval == "":
        return records
    seen = set().union(*(_seen_patients(s) for s in member_settings(crossval)))
    overlap = sorted({str(r["patient"]) for r in records} & seen)
    if overlap:
        shown = ", ".join(overlap[:5]) + (f" and {len(overlap) - 5} more" if len(overlap) > 5 else "")
        raise ValueError(
            f"the fold ensemble {crossval} would be evaluated on {len(overlap)} patients its folds trained "
            f"or were selected on ({shown}): evaluate it on held-out data, e.g. python -m pipeline synth "
            "--out outputs/phantom_heldout --patients 20 --seed 7, then --dataset_dir "
            "outputs/phantom_heldout --eval_set all (the out-of-fold result is the cross-validation's "
            "pooled summary.json)"
        )
    return records
