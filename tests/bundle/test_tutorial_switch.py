"""The tutorial's recipe stays one switch away: bundle/configs/tutorial.json after train.json.

train.json's defaults are the recipe measured better on the hard phantom (per-volume intensity,
sampling floor 0.5); the overlay gives back the tutorial's per-slice min-max and floor 0.1, and
the resolved chain then scales by slice, not by the record's bounds.
"""

from __future__ import annotations

import json

import pytest
from monai.bundle import ConfigParser

from tests.support import CONFIGS


def _parsed(*overlays: str) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / name) for name in ("train.json", *overlays)])
    return parser


def _scalers(parser: ConfigParser) -> list[str]:
    chain = parser.get_parsed_content("deterministic_transforms")
    return [type(t).__name__ for t in chain if "Scale" in type(t).__name__]


def test_train_json_defaults_are_the_measured_recipe():
    parser = _parsed()
    assert (parser["intensity"], parser["sampling_floor"], parser["crop"]) == ("volume", 0.5, "none")
    assert _scalers(parser) == ["ScaleIntensityByRecordd"]
    logged = json.loads((CONFIGS / "train.json").read_text())["mlflow_tracking"]["experiment_param"]
    assert logged["sampling_floor"] == "@sampling_floor" and logged["intensity"] == "@intensity"


@pytest.mark.parametrize("overlays", [("tutorial.json",), ("demo.json", "tutorial.json")])
def test_tutorial_overlay_gives_back_the_tutorials_recipe(overlays):
    parser = _parsed(*overlays)
    assert (parser["intensity"], parser["sampling_floor"], parser["crop"]) == ("slice", 0.1, "none")
    assert _scalers(parser) == ["ScaleIntensityd"]
    assert parser.get_parsed_content("data#sampling_floor") == 0.1


def test_tutorial_overlay_changes_nothing_else():
    tutorial = json.loads((CONFIGS / "tutorial.json").read_text())
    train = json.loads((CONFIGS / "train.json").read_text())
    assert set(tutorial) - {"_desc_"} == {"intensity", "sampling_floor", "crop"}
    assert all(key in train for key in set(tutorial) - {"_desc_"})
