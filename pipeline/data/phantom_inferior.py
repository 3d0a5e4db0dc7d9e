"""The hard phantom's inferior slices and artefacts: what lies below the tentorium, and ghosts.

Below the tentorium (a horizontal plane) the hard phantom has no cerebrum but the two
temporal lobes (with FLAIR-bright hippocampi), the cerebellum (grey-rich, so brighter than white
matter in FLAIR, with white folia), the brainstem (mildly FLAIR-bright), the fourth ventricle and
the bone of the skull base around them. Lesions stay above the tentorium
(:func:`supratentorial`). Used by :mod:`pipeline.data.phantom_hard`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.data.phantom_anatomy import SIZE, ellipsoid, paint, ramp

Shape = tuple[tuple[float, float, float], tuple[float, float, float]]  # (centre, semi-axes), px


@dataclass(frozen=True)
class Fossa:
    """One patient's infratentorial anatomy, in pixels (u: left-right, v: front-back, z: up)."""

    tent: float  # height of the tentorium
    temporal: tuple[Shape, Shape]
    hippocampus: tuple[Shape, Shape]
    cerebellum: Shape
    brainstem: tuple[float, float, float]  # v of its centre, radius across, radius front-back
    fourth: Shape  # the fourth ventricle
    stem_tissue: tuple[float, float, float]
    hippocampus_tissue: tuple[float, float, float]

    @property
    def top(self) -> float:
        """Highest z (px) at which any infratentorial structure can appear."""
        return self.tent + 10


def draw_fossa(rng: np.random.Generator, a: float, b: float, c_low: float, tissue: dict) -> Fossa:
    """Draw the infratentorial anatomy of a brain with semi-axes ``a``, ``b`` (and ``c_low`` below)."""
    tent = -rng.uniform(0.3, 0.4) * c_low
    temporal = tuple(
        ((side * 0.58 * a, -0.15 * b, tent - 0.05 * c_low), (0.36 * a, 0.50 * b, 0.40 * c_low))
        for side in (-1, 1)
    )
    hippocampus = tuple(
        ((side * rng.uniform(0.36, 0.44) * a, -0.02 * b, tent - 0.08 * c_low), (5.0, 13.0, 7.0))
        for side in (-1, 1)
    )
    cerebellum = ((0.0, 0.48 * b, tent - 0.32 * c_low), (0.75 * a, 0.40 * b, 0.34 * c_low))
    stem_v, stem_ry = 0.1 * b + rng.normal(0, 2), rng.uniform(10, 13)
    white, grey = tissue["white"], tissue["grey"]
    return Fossa(
        tent=tent,
        temporal=temporal,
        hippocampus=hippocampus,
        cerebellum=cerebellum,
        brainstem=(stem_v, rng.uniform(11, 14), stem_ry),
        fourth=((0.0, stem_v + stem_ry + 3, tent - 0.25 * c_low), (6.0, 3.5, 0.18 * c_low)),
        stem_tissue=(white[0] * 0.95, white[1] * rng.uniform(1.05, 1.2), white[2] * 0.95),
        hippocampus_tissue=(grey[0], grey[1] * rng.uniform(1.05, 1.15), grey[2]),
    )


def supratentorial(fossa: Fossa, v: np.ndarray, z: np.ndarray, margin: float = 0.0) -> np.ndarray:
    """Soft membership (nz, H, W) of the space ``margin`` px or more above the tentorium."""
    return np.broadcast_to(ramp(z - np.float32(fossa.tent + margin), 2)[:, None, None], (len(z), *v.shape))


def _level(u: np.ndarray, v: np.ndarray, z: np.ndarray, shape: Shape) -> np.ndarray:
    """Approximate depth in px inside an ellipsoid (negative outside)."""
    centre, axes = shape
    return (1 - ellipsoid(u, v, z, centre, axes)) * np.float32(min(axes))


