"""Patient folders of separate sequences: which file is which sequence, and when a folder is one.

**Layout**: one folder per patient holding one single-channel volume per sequence: a file
(NIfTI ``.nii``/``.nii.gz``, NRRD ``.nrrd``/``.nhdr``, MetaImage ``.mha``/``.mhd``) or a DICOM
series, either in a subfolder of its own or among the patient's other series in one folder
(split by SeriesInstanceUID, :mod:`pipeline.inference.dicom_series`). Formats may be mixed.

**Names matched** (shell-style patterns, case-insensitive, against the whole name):

- a volume file: its name without the volume suffix (``BraTS20_Training_001_flair``);
- a DICOM series alone in a subfolder: the subfolder's name, or, when that matches no pattern,
  the series' SeriesDescription (ProtocolName when it has none);
- a DICOM series among others in one folder: its SeriesDescription (ProtocolName).

**Roles** (:data:`DEFAULT_SEQUENCE_PATTERNS`), tried in this order, the first match wins:

- ``flair``: ``*flair*``, ``*-t2f``, ``*_t2f`` (BraTS 2023 ``-t2f``);
- ``t1c`` (post-contrast T1): ``*t1c*``, ``*t1ce*``, ``*t1gd*``, ``*post*``: tried before ``t1``,
  so a post-contrast T1 is never taken for the pre-contrast one;
- ``t1`` (pre-contrast T1): ``*t1*`` (BraTS ``_t1``, BraTS 2023 ``-t1n``);
- ``ignore``: ``*t2*``, ``*dwi*``, ``*adc*``, ``*swi*``, ``*seg*``: sequences (and BraTS label
  maps) a patient folder may hold that the network does not use (BraTS ``_t2``, ``-t2w``,
  ``_seg``). They, and names matching no pattern, are not used (logged).

One key configures them: ``sequence_patterns``, a dict role -> list of patterns (a string is a
one-pattern list). A role given replaces that role's defaults; roles not given keep theirs.

**A patient folder** is a folder at least two of whose candidates (its volume files, the DICOM
series among its files, the DICOM series alone in one of its subfolders) match a pattern of any
role, ``ignore`` included. Any other folder keeps the behaviour of independent volumes: each file
is a 3-channel volume (pre-contrast T1, FLAIR, post-contrast T1) or a FLAIR alone, a folder
holding one DICOM series is one volume, and its series subfolders are inputs of their own. So
``brain.nii.gz`` beside ``brain_mask.nii.gz`` is a volume, ``patient7/flair/`` (one series) is a
DICOM volume, and ``P/P_flair.nii.gz`` with ``P/P_t1.nii.gz`` is a patient.

**A patient** (:func:`patient_input`) needs exactly one FLAIR, at most one sequence per role, and
single-channel 3-D sequences (else an error naming the folder and the files). FLAIR is the
reference: its slices (the orientation checks apply to it), spacing and geometry are the
patient's; the others are resampled onto its grid when read (:mod:`pipeline.inference.sequences_read`).
A missing T1 or post-contrast T1 is replaced by FLAIR, as the training data do for 15 of their
110 patients (``substituted``, logged); FLAIR alone is ``flair_only``, refused unless allowed
(:func:`pipeline.inference.inputs.find_inputs`).
"""

from __future__ import annotations

import ast
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

from pipeline.inference.dicom_series import DicomSeries
from pipeline.inference.input_record import InferenceInput
from pipeline.inference.orientation import check_axial, itk_directions, nifti_directions
from pipeline.inference.volumes import itk_header, nifti_header, series_geometry

logger = logging.getLogger(__name__)

