"""Uncertainty of a segmentation: samples of the network, per-voxel maps and per-patient scores.

One definition for evaluate.json (which measures whether the scores mean something,
:mod:`pipeline.evaluation.uncertainty_validation`) and inference.json (which writes them,
:mod:`pipeline.inference.uncertainty`).

Decisions:

- **Samples** (``uncertainty``, :data:`METHODS`), each a probability map of the slice:

  - ``"tta"``: the network and its horizontal flip, ``sigmoid(network(x))`` and
    ``sigmoid(flip(network(flip(x))))``: 2 samples, one forward pass more per slice than
    without uncertainty (none more than ``--tta true``).
  - ``"mc_dropout"``: ``mc_samples`` passes with only the network's Dropout modules in training
    mode (Gal & Ghahramani 2016); every other module (batch norm included) stays as it was, and
    the Dropout modules get their mode back afterwards, also after an error. Refused for a
    network without dropout (the demo models are trained with dropout 0). Costs ``mc_samples``
    forward passes per slice on top of the mask's.
  - ``"ensemble"``: one sample per member of a fold ensemble (the network's ``members``); the
    members run once, for the samples and the ensemble's logit (:func:`ensemble_logit`).

  The mask is never changed by the uncertainty: it is the prediction of the run without it
  (the network's logits, or the flip average with ``tta``), so the Dice evaluate.json reports
  for a mask holds with or without uncertainty. The samples only measure how much that mask is
  to be trusted.
- **Maps** (:data:`MAP_CHANNELS`), per voxel, from the S sample probabilities p_s: ``variance``
  (the population variance over the samples, 0 where all agree; at most 0.25), ``entropy``
  (binary entropy in bits of the mean probability, in [0, 1]: also high where all samples agree
  on 0.5), ``votes`` (the share of samples above the threshold).
- **Scores** per patient (:data:`SCORES`), from the written mask M and the maps over the whole
  volume; both are 0 when the mask and every sample are empty:

  - ``disagreement``: 1 minus the Dice between the samples' masks m_s and M, pooled over the
    samples, ``2 sum_s |m_s & M| / sum_s (|m_s| + |M|)``, which is
    ``1 - 2 sum_M(votes) / (sum(votes) + |M|)``; 0 when every sample's mask is M, in [0, 1].
  - ``entropy``: the mean ``entropy`` over the voxels that M or any sample calls lesion (a
    mean over the predicted lesion, widened to the voxels where the samples disagree, so a
    patient with an empty mask but lesions in some samples is not scored 0).

References:
    Y. Gal, Z. Ghahramani, "Dropout as a Bayesian Approximation: Representing Model Uncertainty in
    Deep Learning", ICML 2016, arXiv:1506.02142.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch

METHODS = ("tta", "mc_dropout", "ensemble")
MAP_CHANNELS = ("variance", "entropy", "votes")
SCORES = ("disagreement", "entropy")
DEFAULT_MC_SAMPLES = 8
_EPS = 1e-7


def uncertainty_method(value: str | None) -> str | None:
    """The ``uncertainty`` key as a method name, or None for off.

    Args:
        value: None, one of :data:`METHODS`, or "null"/"none"/"false"/"" (off, as the bundle
            command line passes them).

    Raises:
        ValueError: another value, naming the key and the choices.
    """
    if value is None or value is False or str(value).strip().lower() in ("", "null", "none", "false"):
        return None
    method = str(value).strip().lower()
    if method not in METHODS:
        raise ValueError(
            f"uncertainty must be null (off) or one of {', '.join(map(repr, METHODS))}, not {value!r}: "
            "set --uncertainty tta (flip samples), mc_dropout (a network trained with dropout) or "
            "ensemble (a fold ensemble)"
        )
    return method


def check_mc_samples(mc_samples: int) -> int:
    """``mc_samples`` as an int >= 2, else ValueError naming the key and the value."""
    if isinstance(mc_samples, bool) or not float(mc_samples).is_integer() or int(mc_samples) < 2:
        raise ValueError(f"mc_samples must be an integer >= 2 (samples per slice), not {mc_samples!r}")
    return int(mc_samples)


def dropout_modules(network: torch.nn.Module) -> list[torch.nn.Module]:
    """The Dropout modules (``torch.nn.modules.dropout._DropoutNd``) of ``network`` with p > 0."""
    return [m for m in network.modules() if isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0]


@contextmanager
def dropout_sampling(network: torch.nn.Module) -> Iterator[None]:
    """Inside the block only the Dropout modules of ``network`` are in training mode.

    Raises:
        ValueError: the network has no Dropout module with p > 0 (naming it and the fix).
    """
    modules = dropout_modules(network)
    if not modules:
        raise ValueError(
            f"uncertainty 'mc_dropout' needs a network with dropout; this {type(network).__name__} has "
            "none (trained with dropout 0, like the demo models): use --uncertainty tta, or a model "
            "trained with --network_def#dropout above 0"
        )
    modes = [m.training for m in modules]
    try:
        for module in modules:
            module.train(True)
        yield
    finally:
        for module, mode in zip(modules, modes):
            module.train(mode)


def ensemble_members(network: torch.nn.Module) -> list[Callable[..., torch.Tensor]]:
    """The members of a fold ensemble (its ``members`` attribute), else ValueError."""
    members = list(getattr(network, "members", None) or [])
    if not members:
        raise ValueError(
            f"uncertainty 'ensemble' needs a fold ensemble (a network with members); this "
            f"{type(network).__name__} is one model: use --uncertainty tta or mc_dropout, or a fold "
            "ensemble's checkpoint"
        )
    return members


def flipped(network: Callable[..., torch.Tensor], inputs: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """``flip(network(flip(inputs)))``, flipping the image columns (the last axis)."""
    return torch.flip(network(torch.flip(inputs, dims=[-1]), *args, **kwargs), dims=[-1])


def ensemble_logit(logits: list[torch.Tensor], eps: float) -> torch.Tensor:
    """The fold ensemble's logit from its members' logits: the logit of the mean of their sigmoid
    probabilities clamped to ``[eps, 1 - eps]``, as ``FoldEnsemble.forward`` computes it (tested
    equal), so that the members run once for both the mask and the samples."""
    mean = torch.clamp(torch.stack([torch.sigmoid(x) for x in logits]).mean(dim=0), eps, 1.0 - eps)
    return torch.log(mean) - torch.log1p(-mean)


def predict_with_samples(
    method: str | None,
    inputs: torch.Tensor,
    network: torch.nn.Module,
    need_flip: bool = False,
    mc_samples: int = DEFAULT_MC_SAMPLES,
    *args,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """The logits of one batch, of its flipped pass, and the samples' probabilities.

    Args:
        method: None (no samples) or one of :data:`METHODS`.
        inputs: (B, C, H, W), the batch.
        network: the network the evaluator runs (in evaluation mode).
        need_flip: compute the flipped pass (``--tta``). Default False; "tta" always does.
        mc_samples: passes of "mc_dropout". Default 8.

    Returns:
        ``(plain, flip, samples)``: ``network(inputs)`` (B, 1, H, W); ``flip(network(flip(inputs)))``
        or None; the samples' probabilities (S, B, 1, H, W), or None without ``method``.
    """
    members = None
    if method == "ensemble":
        members = [member(inputs, *args, **kwargs) for member in ensemble_members(network)]
        plain = ensemble_logit(members, float(getattr(network, "eps", 1e-6)))
    else:
        plain = network(inputs, *args, **kwargs)
    flip = flipped(network, inputs, *args, **kwargs) if need_flip or method == "tta" else None
    if method is None:
        return plain, flip, None
    if method == "tta":
        logits = [plain, flip]
    elif method == "mc_dropout":
        with dropout_sampling(network):
            logits = [network(inputs, *args, **kwargs) for _ in range(check_mc_samples(mc_samples))]
    else:
        logits = members
    return plain, flip, torch.sigmoid(torch.stack(logits).float())


def uncertainty_maps(probabilities: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """The maps of :data:`MAP_CHANNELS` as channels, (B, 3, H, W), from (S, B, 1, H, W) samples."""
    mean = probabilities.mean(dim=0)
    variance = probabilities.var(dim=0, unbiased=False)
    p = mean.clamp(_EPS, 1.0 - _EPS)
    entropy = -(p * torch.log2(p) + (1.0 - p) * torch.log2(1.0 - p))
    entropy = torch.where((mean > 0) & (mean < 1), entropy, torch.zeros_like(entropy))  # 0 where certain
    votes = (probabilities > threshold).float().mean(dim=0)
    return torch.cat([variance, entropy, votes], dim=1)


def patient_scores(mask: np.ndarray, entropy: np.ndarray, votes: np.ndarray) -> dict[str, float]:
    """The per-patient scores of :data:`SCORES` (see the module docstring).

    Args:
        mask: the written mask M, any shape, 0/1.
        entropy, votes: the ``entropy`` and ``votes`` maps, the shape of ``mask``.
    """
    mask = np.asarray(mask) != 0
    votes = np.asarray(votes, dtype=np.float64)
    entropy = np.asarray(entropy, dtype=np.float64)
    total = votes.sum() + mask.sum()
    disagreement = 0.0 if total == 0 else 1.0 - 2.0 * votes[mask].sum() / total
    region = mask | (votes > 0)
    mean_entropy = float(entropy[region].mean()) if region.any() else 0.0
    return {"disagreement": float(max(disagreement, 0.0)), "entropy": mean_entropy}
