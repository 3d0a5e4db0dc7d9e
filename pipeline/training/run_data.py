"""The data of a checkpoint's training run: evaluate.json's default ``dataset_dir`` and ``split_file``.

``python -m monai.bundle run --config_file "['bundle/configs/train.json','bundle/configs/evaluate.json']"``
evaluates a model on its run's own validation patients: the dataset folder and the split file are
resolved from the run's ``config.json`` (:func:`pipeline.training.model_settings.run_parser`:
``output_root`` is where the run folder is, so a ``make demo`` run is found from any directory).
Outside a run folder (a bare ``model.pt``, an exported bundle) there is no run data: None, and
evaluate.json takes train.json's defaults. With another ``--dataset_dir`` than the run's, the split
is that folder's (:func:`pipeline.data.prepare.default_split_file`), not the run's.

Separate from :mod:`pipeline.training.model_settings` so that the inference code an exported
bundle carries does not include the data preparation.
"""

from __future__ import annotations

from pathlib import Path

import pipeline.data.prepare  # noqa: F401  (the run config's data expressions call it)
from pipeline.training.model_settings import TrainedSettings, resolved, run_parser


def _run_value(trained: TrainedSettings, key: str) -> str | None:
    if trained.run_dir is None:
        return None
    value = resolved(run_parser(trained.config, trained.run_dir), key, trained.config_file or "")
    return None if value is None else str(value)


def run_dataset(trained: TrainedSettings) -> str | None:
    """The run's dataset folder (``dataset_dir`` of its config.json), or None outside a run folder."""
    return _run_value(trained, "dataset_dir")


def run_split_file(trained: TrainedSettings, dataset_dir: str | Path) -> str | None:
    """The run's split file when ``dataset_dir`` is the run's dataset folder, else None."""
    dataset = run_dataset(trained)
    if dataset is None or Path(dataset).expanduser().resolve() != Path(dataset_dir).expanduser().resolve():
        return None
    return _run_value(trained, "split_file")
