"""The hard phantom (``synth --hard``): realism figures measured from the files, and its difficulties.

The figures are computed here from the TIFFs alone, with numpy and scipy, never from the
generator's plan: pixels 1 mm x 1 mm and slices 150 mm / (number of slices) apart, as the realism
check assumes (pipeline/data/phantom_realism.py). The FLAIR contrast is measured differently from
the realism check (white matter from a box around the lesion, the median of the lesion's core over
every lesion slice), so the two agree only if both are right.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from pipeline.data import phantom_realism
from pipeline.data.phantom import _plan, generate_dataset
from pipeline.data.phantom_hard import HardOptions, render_hard_patient

ROOT = Path(__file__).resolve().parents[3]
HEAD_MM = 150.0  # the head height a series spans, in mm; pixels are 1 mm
N_PATIENTS, SEED = 10, 5  # seed 5's ten patients hold a lesion under 1 mL and one over 100 mL


def _patients(root: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each patient folder's slices, ordered by slice number: images (n, H, W, 3), masks (n, H, W) bool."""
    found = []
    for folder in sorted(p for p in root.glob("TCGA_*") if p.is_dir()):
        n = len(list(folder.glob("*_mask.tif")))
        stem = folder / folder.name
        images = np.stack([tifffile.imread(f"{stem}_{k}.tif") for k in range(1, n + 1)])
        masks = np.stack([tifffile.imread(f"{stem}_{k}_mask.tif") for k in range(1, n + 1)]) > 0
        found.append((images, masks))
    return found