ROLES = ("flair", "t1c", "t1", "ignore")  # the order names are matched in
ROLE_NAMES = {"flair": "FLAIR", "t1": "pre-contrast T1", "t1c": "post-contrast T1"}
DEFAULT_SEQUENCE_PATTERNS: dict[str, tuple[str, ...]] = {
    "flair": ("*flair*", "*-t2f", "*_t2f"),
    "t1c": ("*t1c*", "*t1ce*", "*t1gd*", "*post*"),
    "t1": ("*t1*",),
    "ignore": ("*t2*", "*dwi*", "*adc*", "*swi*", "*seg*"),
}
FLAIR_ONLY = (
    "the network was trained on three sequences (pre-contrast T1, FLAIR, post-contrast T1), and a patient "
    "segmented at Dice 0.941 from its three sequences fell to 0.105 from FLAIR alone. Add the patient's T1 "
    "sequences (a patient folder holding one file or DICOM series per sequence, e.g. P/P_t1.nii.gz, "
    "P/P_flair.nii.gz, P/P_t1ce.nii.gz), or segment FLAIR alone anyway with allow_flair_only=True "
    "(bundle: --allow_flair_only true)"
)


def sequence_patterns(
    overrides: Mapping[str, str | Sequence[str]] | str | None = None,
) -> dict[str, tuple[str, ...]]:
    """The patterns of each role: the defaults, with the roles in ``overrides`` replaced.

    Args:
        overrides: role -> patterns, or that dict written as a Python/JSON literal (the bundle
            CLI may pass ``--sequence_patterns "{'flair': ['*dark_fluid*']}"`` as a string).

    Raises:
        ValueError: not a dict, an unknown role, or a pattern that is not a string.
    """
    if isinstance(overrides, str):
        try:
            overrides = ast.literal_eval(overrides) if overrides.strip() else None
        except (ValueError, SyntaxError):
            overrides = "not a literal"
    if overrides is not None and not isinstance(overrides, Mapping):
        raise ValueError(f"sequence_patterns must be a dict role -> list of glob patterns, not {overrides!r}")
    patterns = dict(DEFAULT_SEQUENCE_PATTERNS)
    for role, value in dict(overrides or {}).items():
        if role not in ROLES:
            raise ValueError(f"sequence_patterns: unknown role {role!r}; the roles are {', '.join(ROLES)}")
        values = [value] if isinstance(value, str) else list(value)
        if not all(isinstance(v, str) and v for v in values):
            raise ValueError(f"sequence_patterns[{role!r}] must be a list of glob patterns, not {value!r}")
        patterns[role] = tuple(v.lower() for v in values)
    return patterns


def role_of(names: Sequence[str], patterns: Mapping[str, Sequence[str]]) -> str | None:
    """The role of the first of ``names`` that matches a pattern (roles in :data:`ROLES` order)."""
    for name in names:
        low = (name or "").lower()
        for role in ROLES if low else ():
            if any(fnmatchcase(low, pattern) for pattern in patterns[role]):
                return role
    return None


@dataclass
class Candidate:
    """A single volume of a folder that may be a sequence of a patient.

    Attributes:
        names: matched in order (see the module docstring).
        path: the volume file, the series' own folder, or the series' first file when it shares
            its folder with other series.
        kind: "nifti", "itk" or "dicom".
        series: the DICOM series, for kind "dicom".
        role: its role, None when no pattern matches.
        error: why it cannot be read as one sequence (e.g. its folder mixes series).
    """

    names: tuple[str, ...]
    path: Path
    kind: str
    series: DicomSeries | None = None
    role: str | None = None
    error: str = ""

    def describe(self) -> str:
        if self.series is not None and self.path.is_file():
            return f"DICOM series {self.series.label} in {self.path.parent}"
        return str(self.path)


def is_patient_folder(candidates: Sequence[Candidate]) -> bool:
    """At least two candidates match a pattern of any role (see the module docstring)."""
    return sum(c.role is not None for c in candidates) >= 2


