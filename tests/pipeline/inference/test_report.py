"""report.html of an inference run: parsed with html.parser, every embedded image decoded."""

from __future__ import annotations

import base64
import io
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from pipeline.inference.input_record import InferenceInput
from pipeline.inference.run_summary import InferenceFailed
from pipeline.inference.workflow import find_inputs, run_inference, segment_inputs

N_SLICES = 11
SHAPE = (32, 40)  # rows H, columns W
MODEL = {
    "bundle_name": "LGG FLAIR abnormality segmentation",
    "bundle_version": "0.1.0",
    "weights_sha256": "c0ffee",
}


class BrightFlair(torch.nn.Module):
    """A network stand-in: a large positive logit where the FLAIR channel (1) is bright."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x[:, 1:2] - 0.5) * 50.0


def lesion(k: int) -> np.ndarray:
    """Slice k's lesion: none on slices 0, 1 and 10; 8 x (2 + k) pixels on slices 2-9, growing with k."""
    mask = np.zeros(SHAPE, bool)
    if 2 <= k <= 9:
        mask[10:18, 6 : 8 + k] = True
    return mask


def write_patient(folder: Path, with_lesion: bool) -> None:
    folder.mkdir(parents=True)
    for k in range(N_SLICES):
        image = np.full((*SHAPE, 3), 10, np.uint8)
        if with_lesion:
            image[..., 1][lesion(k)] = 250
        tifffile.imwrite(folder / f"{folder.name}_{k + 1}.tif", image)