def _head(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The head's pixels (inside its bright scalp), and the background level per channel."""
    pixels = image.astype(float)
    background = np.median(pixels[:3], axis=(0, 1))
    return ndimage.binary_fill_holes(pixels.max(axis=-1) > background.max() + 40), background


def _head_interior(image: np.ndarray, inset: int) -> tuple[np.ndarray, np.ndarray]:
    """The head's pixels ``inset`` px or more inside its outline, and the background per channel."""
    head, background = _head(image)
    return ndimage.binary_erosion(head, iterations=inset), background


def _flair_contrast(images: np.ndarray, masks: np.ndarray) -> float:
    """Median FLAIR of the lesion's core over that of white matter in a box around the lesion."""
    lesion, white = [], []
    areas = masks.sum(axis=(1, 2))
    for k in np.flatnonzero(areas >= min(30, areas.max())):
        interior, background = _head_interior(images[k], 25)
        pixels, mask = images[k].astype(float), masks[k]
        t1 = pixels[..., 2] if np.array_equal(images[k, ..., 0], images[k, ..., 1]) else pixels[..., 0]
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        box = np.zeros_like(mask)
        box[max(rows[0] - 20, 0) : rows[-1] + 21, max(cols[0] - 20, 0) : cols[-1] + 21] = True
        near = interior & box & ~ndimage.binary_dilation(mask, iterations=3)
        low, high = np.percentile(t1[near], [75, 95])  # white matter: the brightest T1 tissue
        white.append(pixels[..., 1][near & (t1 >= low) & (t1 <= high)] - background[1])
        core = ndimage.binary_erosion(mask, iterations=2)
        lesion.append(pixels[..., 1][core if core.sum() >= 10 else mask] - background[1])
    return float(np.percentile(np.concatenate(lesion), 75) / np.median(np.concatenate(white)))


def _tissue_share(images: np.ndarray) -> float:
    """Mean share of the head's interior that is brain-bright in FLAIR, over the lowest fifth of slices."""
    n = len(images)
    interior, background = _head_interior(images[n // 2], 30)
    reference = np.median(images[n // 2, ..., 1][interior] - background[1])
    shares = []
    for k in range(n // 5):
        interior, background = _head_interior(images[k], 20)
        if interior.sum() >= 500:
            tissue = images[k, ..., 1][interior].astype(float) - background[1] > 0.5 * reference
            shares.append(tissue.mean())
    return float(np.mean(shares))


def _white_matter_flair(images: np.ndarray) -> float:
    """Median FLAIR above background of the brightest T1 band in the middle third of the slices."""
    n, values = len(images), []
    for k in range(n // 3, 2 * n // 3):
        interior, background = _head_interior(images[k], 25)
        pixels = images[k].astype(float)
        t1 = pixels[..., 2] if np.array_equal(images[k, ..., 0], images[k, ..., 1]) else pixels[..., 0]
        low, high = np.percentile(t1[interior], [75, 95])
        values.append(pixels[..., 1][interior & (t1 >= low) & (t1 <= high)] - background[1])
    return float(np.median(np.concatenate(values)))


def _slices_with_bright_blobs(images: np.ndarray, level: float) -> int:
    """Slices holding 20 connected head pixels at least ``level`` times white matter in FLAIR."""
    white, count = _white_matter_flair(images), 0
    for image in images:
        interior, background = _head_interior(image, 20)
        bright = interior & (image[..., 1] - background[1] >= level * white)
        count += np.bincount(ndimage.label(bright)[0].ravel())[1:].max(initial=0) >= 20
    return count


@pytest.fixture(scope="module")
def hard(tmp_path_factory) -> Path:
    return generate_dataset(
        tmp_path_factory.mktemp("hard") / "kaggle_3m", N_PATIENTS, SEED, workers=2, hard=True
    )


@pytest.fixture(scope="module")
def hard_patients(hard) -> list[tuple[np.ndarray, np.ndarray]]:
    return _patients(hard)


@pytest.fixture(scope="module")
def default_patients(tmp_path_factory) -> list[tuple[np.ndarray, np.ndarray]]:
    return _patients(generate_dataset(tmp_path_factory.mktemp("default") / "d", 3, SEED, workers=1))


def test_the_realism_figures_are_those_of_the_real_set(hard_patients):
    slices = [len(masks) for _, masks in hard_patients]
    assert 20 <= min(slices) and max(slices) <= 88
    positive = sum(int(masks.any(axis=(1, 2)).sum()) for _, masks in hard_patients)
    assert 0.2 <= positive / sum(slices) <= 0.45  # the real set: 0.35
    volumes = [masks.sum() * HEAD_MM / len(masks) / 1000 for _, masks in hard_patients if masks.any()]
    assert min(volumes) < 1 and max(volumes) > 100, volumes  # mL, as in the real set
    contrasts = [_flair_contrast(images, masks) for images, masks in hard_patients if masks.any()]
    assert all(1.2 <= c <= 2.5 for c in contrasts), contrasts  # real LGG: 1.2-2.5x white matter
    assert max(contrasts) - min(contrasts) > 0.3, "lesions should range from subtle to obvious"


def test_the_realism_check_agrees_with_the_files(hard, hard_patients):
    figures = phantom_realism.measure(hard)
    assert figures.slices == [len(masks) for _, masks in hard_patients]
    assert figures.lesion_slices == sum(int(masks.any(axis=(1, 2)).sum()) for _, masks in hard_patients)
    volumes = [masks.sum() * HEAD_MM / len(masks) / 1000 for _, masks in hard_patients if masks.any()]
    assert figures.volumes_ml == pytest.approx(volumes)
    ours = [_flair_contrast(images, masks) for images, masks in hard_patients if masks.any()]
    assert np.abs(np.array(figures.contrasts) - ours).max() < 0.35  # two methods, one answer
    assert figures.problems() == []
    assert phantom_realism.summary(figures).endswith("all within range")


def test_the_realism_check_flags_what_is_outside_the_real_range():
    figures = phantom_realism.Realism(
        slices=[12, 95], lesion_slices=90, volumes_ml=[5.0, 50.0], contrasts=[1.05, 3.1], lesion_free=0
    )
    problems = figures.problems()
    assert len(problems) == 4, problems
    assert "slices per patient 12-95" in problems[0] and "0.84" in problems[1]
    assert "under 1 mL" in problems[2] and "1.05-3.10" in problems[3]
    assert "outside the real range" in phantom_realism.summary(figures)


def test_a_share_of_patients_is_lesion_free(hard_patients):
    lesion_free = sum(not masks.any() for _, masks in hard_patients)
    assert lesion_free == round(N_PATIENTS * 0.15)
    assert all(p.has_lesion for p in _plan(N_PATIENTS, SEED, lesion_free=0.0))


def test_inferior_slices_hold_no_lesion_and_other_anatomy(hard_patients, default_patients):
    for _, masks in hard_patients:
        assert not masks[: len(masks) // 5].any(), "a lesion below the tentorium"
    # skull base between temporal lobes, cerebellum and brainstem: much of the head is not brain
    assert all(_tissue_share(images) < 0.65 for images, _ in hard_patients)
    assert all(_tissue_share(images) > 0.65 for images, _ in default_patients)  # the check can fail


def test_healthy_brains_hold_tissue_as_bright_as_the_subtlest_lesion(hard_patients):
    subtlest = min(_flair_contrast(images, masks) for images, masks in hard_patients if masks.any())
    for images, masks in hard_patients:
        if not masks.any():  # cortex, caps, vessels, cerebellum, artefacts: a threshold cannot tell
            assert _slices_with_bright_blobs(images, subtlest) >= len(images) / 3


@pytest.fixture(scope="module")
def patient():
    return next(p for p in _plan(8, 2) if p.flair_copy is None)


def _render(patient, **changes) -> tuple[np.ndarray, np.ndarray]:
    base = HardOptions(contrast=(1.5, 1.5), small_lesions=0.0, artefacts=0.0)
    image, mask = render_hard_patient(patient, dataclasses.replace(base, **changes))
    return image, mask > 0


def test_the_options_move_what_they_name(patient):
    image, mask = _render(patient)
    subtle, obvious = _render(patient, contrast=(1.2, 1.2)), _render(patient, contrast=(1.75, 1.75))
    assert np.array_equal(subtle[1], mask) and np.array_equal(obvious[1], mask)  # the same lesion
    assert _flair_contrast(*subtle) + 0.15 < _flair_contrast(image, mask) < _flair_contrast(*obvious) - 0.15
    small = _render(patient, small_lesions=1.0)[1]
    assert 0 < small.sum() * HEAD_MM / len(small) / 1000 < 4 < mask.sum() * HEAD_MM / len(mask) / 1000
    ghosts = _render(patient, artefacts=1.0)[0]
    outside = ~np.stack([ndimage.binary_dilation(_head(slice_)[0], iterations=8) for slice_ in image])
    rare = np.percentile(image[..., 1][outside], 99.9)  # ghosts and flow lines cross the background
    assert (ghosts[..., 1][outside] > rare).mean() > 0.005
    assert np.array_equal(ghosts[..., 0], image[..., 0])  # FLAIR only


def test_the_same_seed_gives_the_same_bytes_with_any_worker_count(tmp_path):
    one = generate_dataset(tmp_path / "one", 2, 7, workers=1, hard=True)
    two = generate_dataset(tmp_path / "two", 2, 7, workers=2, hard=True)
    default = generate_dataset(tmp_path / "default", 2, 7, workers=1)
    files = sorted(p.relative_to(one) for p in one.rglob("*.tif"))
    assert files == sorted(p.relative_to(two) for p in two.rglob("*.tif"))
    assert all((one / f).read_bytes() == (two / f).read_bytes() for f in files)
    assert (one / "data.csv").read_bytes() == (default / "data.csv").read_bytes()  # the same plan
    assert (one / files[0]).read_bytes() != (default / files[0]).read_bytes()
    assert "(hard)" in (one / ".complete").read_text()


@pytest.mark.parametrize(
    ("changes", "name"),
    [
        ({"bias": (0.3, 0.1)}, "bias"),
        ({"bias": (0.1,)}, "bias"),
        ({"contrast": (0.8, 1.5)}, "contrast"),
        ({"small_lesions": 1.5}, "small_lesions"),
        ({"artefacts": True}, "artefacts"),
    ],
)
def test_bad_options_name_the_parameter(changes, name):
    with pytest.raises(ValueError, match=name):
        HardOptions(**changes)


def test_hard_must_be_a_switch_or_options(tmp_path):
    with pytest.raises(ValueError, match="hard"):
        generate_dataset(tmp_path / "out", 1, hard="yes")
    assert not (tmp_path / "out").exists()


def test_cli_prints_one_realism_check_and_refuses_hard_options_without_hard(tmp_path):
    command = [sys.executable, "-m", "pipeline", "synth", "--out", str(tmp_path / "hard"), "--patients", "2"]
    command += ["--seed", "1", "--workers", "1", "--hard", "--artefacts", "0.5", "--contrast", "1.3", "1.6"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    output = done.stdout + done.stderr
    assert output.count("Realism check") == 1 and output.count("slices per patient") == 1
    assert "phantom dataset (hard)" in output and "lesion-free patients 0 of 2  [none of 110]" in output
    wrong = [sys.executable, "-m", "pipeline", "synth", "--out", str(tmp_path / "x"), "--bias", "0.1", "0.2"]
    refused = subprocess.run(wrong, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "--bias: options of the hard variant, add --hard" in refused.stderr
    assert not (tmp_path / "x").exists()
