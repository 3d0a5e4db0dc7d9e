"""The hard phantom (``python -m pipeline synth --hard``): a patient with real data's difficulties.

The default phantom (:mod:`pipeline.data.phantom_anatomy`) gives every patient a lesion of 14 mL or
more, in a head whose every slice is cerebrum. The hard variant renders each patient with what
makes real data hard:

- inferior slices whose anatomy differs (temporal lobes, cerebellum, brainstem, skull base; see
  :mod:`pipeline.data.phantom_inferior`) and never hold a lesion;
- FLAIR-bright structures that are not lesions: cortex and deep grey matter brighter than white
  matter, periventricular caps at the horns of the ventricles, FLAIR-bright (slow-flow) vessels,
  a motion ghost or a flow artefact on some slices;
- lesion FLAIR 1.2x (subtle) to 1.75x (obvious) that of grey matter, and small lesions (0.2-3 mL);
- a stronger bias field (a smooth field and a gradient in a random direction, 10-30%), stronger
  noise, and a gain and an offset per sequence and patient.

The lesion-free patients are chosen by the plan (:func:`pipeline.data.phantom._plan`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.data import phantom_inferior as inferior
from pipeline.data.phantom_anatomy import (
    SIZE,
    TISSUES,
    Noise,
    PatientPlan,
    ellipsoid,
    head_geometry,
    paint,
    ramp,
)

_FIELDS = {"surface": 40, "gyri": 10, "sulci": 14, "spots": 6, "patches": 12, "vessels": 16}
_FIELDS |= {"vessel_gate": 30, "bright_vessels": 18, "bright_gate": 30, "folia": 5}
_FIELDS |= {"lesion_texture": 6, "bias": 100, "bias0": 80, "bias1": 80, "bias2": 80, "texture": 4}
_SLAB = 2


def _check_range(name: str, value: object, lowest: float, highest: float) -> None:
    ok = isinstance(value, tuple | list) and len(value) == 2
    ok = ok and all(isinstance(x, int | float) and not isinstance(x, bool) for x in value)
    if not ok or not lowest <= value[0] <= value[1] <= highest:
        raise ValueError(
            f"{name} must be a range (low, high) with {lowest} <= low <= high <= {highest}, not {value!r}"
        )


def _check_fraction(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a fraction between 0 and 1, not {value!r}")


@dataclass(frozen=True)
class HardOptions:
    """How hard the hard phantom is (``synth --hard`` and its sub-options).

    Args:
        bias: range of the per-patient bias-field strength s, default (0.10, 0.30): the field is
            exp(s * (g + 0.6 n)), g a gradient from -1 to 1 across the brain in a random
            direction and n a smooth field of unit variance, so intensities vary by about 10-30%.
        contrast: range of the lesion's FLAIR intensity relative to grey matter, default (1.2, 1.75):
            from subtle to obvious (grey matter is 1.1-1.3x white matter in FLAIR).
        small_lesions: chance that a lesion is small (about 0.2-3 mL), default 0.25.
        artefacts: chance that a slice carries a FLAIR motion ghost or flow artefact, default 0.15.

    Raises:
        ValueError: a range or a fraction is out of bounds.
    """

    bias: tuple[float, float] = (0.10, 0.30)
    contrast: tuple[float, float] = (1.2, 1.75)
    small_lesions: float = 0.25
    artefacts: float = 0.15

    def __post_init__(self) -> None:
        _check_range("bias", self.bias, 0.0, 1.0)
        _check_range("contrast", self.contrast, 1.0, 5.0)
        _check_fraction("small_lesions", self.small_lesions)
        _check_fraction("artefacts", self.artefacts)


def _tissues(rng: np.random.Generator) -> dict[str, tuple[float, float, float]]:
    """Per-patient tissue intensities; in FLAIR, cortex and deep grey matter outshine white matter."""
    jitter = rng.uniform(0.92, 1.08, size=(len(TISSUES), 3))
    tissue = {k: tuple(float(x) for x in np.multiply(t, j)) for (k, t), j in zip(TISSUES.items(), jitter)}
    white = tissue["white"][1]
    tissue["grey"] = (tissue["grey"][0], white * rng.uniform(1.1, 1.3), tissue["grey"][2])
    tissue["deep"] = (tissue["deep"][0], white * rng.uniform(1.03, 1.18), tissue["deep"][2])
    return tissue


def _lesion(rng: np.random.Generator, options: HardOptions, brain: tuple, fossa: inferior.Fossa):
    """Centre and semi-axes (px) of a lesion inside the ``brain`` (a, b, c, c_low), above the tentorium.

    Returns ``(centre, axes, small)``.
    """
    a, b, c, c_low = brain
    small = bool(rng.random() < options.small_lesions)
    if small:
        axes = tuple(rng.uniform(4, 9) * rng.uniform(0.8, 1.2, 3))
    else:
        axes = (rng.uniform(12, 42), rng.uniform(12, 45), rng.uniform(14, 38))
    for _ in range(1000):  # rejection: the centre well inside the brain, the lesion above the tentorium
        centre = (
            rng.choice([-1, 1]) * rng.uniform(8, 45),
            rng.uniform(-50, 50),
            rng.uniform(-0.3 * c_low, 0.6 * c),
        )
        radius = np.sqrt(
            (centre[0] / a) ** 2 + (centre[1] / b) ** 2 + (centre[2] / (c if centre[2] >= 0 else c_low)) ** 2
        )
        if (1 - radius) * a > min(axes) + 4 and centre[2] - 0.8 * axes[2] > fossa.tent + 8:
            break
    return centre, axes, small


def render_hard_patient(patient: PatientPlan, options: HardOptions) -> tuple[np.ndarray, np.ndarray]:
    """One hard patient: images (n, 256, 256, 3) uint8 and masks (n, 256, 256) uint8 0/255."""
    rng = np.random.default_rng(patient.seed)
    n = patient.n_slices
    (a, b, c, c_low, scalp, skull, csf), z, dz, u, v, zn = head_geometry(rng, n, (0.85, 1.0))
    zn_head = np.where(z >= 0, z / c, z / (1.35 * c_low)).astype(np.float32)  # the skull base is wide
    tissue = _tissues(rng)
    white = tissue["white"]
    fat = (0.9, rng.uniform(0.65, 1.05), 0.9)
    cortex = rng.uniform(4, 6)
    vy, vz = rng.uniform(-10, 5), rng.uniform(0.05, 0.25) * c
    deep = [
        ((side * rng.uniform(17, 22), vy + 8, vz - 12), tuple(rng.uniform((9, 12, 9), (13, 17, 13))))
        for side in (-1, 1)
    ]
    ventricles = [
        ((side * rng.uniform(6, 10), vy, vz), tuple(rng.uniform((5, 24, 14), (9, 34, 22))))
        for side in (-1, 1)
    ]
    rim = (rng.uniform(1.5, 3), (0.72, white[1] * rng.uniform(1.1, 1.35), 0.72))
    cap = (white[0] * 0.9, white[1] * rng.uniform(1.3, 1.7), white[2] * 0.9)  # periventricular caps
    caps = [
        ((cx, cy + end * 0.85 * ay, cz), (r, 1.4 * r, r))
        for (cx, cy, cz), (_, ay, _) in ventricles
        for end, r in ((-1, rng.uniform(4, 8)), (1, rng.uniform(4, 8)))
    ]
    spots = (rng.uniform(2.1, 2.8), (0.74, white[1] * rng.uniform(1.2, 1.6), 0.74))
    patches = (rng.uniform(2.3, 3.3), (white[0], white[1] * rng.uniform(1.2, 1.5), white[2]))
    flow = (tissue["grey"][0], white[1] * rng.uniform(1.3, 1.6), 1.0)  # slow-flow vessels
    fossa = inferior.draw_fossa(rng, a, b, c_low, tissue)
    noise = {name: Noise(rng, n, dz, cell) for name, cell in _FIELDS.items()}
    bias_amp, sigma = rng.uniform(*options.bias), np.float32(rng.uniform(0.015, 0.05))
    direction = rng.normal(size=3)
    gradient = direction / np.linalg.norm(direction) / np.float32((a + b + c) / 3)
    artefacts = inferior.draw_artefacts(rng, n, options.artefacts)
    if patient.has_lesion:
        centre, axes, small = _lesion(rng, options, (a, b, c, c_low), fossa)
        lesion_shape = Noise(rng, n, dz, max(min(axes[:2]) * 0.8, 3.0))
        blur = rng.uniform(1.0, 2.5 if small else 5.5) / ((axes[0] + axes[1]) / 2)
        drawn = rng.uniform(0.35, 0.65)  # the rater's edge: the lesion's share of a pixel, a halo outside
        flair = tissue["grey"][1] * rng.uniform(*options.contrast)
        lesion = (rng.uniform(0.45, 0.62), flair, rng.uniform(0.48, 0.64))
        cyst = not small and rng.random() < 0.2

    signal = np.empty((3, n, SIZE, SIZE), np.float32)
    head = np.empty((n, SIZE // 4, SIZE // 4), bool)
    mask = np.zeros((n, SIZE, SIZE), bool)
    mean_axis = np.float32((a + b + c) / 3)
    for z0 in range(0, n, _SLAB):
        zs = slice(z0, min(z0 + _SLAB, n))
        surface = 2.5 * noise["surface"][zs]
        rho = np.sqrt(((u / a) ** 2 + (v / b) ** 2)[None] + (zn[zs] ** 2)[:, None, None])
        depth = (1 - rho) * mean_axis + surface  # px inside the brain's ellipsoid
        rho_head = np.sqrt(((u / a) ** 2 + (v / b) ** 2)[None] + (zn_head[zs] ** 2)[:, None, None])
        outer = (1 - rho_head) * mean_axis + surface
        vol = np.zeros((3, *depth.shape), np.float32)
        scalp_in = ramp(outer + (csf + skull + scalp))
        head[zs] = scalp_in[:, ::4, ::4] > 0.5
        paint(vol, scalp_in, fat)
        paint(vol, ramp(outer + (csf + skull)), tissue["skull"])
        inside = ramp(outer + csf)
        paint(vol, inside, tissue["csf"])
        supra = inferior.supratentorial(fossa, v, z[zs])
        cerebral = supra
        if z[zs].min() < fossa.top:  # the slab reaches below the tentorium
            temporal = inferior.temporal_level(fossa, u, v, z[zs])
            cerebral = np.maximum(supra, ramp(temporal))
            cerebellum, stem = inferior.fossa_levels(fossa, u, v, z[zs])
            envelope = np.maximum(
                ramp(depth + csf) * np.maximum(supra, ramp(temporal + csf)), ramp(stem + csf)
            )
            envelope = np.maximum(envelope, ramp(cerebellum + csf))
            paint(vol, inside * (1 - envelope), tissue["skull"])  # skull base and air around the brain
        brain = ramp(depth) * cerebral
        paint(vol, brain, tissue["grey"])
        paint(vol, ramp(depth - cortex + 2.5 * noise["gyri"][zs]) * brain, white)
        sulcus = ramp((0.16 - np.abs(noise["sulci"][zs])) * 10) * ramp(cortex + 2 - depth, 2)
        paint(vol, sulcus * brain, tissue["csf"])
        for centre_, axes_ in deep:
            paint(vol, ramp((1 - ellipsoid(u, v, z[zs], centre_, axes_)) * 10) * brain, tissue["deep"])
        for centre_, axes_ in caps:
            paint(vol, ramp((1 - ellipsoid(u, v, z[zs], centre_, axes_)) * axes_[0], 2) * brain, cap)
        for centre_, axes_ in ventricles:
            level = (1 - ellipsoid(u, v, z[zs], centre_, axes_)) * 8
            paint(vol, ramp(level + rim[0], 2) * brain, rim[1])
            paint(vol, ramp(level) * brain, tissue["csf"])
        wm = ramp(depth - cortex - 3) * cerebral
        paint(vol, ramp((noise["spots"][zs] - spots[0]) * 6) * wm, spots[1])
        paint(vol, ramp((noise["patches"][zs] - patches[0]) * 4) * wm, patches[1])
        if z[zs].min() < fossa.top:
            brain = np.maximum(
                brain, inferior.paint_fossa(vol, fossa, u, v, z[zs], inside, noise["folia"][zs], tissue)
            )
        vessel = ramp((0.06 - np.abs(noise["vessels"][zs])) * 20) * ramp(noise["vessel_gate"][zs] - 0.3)
        paint(vol, vessel * brain, tissue["vessel"])
        bright = ramp((0.05 - np.abs(noise["bright_vessels"][zs])) * 20) * ramp(
            noise["bright_gate"][zs] - 0.8
        )
        paint(vol, bright * brain, flow)
        if patient.has_lesion:
            shape = 1 - ellipsoid(u, v, z[zs], centre, axes) + 0.3 * lesion_shape[zs]
            allowed = ramp(depth - 1, 2) * inferior.supratentorial(fossa, v, z[zs], margin=6)
            member = ramp(shape, blur) * allowed
            mask[zs] = member >= drawn
            texture = lesion[1] * (1 + 0.12 * noise["lesion_texture"][zs])
            paint(vol, member, (lesion[0], texture, lesion[2]))
            if cyst:
                paint(vol, ramp((shape - 0.7) * 8) * allowed * 0.6, tissue["csf"])
        along = (gradient[0] * u)[None] + (gradient[1] * v)[None] + (gradient[2] * z[zs])[:, None, None]
        field = bias_amp * (0.6 * noise["bias"][zs] + along)
        texture = 1 + 0.04 * noise["texture"][zs]
        for ch in range(3):
            clean = vol[ch] * np.exp(field + 0.06 * noise[f"bias{ch}"][zs]) * texture
            if ch == 1:
                for k in range(zs.start, zs.stop):
                    if k in artefacts:
                        clean[k - zs.start] = inferior.apply_artefact(clean[k - zs.start], artefacts[k])
            real = clean + sigma * rng.standard_normal(clean.shape, dtype=np.float32)
            imag = sigma * rng.standard_normal(clean.shape, dtype=np.float32)
            signal[ch, zs] = np.sqrt(real * real + imag * imag)

    image = np.empty((n, SIZE, SIZE, 3), np.uint8)
    for ch in range(3):  # a gain and an offset per sequence, as scanners and protocols differ
        top = np.percentile(signal[ch, :, ::4, ::4][head], 99.8)
        gain, offset = rng.uniform(150, 250) / top, rng.uniform(0, 20)
        image[..., ch] = np.clip(signal[ch] * np.float32(gain) + np.float32(offset), 0, 255).round()
    if patient.flair_copy is not None:
        image[..., patient.flair_copy] = image[..., 1]
    return image, mask.astype(np.uint8) * np.uint8(255)