class Page(HTMLParser):
    """The sections of the report (data-input), their text and images; all links and sources."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: dict[str, dict] = {}
        self.current: dict | None = None
        self.urls: list[str] = []
        self.text: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        self.urls += [attrs[key] for key in ("src", "href") if key in attrs]
        if tag == "section":
            self.current = {"status": attrs["data-status"], "images": [], "text": []}
            self.sections[attrs["data-input"]] = self.current
        elif tag == "img" and self.current is not None:
            self.current["images"].append(attrs)

    def handle_endtag(self, tag):
        if tag == "section":
            self.current = None

    def handle_data(self, data):
        self.text.append(data)
        if self.current is not None:
            self.current["text"].append(data)


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def decode(img: dict) -> np.ndarray:
    prefix = "data:image/png;base64,"
    assert img["src"].startswith(prefix)
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(img["src"][len(prefix) :]))).convert("RGB"))


def test_report_shows_volumes_montages_flags_and_the_model(tmp_path):
    data, out = tmp_path / "in", tmp_path / "out"
    write_patient(data / "TCGA_AA_0001_20000101", with_lesion=True)
    write_patient(data / "TCGA_BB_0002_20000102", with_lesion=False)
    inputs = find_inputs(data)
    broken = InferenceInput(
        "broken/flair.nii.gz",
        "nifti",
        data / "broken" / "flair.nii.gz",
        0,
        error="cannot read broken/flair.nii.gz: not a NIfTI file",
    )
    inputs.append(broken)
    with pytest.raises(InferenceFailed, match="broken/flair.nii.gz"):
        segment_inputs(inputs, BrightFlair(), out, image_size=32, model_info=MODEL, dataset_dir=data)

    page = parse(out / "report.html")
    text = " ".join(page.text)
    assert "research use only" in text.lower()
    # self-contained: no link or source but embedded PNGs, no script, no stylesheet link
    assert page.urls and all(url.startswith("data:image/png;base64,") for url in page.urls)
    assert "script" not in page.tags and "link" not in page.tags
    # the model's identity, absent values "unknown"
    assert "LGG FLAIR abnormality segmentation" in text and "0.1.0" in text and "c0ffee" in text
    assert "training_run_id unknown" in " ".join(t.strip() for t in page.text if t.strip())

    assert sorted(page.sections) == ["TCGA_AA_0001_20000101", "TCGA_BB_0002_20000102", "broken/flair.nii.gz"]
    sick, healthy, failed = (page.sections[name] for name in sorted(page.sections))
    # the lesion-free patient: no montage, said so
    assert healthy["status"] == "segmented" and healthy["images"] == []
    assert "No lesion found." in healthy["text"]
    # the failed input: its error, no image
    assert failed["status"] == "failed" and failed["images"] == []
    assert any("not a NIfTI file" in t for t in failed["text"])

    # the patient with a lesion: one montage of the 6 slices with most lesion (hand: 4-9, 0-based)
    assert sick["status"] == "segmented"
    voxels = sum(int(lesion(k).sum()) for k in range(N_SLICES))
    assert any(f"{voxels} voxels (voxel size unknown" in t for t in sick["text"])
    assert any("slices with lesion: 8 of 11" in t for t in sick["text"])
    [img] = sick["images"]
    chosen = [int(k) for k in img["data-slices"].split()]
    assert chosen == [4, 5, 6, 7, 8, 9]
    picture = decode(img)
    height, width = picture.shape[:2]
    panel_w = width // len(chosen)
    assert width % len(chosen) == 0 and panel_w == pytest.approx(height * SHAPE[1] / SHAPE[0], abs=1)
    scale_y, scale_x = SHAPE[0] / height, SHAPE[1] / panel_w  # slice pixels per picture pixel
    r, g, b = (picture[..., c].astype(int) for c in range(3))
    red = (r > 180) & (g < 90) & (b < 90)
    grey_bright = (r > 150) & (abs(r - g) < 30) & (abs(r - b) < 30)
    for n, k in enumerate(chosen):
        panel_red = red[:, n * panel_w : (n + 1) * panel_w]
        rows, cols = np.nonzero(panel_red)
        assert rows.size > 0, f"no outline on slice {k}"
        # the outline follows the lesion's edges: rows 10-18, columns 6 to 8 + k (pixel edges)
        y, x = (rows + 0.5) * scale_y, (cols + 0.5) * scale_x
        assert y.min() == pytest.approx(10, abs=1) and y.max() == pytest.approx(18, abs=1)
        assert x.min() == pytest.approx(6, abs=1) and x.max() == pytest.approx(8 + k, abs=1)
        # inside the lesion FLAIR is bright grey, far from it dark
        centre = (round(14 / scale_y), n * panel_w + round((7 + k / 2) / scale_x))
        assert grey_bright[centre], f"slice {k}: lesion centre not bright"
        far = (round(26 / scale_y), n * panel_w + round(30 / scale_x))
        assert r[far] < 80 and not red[far]
    # the montage is also beside the mask, the same picture
    beside = np.asarray(Image.open(out / "TCGA_AA_0001_20000101_overlay.png").convert("RGB"))
    np.testing.assert_array_equal(beside, picture)
    assert not (out / "TCGA_BB_0002_20000102_overlay.png").exists()


def test_report_flags_substituted_and_flair_only_inputs(tmp_path):
    from pipeline.inference.writers import MaskWriter

    out = tmp_path / "out"
    shared = {"spacing": (1.0, 1.0, 2.0), "geometry": {"affine": np.eye(4), "header": None}}
    inputs = [
        InferenceInput("P1", "patient", tmp_path / "P1", 1, substituted=("t1c",), **shared),
        InferenceInput(
            "P2", "patient", tmp_path / "P2", 1, substituted=("t1", "t1c"), flair_only=True, **shared
        ),
    ]
    writer = MaskWriter(inputs, out)
    for index in range(2):
        prob = torch.zeros(1, 6, 6)
        prob[0, 1:3, 2:5] = 0.9
        writer.add(index, 0, prob, 6, 6, flair=prob[0])
    writer.finish()

    page = parse(out / "report.html")
    p1, p2 = page.sections["P1"], page.sections["P2"]
    assert any("replaced by FLAIR: t1c" in t for t in p1["text"])
    assert not any("unreliable" in t for t in p1["text"])
    assert any("replaced by FLAIR: t1, t1c" in t for t in p2["text"])
    assert any("FLAIR only" in t and "unreliable" in t for t in p2["text"])
    assert any("0.01 mL (6 voxels)" in t for t in p1["text"])  # 6 voxels of 2 mm3
    assert len(p1["images"]) == len(p2["images"]) == 1


def test_no_report_when_turned_off(tmp_path):
    data, out = tmp_path / "in", tmp_path / "out"
    write_patient(data / "TCGA_AA_0001_20000101", with_lesion=True)
    run_inference(data, BrightFlair(), out, image_size=32, report=False)
    assert (out / "lesion_volumes.csv").is_file()
    assert not (out / "report.html").exists() and not list(out.glob("*_overlay.png"))


def test_model_identity_from_a_training_run_folder_reaches_the_report(tmp_path):
    import hashlib
    import json

    from pipeline.inference.model_identity import model_identity

    run = tmp_path / "runs" / "unet-f6-s256-e20-20261125-081500"
    (run / "models").mkdir(parents=True)
    (run / "evaluation").mkdir()
    weights = run / "models" / "model.pt"
    weights.write_bytes(b"not really weights, but bytes to hash" * 1000)
    (run / "mlflow_run.json").write_text(json.dumps({"run_id": "0123abcd", "tracking_uri": None}))
    summary = {
        "checkpoint": str(weights),
        "aggregates": {"threshold": {"dice": {"mean": 0.8652, "median": 0.9}}},
    }
    (run / "evaluation" / "summary.json").write_text(json.dumps(summary))
    metadata = tmp_path / "metadata.json"
    metadata.write_text(json.dumps({"name": "LGG test bundle", "version": "9.9.9"}))

    info = model_identity(weights, metadata)

    assert info == {
        "bundle_name": "LGG test bundle",
        "bundle_version": "9.9.9",
        "weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "training_run_id": "0123abcd",
        "training_run": run.name,
        "validation_volume_dice": 0.8652,
    }
    # an evaluation of other weights in the run folder is not this model's Dice
    summary["checkpoint"] = str(tmp_path / "other.pt")
    (run / "evaluation" / "summary.json").write_text(json.dumps(summary))
    assert "validation_volume_dice" not in model_identity(weights, metadata)
    # weights outside a run folder: no run, the rest known
    alone = tmp_path / "model.pt"
    alone.write_bytes(b"x")
    assert model_identity(alone, metadata) == {
        "bundle_name": "LGG test bundle",
        "bundle_version": "9.9.9",
        "weights_sha256": hashlib.sha256(b"x").hexdigest(),
    }

    data, out = tmp_path / "in", tmp_path / "out"
    write_patient(data / "TCGA_AA_0001_20000101", with_lesion=False)
    run_inference(data, BrightFlair(), out, image_size=32, model_info=model_identity(weights, metadata))
    cells = [t.strip() for t in parse(out / "report.html").text if t.strip()]
    for key, value in [
        ("training_run_id", "0123abcd"),
        ("validation_volume_dice", "unknown"),
        ("weights_sha256", hashlib.sha256(weights.read_bytes()).hexdigest()),
    ]:
        assert cells[cells.index(key) + 1] == value