def _sequence_header(candidate: Candidate, role: str) -> tuple[int, dict, tuple[float, ...], str]:
    """n_slices, geometry, spacing and orientation kind of one single-channel sequence."""
    path = candidate.path
    if candidate.error:
        raise ValueError(candidate.error)
    if candidate.kind == "nifti":
        image, channels = nifti_header(path)
        shape = image.shape
        geometry = {"affine": image.affine, "header": image.header.copy()}
        spacing = tuple(float(f"{z:.7g}") for z in image.header.get_zooms()[:3])
        n_slices, directions = int(shape[2]), nifti_directions(image.affine)
    elif candidate.kind == "itk":
        dims, channels, geometry = itk_header(path)
        n_slices, spacing, directions = (
            int(dims[2]),
            geometry["spacing"],
            itk_directions(geometry["direction"]),
        )
    else:
        series = candidate.series
        if series.error:
            raise ValueError(series.error)
        channels, geometry, n_slices = series.channels, series_geometry(series), series.n_slices
        spacing, directions = series.spacing, itk_directions(series.direction)
    if channels != 1:
        raise ValueError(
            f"{candidate.describe()} ({ROLE_NAMES[role]}) has {channels} channels: a sequence of a patient "
            "folder must have one (a 3-channel volume belongs in a folder of its own)"
        )
    if role == "flair":
        check_axial(path, directions, candidate.kind)
    return n_slices, geometry, spacing, candidate.kind


def patient_input(
    folder: Path, name: str, candidates: Sequence[Candidate], patterns: Mapping[str, Sequence[str]]
) -> InferenceInput:
    """The patient of a patient folder (headers only; see the module docstring).

    Raises:
        ValueError: no FLAIR, two candidates for one role, or a sequence that is unreadable, not
            single-channel 3-D, or (FLAIR) not axial; the message names the folder or the file.
    """
    by_role: dict[str | None, list[Candidate]] = {}
    for candidate in candidates:
        by_role.setdefault(candidate.role, []).append(candidate)
    for candidate in by_role.pop(None, []) + by_role.pop("ignore", []):
        why = "a sequence the network does not use" if candidate.role else "matches no sequence pattern"
        logger.info("%s: not using %s (%s)", folder, candidate.describe(), why)
    if "flair" not in by_role:
        listed = ", ".join(c.describe() for c in candidates)
        raise ValueError(
            f"patient folder {folder} has no FLAIR: none of {listed} matches "
            f"{list(patterns['flair'])}. Add the FLAIR, name it so (e.g. {Path(name).name}_flair.nii.gz, "
            "or a DICOM SeriesDescription holding 'FLAIR'), or set sequence_patterns"
        )
    for role, found in by_role.items():
        if len(found) > 1:
            listed = "; ".join(c.describe() for c in found)
            raise ValueError(
                f"patient folder {folder}: {len(found)} candidates for {ROLE_NAMES[role]}: {listed}. A "
                "patient folder holds one file or DICOM series per sequence: keep one, put each patient "
                "in a folder of its own, or tell them apart with sequence_patterns "
                f"(now {role}: {list(patterns[role])})"
            )
    chosen = {role: found[0] for role, found in by_role.items()}
    headers = {role: _sequence_header(candidate, role) for role, candidate in chosen.items()}
    n_slices, geometry, spacing, _ = headers["flair"]
    substituted = tuple(role for role in ("t1", "t1c") if role not in chosen)
    for role in substituted:
        logger.warning(
            "%s: no %s (patterns %s): FLAIR is used in its place, as the training data do for patients "
            "missing a sequence",
            folder,
            ROLE_NAMES[role],
            list(patterns[role]),
        )
    flair = chosen["flair"]
    return InferenceInput(
        name,
        "patient",
        folder,
        n_slices,
        spacing=spacing,
        geometry=geometry,
        sequences={role: candidate.path for role, candidate in chosen.items()},
        substituted=substituted,
        flair_only=len(substituted) == 2,
        dicom_files=flair.series.files if flair.series is not None else (),
        sequence_files={role: c.series.files for role, c in chosen.items() if c.series is not None},
    )
