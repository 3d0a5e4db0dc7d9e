"""How a dataset on disk compares with the real LGG set: the realism check that ``synth`` prints.

Everything is measured from the files of a kaggle_3m folder (phantom or real), never from the
generator's plan. The real set (Buda, Saha & Mazurowski 2019; 110 patients, 3,929 slices) has 20-88
slices per patient, 35% of the slices with lesion, and lesion volumes from under 1 mL to over
100 mL. Real low-grade gliomas are 1.2-2.5x as bright as white matter in FLAIR: relative FLAIR
(lesion over normal-appearing white matter) has medians of 1.55-1.81 in Yuan et al., Front. Oncol.
12:960917 (2022), with interquartile ranges of 0.33-0.83.

Assumptions, as no spacing is stored in the TIFFs: pixels are 1 mm x 1 mm (the phantom's brain is
136-160 px wide, an adult brain about 140 mm), and a series spans 150 mm of head from skull base
to vertex, so slices are 150 mm / (number of slices) apart (4.2 mm at the mean of 36 slices).

The lesion's intensity is the 75th percentile of FLAIR in its mask eroded by 2 px (its solid
part: past the blurred margin, and above a FLAIR-dark cystic core), over the 3 slices with the
largest lesion area. White matter is found without labels as the pixels of the brightest T1 band
(70th-97th percentile of pre-contrast T1, or of post-contrast T1 when pre-contrast is a copy of
FLAIR) in the brain's interior 4-15 px from the lesion. Intensities are taken above the
background (the median of the image's top and bottom rows), so a scanner offset does not change
the ratio.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage

HEAD_HEIGHT_MM = 150.0
PIXEL_MM = 1.0
REAL = {
    "slices": (20, 88),
    "lesion_slices": (0.2, 0.45),  # the real set: 0.35
    "volume_ml": (1.0, 100.0),  # the smallest lesion below the first, the largest above the second
    "contrast": (1.2, 2.5),
}
_SLICES_MEASURED = 3  # per patient: the slices with the largest lesion area


@dataclass(frozen=True)
class Realism:
    """Figures of a dataset: per-patient lists (``volumes_ml`` and ``contrasts``: lesion patients)."""

    slices: list[int]
    lesion_slices: int
    volumes_ml: list[float]
    contrasts: list[float]
    lesion_free: int

    @property
    def lesion_slice_fraction(self) -> float:
        return self.lesion_slices / max(sum(self.slices), 1)

    def problems(self) -> list[str]:
        """The figures outside the real set's ranges (:data:`REAL`), as sentences."""
        found = []
        lo, hi = REAL["slices"]
        if self.slices and not lo <= min(self.slices) <= max(self.slices) <= hi:
            found.append(f"slices per patient {min(self.slices)}-{max(self.slices)}, expected {lo}-{hi}")
        lo, hi = REAL["lesion_slices"]
        if not lo <= self.lesion_slice_fraction <= hi:
            found.append(
                f"fraction of slices with lesion {self.lesion_slice_fraction:.2f}, expected {lo}-{hi}"
            )
        lo, hi = REAL["volume_ml"]
        if self.volumes_ml and not (min(self.volumes_ml) < lo and max(self.volumes_ml) > hi):
            found.append(
                f"lesion volumes {min(self.volumes_ml):.1f}-{max(self.volumes_ml):.0f} mL, expected some "
                f"under {lo:g} mL and some over {hi:g} mL"
            )
        lo, hi = REAL["contrast"]
        if self.contrasts and not lo <= min(self.contrasts) <= max(self.contrasts) <= hi:
            low, high = min(self.contrasts), max(self.contrasts)
            found.append(f"FLAIR lesion/white matter {low:.2f}-{high:.2f}, expected {lo}-{hi}")
        return found


def _slice_key(path: Path) -> int:
    return int(path.stem.removesuffix("_mask").rsplit("_", 1)[1])


