"""A DICOM Segmentation (highdicom) of the mask, when FLAIR came as a DICOM series.

Written as ``<name>_seg.dcm`` beside ``<name>_mask.nii.gz`` (:func:`pipeline.inference.mask_files.seg_path`)
for inputs whose :attr:`InferenceInput.dicom_files` are known (kinds "dicom" and "patient" with a
DICOM FLAIR), so a PACS or viewer shows the mask over the very images it came from. Decisions:

- **Source images**: FLAIR's files, read with pydicom without pixel data. Frame k of the mask
  ``(n_slices, rows, columns)`` is the pixel matrix of ``dicom_files[k]`` (the series in ITK's
  slice order k, the order the network saw), so highdicom records each frame's source image
  and plane position; a file count or matrix size that disagrees with the mask is a ValueError
  naming the folder (no SEG is then written).
- **One segment**, number 1, label "FLAIR abnormality": segmented property category
  "Morphologically Abnormal Structure" (SCT 49755003, the newer SNOMED name of which is
  "Morphologically altered structure"), type "Lesion" (SCT 52988006), from pydicom's code
  dictionary (CID 7150 / 7151). The model's output is a FLAIR hyperintensity, not a histology,
  so no "Neoplasm" type is claimed.
- **Algorithm**: type AUTOMATIC with an AlgorithmIdentificationSequence: family "Artificial
  Intelligence" (DCM 123110), name and version the bundle's (``model_info``; "unknown" when not
  given), parameters the weights' sha256, the training run id, the threshold and whether only
  the largest component was kept.
- **BINARY** segmentation (1 bit per pixel), empty frames omitted (highdicom keeps all frames when
  the whole mask is empty, so an empty SEG still says "nothing found" per image).
- **Equipment**: manufacturer "LGG segmentation pipeline (research use only)", model name the
  bundle name, software version the bundle version, device serial number the weights' sha256
  (the one identifier of a trained model); series description "FLAIR abnormality (AI, research
  use only)"; series number 1000 + the source's. New UIDs at every write.
- Written atomically; read back with ``highdicom.seg.segread`` it gives the NIfTI mask voxel for
  voxel (``get_pixels_by_source_instance`` in the source files' order; tested).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.atomic import write_atomically
from pipeline.inference.model_identity import UNKNOWN, describe

SEGMENT_LABEL = "FLAIR abnormality"
MANUFACTURER = "LGG segmentation pipeline (research use only)"
SERIES_DESCRIPTION = "FLAIR abnormality (AI, research use only)"


def segment_description(model_info: Mapping[str, Any] | None, parameters: Mapping[str, Any]) -> Any:
    """The one segment's description (see the module docstring)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    info = describe(model_info)
    algorithm = hd.AlgorithmIdentificationSequence(
        name=info["bundle_name"] if info["bundle_name"] != UNKNOWN else "LGG FLAIR U-Net",
        family=codes.cid7162.ArtificialIntelligence,
        version=info["bundle_version"],
        parameters={key: str(value) for key, value in parameters.items()},
    )
    return hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=SEGMENT_LABEL,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
    )


def write_seg(
    path: str | os.PathLike,
    mask_kji: np.ndarray,
    dicom_files: Sequence[str | os.PathLike],
    model_info: Mapping[str, Any] | None = None,
    threshold: float = 0.5,
    largest_component: bool = False,
) -> Path:
    """Write the DICOM Segmentation of ``mask_kji`` (n_slices, rows, columns; 0/1) to ``path``.

    Args:
        path: the ``.dcm`` to write (atomically; its folder is created).
        mask_kji: frame k for ``dicom_files[k]``.
        dicom_files: FLAIR's files in slice order k.
        model_info: the model's identity (:mod:`pipeline.inference.model_identity`).
        threshold, largest_component: recorded among the algorithm's parameters.

    Raises:
        ValueError: the files do not match the mask (count, rows, columns), naming the folder.
    """
    import highdicom as hd
    import pydicom

    mask = np.asarray(mask_kji) != 0
    files = [Path(f) for f in dicom_files]
    folder = files[0].parent if files else Path(path).parent
    if mask.ndim != 3 or len(files) != mask.shape[0]:
        raise ValueError(
            f"DICOM series {folder}: {len(files)} files for a mask of {mask.shape[0]} slices; "
            "the series changed since it was read? run again"
        )
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    for file, source in zip(files, sources):
        if (int(source.Rows), int(source.Columns)) != mask.shape[1:]:
            raise ValueError(
                f"{file}: {source.Rows} x {source.Columns} pixels, the mask {mask.shape[1]} x "
                f"{mask.shape[2]}: a series of mixed matrix sizes cannot carry one segmentation"
            )
    info = describe(model_info)
    parameters = {
        "weights_sha256": info["weights_sha256"],
        "training_run_id": info["training_run_id"],
        "threshold": threshold,
        "largest_component": largest_component,
    }
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=mask.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment_description(model_info, parameters)],
        series_instance_uid=hd.UID(),
        series_number=1000 + int(getattr(sources[0], "SeriesNumber", None) or 0),
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=(
            info["bundle_name"] if info["bundle_name"] != UNKNOWN else "LGG FLAIR U-Net"
        )[:64],
        software_versions=info["bundle_version"],
        device_serial_number=info["weights_sha256"][:64],
        series_description=SERIES_DESCRIPTION,
        content_label="FLAIR_LESION",
        content_description="Automatic FLAIR abnormality segmentation; research use only",
    )
    return write_atomically(Path(path), lambda tmp: seg.save_as(tmp), keep_suffix=True)
