"""What a checkpoint was trained with, read from its training run: network, image size, data.

evaluate.json and inference.json build their network from it, so that a model is evaluated or
applied as it was trained, with no ``--network_def#...`` or ``--image_size`` on the command line.

Where the settings come from (:func:`run_config_file`), the first found:

- ``config.json`` in the checkpoint's folder or the folder above it: the run folder's merged
  config (:mod:`pipeline.tracking.run_files`), for ``<run>/models/model.pt``,
  ``checkpoint_epoch=N.pt`` and ``final.pt``;
- ``configs/train.json`` above the checkpoint's folder when ``configs/metadata.json`` records
  ``network_settings``: an exported bundle (``models/model.pt``), whose train.json is the run's;
- neither: bundle/configs/train.json's defaults, and a log line saying so.

What the configs make of them:

- ``network_def`` holds null for every argument: null is the run's value; a value given (on the
  command line, ``--network_def#n_filters 4``, or by an overlay) replaces the run's for that
  argument, and the log line says so (:func:`load_network`);
- ``image_size`` is the run's. Another size (given explicitly) is refused before anything is
  read, unless ``allow_other_image_size`` is true, which logs a warning instead (a model applied
  at another size than trained loses accuracy without a word otherwise: issue #13 measured a
  128 px demo model at 256 px at per-volume Dice 0.837 instead of 0.941);
- evaluate.json's ``dataset_dir`` and ``split_file`` are the run's
  (:mod:`pipeline.training.run_data`), so that it evaluates the run's own validation patients.

:func:`load_network` builds the network and loads the weights; the configs run it first in
``initialize``, so that a checkpoint that fits no settings fails in seconds, before any data.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import monai
import torch

import pipeline
from pipeline.flags import truthy
from pipeline.tracking.run_files import CONFIG
from pipeline.training.weights import read_weights, unet_settings_of, weights_mismatch

logger = logging.getLogger(__name__)

TRAIN_CONFIG = Path(__file__).resolve().parents[2] / "bundle" / "configs" / "train.json"
# the modules a run config's expressions may use; its "imports" are not run (one imports mlflow)
# modules, not names: a name would make MONAI import the top-level ``pipeline`` inside an exported
# bundle (the repository's copy where one is installed); the vendored copy maps these imports
GLOBALS = {"pipeline": pipeline, "os": os, "math": math, "torch": torch, "monai": monai}


@dataclass(frozen=True)
class TrainedSettings:
    """The settings a checkpoint was trained with.

    Attributes:
        checkpoint: the weights file.
        config_file: the training config they come from; None: none found (train.json's defaults).
        network: the resolved ``network_def`` (``_target_`` and arguments).
        image_size: the image size the configs default to: the trained one, else train.json's.
        trained_image_size: the image size recorded by the run; None: not recorded.
        run_dir: the run folder when ``config_file`` is its ``config.json``, else None.
        config: the training config read (raw), for :func:`run_parser`.
    """

    checkpoint: str
    config_file: str | None
    network: dict = field(default_factory=dict)
    image_size: int = 256
    trained_image_size: int | None = None
    run_dir: str | None = None
    config: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def from_run(self) -> bool:
        return self.config_file is not None


def run_config_file(checkpoint: str | Path) -> Path | None:
    """The training config recorded for ``checkpoint`` (see the module docstring), or None."""
    folder = Path(checkpoint).expanduser().resolve().parent
    for candidate in (folder / CONFIG, folder.parent / CONFIG):
        if candidate.is_file():
            return candidate
    exported = folder.parent / "configs"
    try:
        recorded = "network_settings" in json.loads((exported / "metadata.json").read_text())
    except (OSError, ValueError, TypeError):
        recorded = False
    return exported / "train.json" if recorded and (exported / "train.json").is_file() else None


def _read(path: Path) -> dict | None:
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        logger.warning("%s is not readable as JSON (%s): ignored", path, error)
        return None
    if not isinstance(config, dict) or not isinstance(config.get("network_def"), dict):
        logger.warning("%s holds no network_def: not a training config, ignored", path)
        return None
    return config


def run_parser(config: dict, run_dir: str | Path | None = None) -> Any:
    """A MONAI ConfigParser of a training config, without its ``imports`` (names: :data:`GLOBALS`,
    and the modules this process has imported); ``output_root`` set to where the run folder
    ``run_dir`` really is (``<output_root>/runs/<name>``), whatever directory it was started from."""
    from monai.bundle import ConfigParser

    kept = {k: copy.deepcopy(v) for k, v in config.items() if k not in ("imports", "_meta_")}
    parser = ConfigParser(kept, globals=GLOBALS)
    if run_dir is not None and Path(run_dir).parent.name == "runs" and "output_root" in config:
        parser["output_root"] = str(Path(run_dir).parent.parent)
    return parser


def resolved(parser: Any, key: str, source: str | Path) -> Any:
    """``key`` of ``parser`` resolved (components not built), or None with a warning naming it."""
    try:
        return parser.get_parsed_content(key, instantiate=False)
    except Exception as error:  # an expression this process cannot evaluate
        message = str(error).splitlines()[0] if str(error) else ""
        logger.warning("%s: %s not resolved (%s: %s)", source, key, type(error).__name__, message)
        return None


def trained_settings(checkpoint: str | Path) -> TrainedSettings:
    """The settings ``checkpoint`` was trained with (see the module docstring).

    Raises:
        FileNotFoundError: ``checkpoint`` does not exist.
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; pass --ckpt_path /path/to/model.pt")
    source = run_config_file(path)
    config = _read(source) if source is not None else None
    if config is None:
        logger.info(
            "%s has no run config beside it (%s of its run folder): the network settings and image "
            "size are the defaults of %s, the preprocessing the tutorial's (per-slice min-max, no "
            "crop); pass --network_def#... and --image_size if it was trained with others",
            path,
            CONFIG,
            TRAIN_CONFIG,
        )
        source, config = None, json.loads(TRAIN_CONFIG.read_text())
    run_dir = source.parent if source is not None and source.name == CONFIG else None
    parser = run_parser(config, run_dir)
    origin = source or TRAIN_CONFIG
    network = {key: resolved(parser, f"network_def#{key}", origin) for key in config["network_def"]}
    size = resolved(parser, "image_size", origin)
    recorded = int(size) if isinstance(size, int) and not isinstance(size, bool) else None
    return TrainedSettings(
        checkpoint=str(path),
        config_file=None if source is None else str(source),
        network=network,
        image_size=recorded or int(json.loads(TRAIN_CONFIG.read_text())["image_size"]),
        trained_image_size=recorded if source is not None else None,
        run_dir=None if run_dir is None else str(run_dir),
        config=config,
    )


def check_image_size(trained: TrainedSettings, image_size: int, allow_other: bool | str = False) -> None:
    """Refuse an ``image_size`` other than the trained one, or only warn with ``allow_other``.

    Raises:
        ValueError: the sizes differ and ``allow_other`` is false.
    """
    trained_size = trained.trained_image_size
    if trained_size is None or int(image_size) == trained_size:
        return
    where = f"{trained.checkpoint} was trained at {trained_size} px ({trained.config_file})"
    if truthy(allow_other):
        logger.warning(
            "%s and is run at %s px, as --allow_other_image_size true asks: expect a lower Dice "
            "than at the trained size",
            where,
            image_size,
        )
        return
    raise ValueError(
        f"{where}, not at --image_size {image_size}: a model run at another size than trained loses "
        f"accuracy. Drop --image_size to use {trained_size} px, or pass "
        "--allow_other_image_size true to run at that size anyway"
    )


def _parts(network_def: Any) -> tuple[Any, dict]:
    """The network class and the arguments given in the config (``_mode_`` "callable": a partial)."""
    if isinstance(network_def, functools.partial):
        return network_def.func, dict(network_def.keywords)
    return network_def, {}


def _describe(settings: Mapping) -> str:
    return ", ".join(f"{key}={value!r}" for key, value in settings.items())


def _flags(settings: Mapping) -> str:
    return " ".join(f"--network_def#{key} {value}" for key, value in settings.items())


def _fix(trained: TrainedSettings, given: dict, state: Mapping, used: Mapping) -> str:
    fits = unet_settings_of(state)
    if given and trained.from_run:
        recorded = _describe({key: trained.network.get(key) for key in given})
        return f"Drop {_flags(given)}: {trained.config_file} records {recorded}."
    if fits is None:
        return "Pass the --network_def#... overrides it was trained with."
    needed = _flags({key: value for key, value in fits.items() if used.get(key) != value})
    if trained.from_run:
        return (
            f"The weights do not match their run's settings; they fit {_describe(fits)}: was the file "
            f"replaced? Pass {needed} to load it anyway."
        )
    return (
        f"These weights fit {_describe(fits)}: pass {needed} (and the --image_size it was trained "
        f"at), or keep the run's {CONFIG} beside its models/ folder."
    )


def build_network(network_def: Any, trained: TrainedSettings | None = None) -> tuple[Any, dict, dict]:
    """(the network, untrained; the arguments it was built with; those of ``network_def`` that
    replaced a value of ``trained``).

    Args:
        network_def: the config's ``network_def``: a ``_mode_`` "callable" component (a partial of
            the network class whose non-null arguments replace ``trained``'s), or a built module
            (used as it is).
        trained: from :func:`trained_settings`. Default None: train.json's ``network_def``.
    """
    if isinstance(network_def, torch.nn.Module):
        return network_def, {}, {}
    recorded = trained.network if trained is not None else json.loads(TRAIN_CONFIG.read_text())["network_def"]
    target, arguments = _parts(network_def)
    settings = {k: v for k, v in recorded.items() if k != "_target_" and v is not None}
    given = {k: v for k, v in arguments.items() if v is not None and settings.get(k) != v}
    settings.update({k: v for k, v in arguments.items() if v is not None})
    return target(**settings), settings, given


def load_network(
    network_def: Any,
    trained: TrainedSettings,
    image_size: int | None = None,
    allow_other_image_size: bool | str = False,
    device: str | torch.device | None = None,
) -> torch.nn.Module:
    """The network of ``trained`` (:func:`build_network`) with its weights, on ``device``, after
    the image-size check.

    Args:
        network_def: the config's ``network_def`` (see :func:`build_network`).
        trained: from :func:`trained_settings`.
        image_size: the size the network will see, checked by :func:`check_image_size`. Default
            None: not checked.
        allow_other_image_size: let ``image_size`` differ from the trained one (a warning).
        device: default None: where the weights were loaded (CPU).

    Raises:
        ValueError: another image size than trained, or the weights do not fit (the message names
            the mismatching keys and shapes, where the settings came from and the fix).
    """
    if image_size is not None:
        check_image_size(trained, image_size, allow_other_image_size)
    origin = f"run config {trained.config_file}" if trained.from_run else f"defaults of {TRAIN_CONFIG}"
    network, settings, given = build_network(network_def, trained)
    overrides = f"; given in the config or command line: {_describe(given)}" if given else ""
    logger.info(
        "Model %s: %s(%s) from the %s, image size %s px%s",
        trained.checkpoint,
        type(network).__name__,
        _describe(settings) if settings else "built by network_def; the recorded settings not applied",
        origin,
        image_size if image_size is not None else trained.image_size,
        overrides,
    )
    state = read_weights(trained.checkpoint)
    details = weights_mismatch(network, state)
    if details:
        with_given = f" with {_describe(given)}" if given else ""
        fix = _fix(trained, given, state, settings)
        raise ValueError(
            f"{trained.checkpoint} does not fit the network built from the {origin}{with_given} "
            f"({details}). {fix}"
        )
    network.load_state_dict(state)
    return network if device is None else network.to(device)