def flair_contrast(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FLAIR above background in the lesion core and in nearby white matter of one slice.

    Args:
        image: (H, W, 3) uint8 slice (pre-contrast T1, FLAIR, post-contrast T1).
        mask: (H, W) lesion mask, non-zero inside.

    Returns:
        ``(lesion, white)``: 1-D float arrays of FLAIR values (either may be empty).
    """
    pixels = image.astype(np.float32)
    border = np.concatenate([pixels[:4].reshape(-1, 3), pixels[-4:].reshape(-1, 3)])
    background = np.median(border, axis=0)
    t1 = 2 if np.array_equal(image[..., 0], image[..., 1]) else 0
    level = pixels.max(axis=-1)
    head = ndimage.binary_fill_holes(
        level > background.max() + 0.25 * (np.percentile(level, 99) - background.max())
    )
    labels, count = ndimage.label(head)
    if count > 1:
        head = labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1
    interior = ndimage.distance_transform_edt(head) > 22
    lesion = mask > 0
    core = ndimage.binary_erosion(lesion, iterations=2)
    core = core if core.sum() >= 10 else lesion
    ring = ndimage.binary_dilation(lesion, iterations=15) & ~ndimage.binary_dilation(lesion, iterations=4)
    candidates = interior & ring
    if candidates.sum() < 50:
        candidates = interior & ~ndimage.binary_dilation(lesion, iterations=4)
    values = pixels[..., t1][candidates]
    if values.size == 0:
        return np.empty(0, np.float32), np.empty(0, np.float32)
    low, high = np.percentile(values, [70, 97])
    white = candidates & (pixels[..., t1] >= low) & (pixels[..., t1] <= high)
    flair = pixels[..., 1] - background[1]
    return flair[core], flair[white]


def measure_patient(folder: Path) -> tuple[int, int, int, float | None]:
    """One patient folder: ``(slices, slices with lesion, lesion voxels, FLAIR lesion/white matter)``."""
    masks = sorted(folder.glob("*_mask.tif"), key=_slice_key)
    areas = np.array([np.count_nonzero(tifffile.imread(p)) for p in masks])
    if not areas.any():
        return len(masks), 0, 0, None
    lesion, white = [], []
    for k in np.argsort(-areas, kind="stable")[:_SLICES_MEASURED]:
        if areas[k]:
            image = tifffile.imread(masks[k].with_name(masks[k].name.replace("_mask.tif", ".tif")))
            inside, outside = flair_contrast(image, tifffile.imread(masks[k]))
            lesion.append(inside)
            white.append(outside)
    lesion_values, white_values = np.concatenate(lesion), np.concatenate(white)
    contrast = None
    if lesion_values.size and white_values.size and np.median(white_values) > 0:
        contrast = float(np.percentile(lesion_values, 75) / np.median(white_values))
    return len(masks), int(np.count_nonzero(areas)), int(areas.sum()), contrast


def measure(dataset: str | Path) -> Realism:
    """Measure every ``TCGA_*`` patient folder of ``dataset``."""
    slices, volumes, contrasts, positive, lesion_free = [], [], [], 0, 0
    for folder in sorted(p for p in Path(dataset).glob("TCGA_*") if p.is_dir()):
        n, with_lesion, voxels, contrast = measure_patient(folder)
        slices.append(n)
        positive += with_lesion
        if voxels:
            volumes.append(voxels * PIXEL_MM**2 * HEAD_HEIGHT_MM / n / 1000)
            if contrast is not None:
                contrasts.append(contrast)
        else:
            lesion_free += 1
    return Realism(slices, positive, volumes, contrasts, lesion_free)


def summary(realism: Realism) -> str:
    """A short text block: each figure beside the real set's, and what is outside its range."""
    r, real = realism, REAL
    rows = []
    if r.slices:
        rows.append(
            (
                "slices per patient",
                f"{min(r.slices)}-{max(r.slices)}, mean {np.mean(r.slices):.1f}",
                "20-88, mean 35.7",
            )
        )
    low, high = real["lesion_slices"]
    rows.append(
        (
            "slices with lesion",
            f"{r.lesion_slice_fraction:.2f} of {sum(r.slices)}",
            f"0.35; accepted {low}-{high}",
        )
    )
    rows.append(("lesion-free patients", f"{r.lesion_free} of {len(r.slices)}", "none of 110"))
    if r.volumes_ml:
        volumes = (
            f"{min(r.volumes_ml):.1f}-{max(r.volumes_ml):.0f} mL, median {np.median(r.volumes_ml):.0f} mL"
        )
        spacing = f"{PIXEL_MM:g} mm pixels, slices {HEAD_HEIGHT_MM:g} mm / count apart"
        rows.append(("lesion volume", volumes, f"under 1 to over 100 mL; {spacing}"))
    if r.contrasts:
        low, high = real["contrast"]
        contrasts = f"{min(r.contrasts):.2f}-{max(r.contrasts):.2f}, median {np.median(r.contrasts):.2f}"
        rows.append(("FLAIR lesion/WM", contrasts, f"{low}-{high}"))
    lines = ["Realism check (measured from the files; the real set in brackets):"]
    lines += [f"  {name:<21}{value}  [{reference}]" for name, value, reference in rows]
    problems = r.problems()
    lines.append("  outside the real range: " + "; ".join(problems) if problems else "  all within range")
    return "\n".join(lines)
