"""Kaggle_3m-style patient folders for the data tests, built pixel by pixel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile

SIZE = 32
PATIENT_A = "TCGA_CS_4941_19960909"
PATIENT_B = "TCGA_DU_5851_19950428"


def write_tif(path: Path, array: np.ndarray) -> None:
    """Write ``array`` as a TIFF the way the kaggle_3m files are stored (RGB or grayscale)."""
    photometric = "rgb" if array.ndim == 3 and array.shape[-1] == 3 else "minisblack"
    tifffile.imwrite(path, array, photometric=photometric, metadata=None)


def make_patient(root: Path, patient: str, n_slices: int = 3, size: int = SIZE, lesion: bool = True) -> Path:
    """One patient folder in the kaggle_3m layout whose files say which slice they are.

    Slice k has an RGB uint8 image filled with the value k and, when ``lesion``, a 0/255 mask with
    exactly k lesion pixels, so a mis-paired record is visible from the pixels.
    """
    folder = root / patient
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(1, n_slices + 1):
        mask = np.zeros((size, size), np.uint8)
        if lesion:
            mask.flat[:k] = 255
        write_tif(folder / f"{patient}_{k}.tif", np.full((size, size, 3), k, np.uint8))
        write_tif(folder / f"{patient}_{k}_mask.tif", mask)
    return folder