def temporal_level(fossa: Fossa, u: np.ndarray, v: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Depth in px inside either temporal lobe."""
    return np.maximum(*(_level(u, v, z, shape) for shape in fossa.temporal))


def fossa_levels(fossa: Fossa, u: np.ndarray, v: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Depth in px inside the cerebellum and inside the brainstem, both cut by the tentorium."""
    below = np.broadcast_to((np.float32(fossa.tent) - z)[:, None, None], (len(z), *v.shape))
    cerebellum = np.minimum(_level(u, v, z, fossa.cerebellum), below - 1)
    stem_v, rx, ry = fossa.brainstem
    across = (1 - np.sqrt((u / rx) ** 2 + ((v - stem_v) / ry) ** 2)) * np.float32(rx)
    return cerebellum, np.minimum(across[None], below + 8)


def paint_fossa(vol: np.ndarray, fossa: Fossa, u, v, z, inside: np.ndarray, folia: np.ndarray, tissue: dict):
    """Paint cerebellum, brainstem, fourth ventricle and hippocampi into ``vol`` (3, nz, H, W).

    ``inside`` is the soft membership of the space within the skull, ``folia`` a smooth noise
    field of the slab (its zero crossings become the cerebellum's white folia).
    """
    cerebellum, stem = fossa_levels(fossa, u, v, z)
    cerebellum_in = ramp(cerebellum) * inside
    paint(vol, cerebellum_in, tissue["grey"])
    paint(vol, ramp((0.15 - np.abs(folia)) * 8) * ramp(cerebellum - 3) * inside, tissue["white"])
    core = np.float32(0.5 * min(fossa.cerebellum[1]))
    paint(vol, ramp(cerebellum - core, 3) * inside, tissue["white"])
    paint(vol, ramp(stem) * inside, fossa.stem_tissue)
    paint(vol, ramp(_level(u, v, z, fossa.fourth) * 2) * inside, tissue["csf"])
    for shape in fossa.hippocampus:
        paint(vol, ramp(_level(u, v, z, shape), 2) * inside, fossa.hippocampus_tissue)
    return np.maximum(cerebellum_in, ramp(stem) * inside)


@dataclass(frozen=True)
class Artefact:
    """A FLAIR artefact on one slice: a motion ghost or a flow artefact along the phase axis."""

    kind: str  # "ghost" or "flow"
    axis: int  # phase-encoding axis of the image (0: rows, 1: columns)
    strength: float
    shift: int  # ghost: replica shift in px; flow: spacing of the replicas
    at: tuple[int, int]  # flow: (row, column) of the pulsating vessel


def draw_artefacts(rng: np.random.Generator, n: int, fraction: float) -> dict[int, Artefact]:
    """The artefacts of a patient's ``n`` slices, about ``fraction`` of them hit, by slice index.

    Takes one number from ``rng`` whatever ``fraction`` is, so the rest of the patient stays the same.
    """
    rng = np.random.default_rng(rng.integers(2**63))
    axis = int(rng.integers(2))  # one phase-encoding direction per patient
    hit = np.flatnonzero(rng.random(n) < fraction)
    found = {}
    for k in hit.tolist():
        if rng.random() < 0.5:
            found[k] = Artefact(
                "ghost", axis, rng.uniform(0.06, 0.15), int(SIZE / rng.uniform(2.5, 4.5)), (0, 0)
            )
        else:
            at = (int(SIZE / 2 + rng.normal(0, 25)), int(SIZE / 2 + rng.normal(0, 25)))
            found[k] = Artefact("flow", axis, rng.uniform(0.3, 0.7), int(rng.integers(14, 30)), at)
    return found


def apply_artefact(plane: np.ndarray, artefact: Artefact) -> np.ndarray:
    """``plane`` (H, W) with ``artefact`` added (a new array)."""
    if artefact.kind == "ghost":  # the head, replicated faintly along the phase axis
        echo = np.roll(plane, artefact.shift, artefact.axis) + np.roll(plane, -artefact.shift, artefact.axis)
        return plane + np.float32(artefact.strength / 2) * echo
    grid = np.arange(SIZE, dtype=np.float32)
    along, across = (
        (artefact.at[0], artefact.at[1]) if artefact.axis == 0 else (artefact.at[1], artefact.at[0])
    )
    offsets = (grid - along + artefact.shift / 2) % artefact.shift - artefact.shift / 2
    comb = np.exp(-0.5 * (offsets / 1.5) ** 2)  # bright dots at even spacing along the phase axis
    line = np.exp(-0.5 * ((grid - across) / 2.0) ** 2)
    dots = np.outer(comb, line) if artefact.axis == 0 else np.outer(line, comb)
    return plane + np.float32(artefact.strength) * dots.astype(np.float32)
