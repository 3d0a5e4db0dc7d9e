"""One unit of inference (:class:`InferenceInput`) and the names of what inference accepts."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = {".nrrd": ".nrrd", ".nhdr": ".nrrd", ".mha": ".mha", ".mhd": ".mha"}
CHANNELS = "3 channels (pre-contrast T1, FLAIR, post-contrast T1) or 1 channel (FLAIR)"
EXPECTED_INPUTS = (
    "expected patient folders of kaggle_3m TIFF slices (<patient>/<patient>_<k>.tif), patient folders "
    "holding one file or DICOM series per sequence (FLAIR, T1, post-contrast T1), 3-D volumes "
    "(.nii, .nii.gz, .nrrd, .nhdr, .mha, .mhd) or folders holding one DICOM series"
)


@dataclass
class InferenceInput:
    """One unit of inference: a TIFF patient folder, a volume, or a patient folder of sequences.

    Attributes:
        name: the TIFF patient folder name, or the path relative to ``dataset_dir`` (posix) of
            the volume, DICOM folder or patient folder.
        kind: "tiff", "nifti", "itk" (NRRD/MetaImage), "dicom" or "patient" (separate sequences;
            FLAIR's kind decides ``geometry``).
        path: the patient folder, volume file or DICOM folder.
        n_slices: slices along the last voxel axis (the number of TIFF files for "tiff"; FLAIR's
            for "patient"; 0 for an input with ``error``).
        slices: the TIFF slice files in slice order ("tiff" only).
        spacing: voxel size in mm (i, j, k), None when unknown.
        geometry: what writing the mask needs: the NIfTI affine and header, or ITK origin,
            spacing and direction (for "patient": FLAIR's, by FLAIR's format).
        sequences: "patient" only (a folder of separate sequences): role ("flair", "t1", "t1c")
            -> the file or DICOM series it was read from (a series: its folder when the folder
            holds that series alone, else its first file in slice order); substituted roles
            are absent.
        sequence_files: "patient" only: role -> the DICOM files of that role's series in slice
            order (DICOM roles only; FLAIR's are also ``dicom_files``).
        substituted: roles ("t1", "t1c") missing from the patient and replaced by FLAIR.
        flair_only: the input has FLAIR alone (copied into all three channels): unreliable.
        dicom_files: FLAIR's DICOM files in slice order (k), when FLAIR is a DICOM series (the
            source a DICOM Segmentation references).
        error: why the input cannot be segmented (naming the file or folder and the fix); such an
            input has n_slices 0, is skipped by the run and reported at its end.
    """

    name: str
    kind: str
    path: Path
    n_slices: int
    slices: tuple[Path, ...] = ()
    spacing: tuple[float, ...] | None = None
    geometry: dict = field(default_factory=dict, repr=False)
    sequences: dict[str, Path] = field(default_factory=dict)
    substituted: tuple[str, ...] = ()
    flair_only: bool = False
    dicom_files: tuple[Path, ...] = ()
    error: str = ""
    sequence_files: dict[str, tuple[Path, ...]] = field(default_factory=dict, repr=False)

    def mask_path(self, output_dir: Path) -> Path:
        """The volume mask written for this input under ``output_dir``."""
        if self.kind == "tiff":
            return output_dir / f"{self.name}_mask.nii.gz"
        base = self.name
        for suffix in (*NIFTI_SUFFIXES, *ITK_SUFFIXES):
            if self.kind != "dicom" and base.lower().endswith(suffix):
                out = ".nii.gz" if suffix == ".nii.gz" else ITK_SUFFIXES.get(suffix, suffix)
                return output_dir / f"{base[: -len(suffix)]}_mask{out}"
        return output_dir / f"{base}_mask.nii.gz"
