"""A parametric brain phantom: one synthetic subject's anatomy and its rendered axial slices.

Each synthetic subject is a small parametric "head" (skull ring, brain with cortex, sulci, ventricles, deep grey
nuclei, hippocampi) whose atrophy grows with the dementia stage (index into ``synth.CLASS_NAMES``). Adjacent axial
levels are rendered per subject, so slices of one subject are near-duplicates while different subjects are clearly
less alike. ``featurize.synth`` turns these into labelled datasets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from featurize.errors import DataError

DEFAULT_SIZE: tuple[int, int] = (176, 208)

# Geometry is in "head units": 1.0 is half the width of a 176x208 Kaggle image, so shapes keep their look at any size.
_REF_W, _REF_H = 176, 208
# Axial distance between adjacent slices (head units); tuned so adjacent slices correlate ~0.98.
_SLICE_STEP = 0.02
# Per-stage means (head units unless a scale): ventricle scale, sulcal half-width, cortex thickness, hippocampus
# scale, brain-to-skull gap. Subject jitter in make_subject makes neighbouring stages overlap.
_VENTRICLES = (1.0, 1.18, 1.4, 1.65)
_SULCI = (0.011, 0.014, 0.018, 0.023)
_CORTEX = (0.046, 0.043, 0.040, 0.036)
_HIPPOCAMPUS = (1.0, 0.9, 0.78, 0.66)
_SHRINK = (0.0, 0.012, 0.026, 0.042)
_GYRAL_WAVELENGTH = 0.3
_FOLD_TABLE = 2048
_SHIFT_SD_PX = 0.7
_SHIFT_STEP_PX = 0.25
_SHIFT_MAX_PX = 2.0
_NOISE_SD = 6.0
_BLUR_PX = 0.7


@dataclass(frozen=True, eq=False)  # eq would compare arrays ambiguously
class SubjectAnatomy:
    """One synthetic subject: stage-driven atrophy plus subject-level anatomy, pose and scanner quirks."""

    stage: int
    scale: float                 # head size
    aspect: float                # height / width of the brain ellipse
    egg: float                   # frontal vs occipital width difference
    harmonics: np.ndarray        # (3, 2) cos/sin amplitudes of boundary harmonics 2..4
    rotation: float              # radians, in-plane head tilt
    center: tuple[float, float]  # head offset (head units)
    z0: float                    # axial level of the middle slice
    ventricles: float
    sulci: float
    cortex: float
    hippocampus: float
    shrink: float                # brain-to-skull gap from global atrophy
    intensities: tuple[float, float, float, float]  # white matter, grey matter, deep grey, CSF
    gain: float
    bias: np.ndarray             # (5,) coefficients of a smooth quadratic bias field
    gyri: np.ndarray             # (K, 5) wave vector kx, ky, kz, phase, amplitude of the field that bends sulci
    folds: np.ndarray            # (M, 4) sulcal carrier, then phase-modulation harmonics (see _folds)
    depths: np.ndarray           # (P, 3) angular frequency, amplitude, phase of the sulcal depth profile
    texture: np.ndarray          # (K, 5) same, for low-frequency white-matter texture


def _waves(rng: np.random.Generator, k: int, wavelength: float, spread: float, z_scale: float) -> np.ndarray:
    """Random 3-D plane waves with wavelengths around ``wavelength``; ``z_scale`` < 1 slows change across slices."""
    direction = rng.normal(size=(k, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    freq = 2 * np.pi / (wavelength * np.exp(rng.normal(0, spread, size=k)))
    vec = direction * freq[:, None]
    vec[:, 2] *= z_scale
    phase = rng.uniform(0, 2 * np.pi, size=k)
    amp = rng.uniform(0.5, 1.0, size=k)
    return np.column_stack([vec, phase, amp])


def _folds(rng: np.random.Generator) -> np.ndarray:
    """Phase modulation of the sulcal carrier: rows of harmonic, amplitude (radians of phase), phase, z-rate.

    Row 0 is the carrier itself (about 30 sulci around the brain); the rest bend the spacing irregularly while the
    phase keeps increasing, so sulci never merge into blobs.
    """
    j = np.arange(1, 9, dtype=float)
    amp = rng.uniform(0.3, 1.0, len(j)) * 0.7 / j  # sum of j*amp <= 5.6: sulcal spacing varies at most ~1.6x
    rows = np.column_stack([j, amp, rng.uniform(0, 2 * np.pi, len(j)), rng.normal(0, 1.5, len(j))])
    carrier = [rng.uniform(14, 17), 0.0, rng.uniform(0, 2 * np.pi), rng.normal(0, 3.0)]
    return np.vstack([carrier, rows])


def make_subject(stage: int, rng: np.random.Generator) -> SubjectAnatomy:
    """Draw one subject of ``stage`` (0 = NonDemented .. 3 = ModerateDemented).

    Atrophy is a stage mean times a subject factor wide enough that neighbouring stages overlap, as in real cohorts.
    """
    if stage not in range(len(_VENTRICLES)):
        raise DataError(f"stage must be 0..{len(_VENTRICLES) - 1}, got {stage}")
    jitter = lambda sd: float(np.exp(rng.normal(0.0, sd)))  # noqa: E731 - multiplicative, always positive
    wm = rng.normal(205, 8)
    return SubjectAnatomy(
        stage=stage,
        scale=float(np.clip(rng.normal(1.0, 0.06), 0.85, 1.12)),
        aspect=float(rng.normal(1.24, 0.06)),
        egg=float(rng.normal(0.07, 0.04)),
        harmonics=rng.normal(0, 0.012, size=(3, 2)),
        rotation=float(np.deg2rad(rng.normal(0, 4.5))),
        center=(float(rng.normal(0, 0.028)), float(rng.normal(0, 0.028))),
        z0=float(rng.normal(0, 0.03)),
        ventricles=_VENTRICLES[stage] * jitter(0.16),
        sulci=_SULCI[stage] * jitter(0.18),
        cortex=_CORTEX[stage] * jitter(0.08),
        hippocampus=_HIPPOCAMPUS[stage] * jitter(0.1),
        shrink=max(0.0, _SHRINK[stage] + rng.normal(0, 0.008)),
        intensities=(float(wm), float(wm - rng.normal(85, 7)), float(wm - rng.normal(60, 7)), float(rng.normal(22, 4))),
        gain=float(np.clip(rng.normal(1.0, 0.06), 0.8, 1.2)),
        bias=rng.normal(0, 0.05, size=5),
        gyri=_waves(rng, 20, _GYRAL_WAVELENGTH, 0.2, 0.6),
        folds=_folds(rng),
        depths=np.column_stack([np.arange(1, 25), rng.uniform(0.3, 1.0, 24), rng.uniform(0, 2 * np.pi, 24)]),
        texture=_waves(rng, 10, 0.55, 0.3, 0.5),
    )


def _unit(size: tuple[int, int]) -> float:
    """Pixels per head unit for a (width, height) image: the head fits whatever the aspect ratio."""
    w, h = size
    return min(w / 2, h / 2 * _REF_W / _REF_H)


def _field(waves: np.ndarray, x: np.ndarray, y: np.ndarray, z: np.ndarray, rot: float, scale: float,
           offsets: np.ndarray) -> np.ndarray:
    """Sum of plane waves in the subject frame, sampled on image pixels, as float32 (n, H, W) with unit variance.

    Rotation, scale and per-slice shift are folded into the wave vectors and phases, so the whole stack is one
    real matrix product instead of K*n full-size cosines.
    """
    kx, ky, kz, phase, amp = (waves[:, i] for i in range(5))
    c, s = np.cos(rot), np.sin(rot)
    ax = (kx * c - ky * s) / scale  # wave vector in image coordinates
    ay = (kx * s + ky * c) / scale
    phi = phase[None, :] + kz[None, :] * z[:, None] - ax[None, :] * offsets[:, :1] - ay[None, :] * offsets[:, 1:]
    coef = amp[None, :] * np.exp(1j * phi)                          # (n, K)
    ey = coef[:, None, :] * np.exp(1j * ay[None, None, :] * y[None, :, None])  # (n, H, K)
    ex = np.exp(1j * ax[:, None] * x[None, :])                      # (K, W)
    # Re(ey @ ex) as one real product: [Re ey, -Im ey] @ [Re ex; Im ex].
    left = np.concatenate([ey.real, -ey.imag], axis=2).reshape(-1, 2 * len(kx))
    right = np.concatenate([ex.real, ex.imag], axis=0)
    out = (left @ right).reshape(len(z), len(y), len(x))
    return (out / np.sqrt(0.5 * np.sum(amp ** 2))).astype(np.float32)


def _blur(stack: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of an (n, H, W) stack with edge padding (numpy only, no scipy dependency)."""
    radius = int(np.ceil(2.5 * sigma))
    if radius < 1:
        return stack
    t = np.arange(-radius, radius + 1)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    k = (k / k.sum()).astype(stack.dtype)
    n_rows, n_cols = stack.shape[1:]
    p = np.pad(stack, ((0, 0), (radius, radius), (0, 0)), mode="edge")
    acc = sum(wt * p[:, i:i + n_rows, :] for i, wt in enumerate(k))
    p = np.pad(acc, ((0, 0), (0, 0), (radius, radius)), mode="edge")
    return sum(wt * p[:, :, i:i + n_cols] for i, wt in enumerate(k))


def _table_index(turn: np.ndarray, row0: np.ndarray) -> np.ndarray:
    """Flat index into (n, _FOLD_TABLE) tables for angles given as turns (any whole-turn offset)."""
    frac = turn - np.floor(turn)
    return np.minimum((frac * _FOLD_TABLE).astype(np.int32), _FOLD_TABLE - 1) + row0


def _angle_tables(a: SubjectAnatomy, z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per slice, on _FOLD_TABLE angles: the outline's radial wobble, the angular distance (radians) to the nearest
    sulcus, and how deep that stretch of cortex is folded. Tables make angular patterns one lookup per pixel."""
    t = np.linspace(0, 2 * np.pi, _FOLD_TABLE, endpoint=False)[None, :]
    outline = 1.0 + sum(a.harmonics[m, 0] * np.cos((m + 2) * t) + a.harmonics[m, 1] * np.sin((m + 2) * t)
                        for m in range(3))
    outline = np.broadcast_to(outline, (len(z), _FOLD_TABLE))
    zc = z[:, None]
    (m0, _, p0, r0), mod = a.folds[0], a.folds[1:]
    phase = m0 * t + p0 + r0 * zc
    rate = np.full_like(phase, m0)
    for j, amp, ph, rz in mod:
        phase = phase + amp * np.sin(j * t + ph + rz * zc)
        rate = rate + amp * j * np.cos(j * t + ph + rz * zc)
    frac = np.mod(phase, np.pi)
    dist = np.minimum(frac, np.pi - frac) / rate  # sulci sit at phase = k*pi
    dm, damp, dphase = (a.depths[:, i, None] for i in range(3))
    wave = np.sum(damp * np.cos(dm * t + dphase), axis=0) / np.sqrt(np.sum(a.depths[:, 1] ** 2) / 2)
    reach = np.clip(0.13 + 0.045 * wave, 0.05, 0.22)
    return (outline.astype(np.float32), dist.astype(np.float32),
            np.broadcast_to(reach, dist.shape).astype(np.float32))


class _Canvas:
    """A stack of slices in the subject frame; shapes are painted inside their bounding boxes only, for speed."""

    def __init__(self, X: np.ndarray, Y: np.ndarray, img: np.ndarray, to_pixel) -> None:
        self.X, self.Y, self.img, self._to_pixel = X, Y, img, to_pixel

    def box(self, cx: float, cy: float, radius: float) -> tuple[slice, slice, slice]:
        """Pixel window holding a disc of ``radius`` around subject-frame (cx, cy) in every slice."""
        (c0, c1), (r0, r1) = self._to_pixel(cx, cy, radius)
        return slice(None), slice(r0, r1), slice(c0, c1)

    def ellipse(self, cx: float, cy: float, rx: np.ndarray | float, ry: np.ndarray | float, tilt: float = 0.0,
                ) -> tuple[tuple[slice, slice, slice], np.ndarray]:
        """Window and inside-mask of a tilted ellipse; radii may be per-slice arrays of shape (n, 1, 1)."""
        win = self.box(cx, cy, float(np.max(np.maximum(rx, ry))))
        c, s = np.cos(tilt), np.sin(tilt)
        u, v = self.X[win] - cx, self.Y[win] - cy
        return win, ((u * c + v * s) / rx) ** 2 + ((v * c - u * s) / ry) ** 2 <= 1.0

    def paint(self, win: tuple[slice, slice, slice], mask: np.ndarray, value: float) -> None:
        self.img[win][mask] = value


def render_slices(anatomy: SubjectAnatomy, n_slices: int = 8, size: tuple[int, int] = DEFAULT_SIZE,
                  rng: np.random.Generator | None = None) -> np.ndarray:
    """Render ``n_slices`` adjacent axial slices of one subject as uint8 (n_slices, H, W); ``size`` is (width, height).

    ``rng`` draws the per-image nuisances (noise, misregistration, bias wobble); same rng state, same bytes.
    """
    if n_slices < 1:
        raise DataError(f"n_slices must be >= 1, got {n_slices}")
    w, h = check_size(size)
    rng = rng if rng is not None else np.random.default_rng(0)
    a = anatomy
    n = n_slices
    z = a.z0 + (np.arange(n) - (n - 1) / 2) * _SLICE_STEP
    # Misregistration as slow head drift: a random walk of a pixel or two across the stack at Kaggle size, so
    # adjacent slices stay near-duplicates. In head units, so a smaller image looks like a downscaled Kaggle one.
    steps = rng.normal(0, _SHIFT_STEP_PX, size=(n, 2))
    steps[0] = rng.normal(0, _SHIFT_SD_PX, size=2)
    shift_px = np.clip(np.cumsum(steps, axis=0), -_SHIFT_MAX_PX, _SHIFT_MAX_PX)
    offsets = np.asarray(a.center)[None, :] + shift_px / (_REF_W / 2)
    unit = _unit((w, h))
    # Small images are drawn finer and averaged down: hard-edged shapes would otherwise alias, and sub-pixel moves
    # between slices would flip whole edge pixels, breaking the near-duplicate structure at thumbnail sizes.
    ss = int(min(4, np.ceil(60 / unit)))
    img = _draw(a, z, offsets, w * ss, h * ss)
    img = _blur(img, max(0.4, _BLUR_PX * unit * ss / (_REF_W / 2)))
    if ss > 1:
        img = img.reshape(n, h, ss, w, ss).mean(axis=(2, 4), dtype=np.float32)
    x = ((np.arange(w) + 0.5 - w / 2) / unit).astype(np.float32)
    y = ((np.arange(h) + 0.5 - h / 2) / unit).astype(np.float32)
    xs = x[None, None, :] - offsets[:, 0].reshape(n, 1, 1).astype(np.float32)
    ys = y[None, :, None] - offsets[:, 1].reshape(n, 1, 1).astype(np.float32)
    # Smooth multiplicative bias field (coil sensitivity), with a small per-image wobble.
    b = (a.bias[None, :] + rng.normal(0, 0.006, size=(n, 5))).astype(np.float32).reshape(n, 5, 1, 1)
    bias = 1 + b[:, 0] * xs + b[:, 1] * ys + b[:, 2] * xs * ys + b[:, 3] * (xs * xs - ys * ys) \
        + b[:, 4] * (xs * xs + ys * ys - 0.8)
    img *= bias * np.float32(a.gain)
    # Rician-like noise: full strength in tissue, fading to nothing in the black background.
    img += rng.standard_normal(size=img.shape, dtype=np.float32) * np.clip(img * np.float32(_NOISE_SD / 40.0), 0, _NOISE_SD)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _draw(a: SubjectAnatomy, z: np.ndarray, offsets: np.ndarray, w: int, h: int) -> np.ndarray:
    """Noise-free, unblurred anatomy of every slice as float32 (n, h, w)."""
    n = len(z)
    unit = _unit((w, h))
    x = ((np.arange(w) + 0.5 - w / 2) / unit).astype(np.float32)
    y = ((np.arange(h) + 0.5 - h / 2) / unit).astype(np.float32)
    xs = x[None, None, :] - offsets[:, 0].reshape(n, 1, 1).astype(np.float32)
    ys = y[None, :, None] - offsets[:, 1].reshape(n, 1, 1).astype(np.float32)
    c, s = np.float32(np.cos(a.rotation)), np.float32(np.sin(a.rotation))
    # Subject frame, in units of this subject's head size; +Y points to the back of the head (frontal lobes on top).
    X = (xs * c + ys * s) / np.float32(a.scale)
    Y = (ys * c - xs * s) / np.float32(a.scale)
    zz = z.reshape(n, 1, 1)

    def to_pixel(cx: float, cy: float, radius: float) -> tuple[tuple[int, int], tuple[int, int]]:
        px = a.scale * (cx * c - cy * s) + offsets[:, 0]
        py = a.scale * (cx * s + cy * c) + offsets[:, 1]
        r = radius * a.scale * unit + 2
        cols = px * unit + w / 2 - 0.5
        rows = py * unit + h / 2 - 0.5
        return ((max(0, int(cols.min() - r)), max(0, int(np.ceil(cols.max() + r)) + 1)),
                (max(0, int(rows.min() - r)), max(0, int(np.ceil(rows.max() + r)) + 1)))

    # Head outline: an egg-shaped ellipse with a few smooth harmonics; shrinks a little towards the slab's ends.
    level = np.sqrt(np.clip(1 - (zz / 1.3) ** 2, 0.2, 1)).astype(np.float32)
    half_w, half_h = 0.77 * level, 0.77 * a.aspect * level
    r = np.sqrt(X * X + Y * Y)
    # Angles as indices into per-slice lookup tables: one arctan2 serves the outline and the sulci.
    turn = np.arctan2(Y, X) * np.float32(1 / (2 * np.pi)) + np.float32(1.0)  # in (0.5, 2]
    row0 = (np.arange(n, dtype=np.int32) * _FOLD_TABLE).reshape(n, 1, 1)
    outline, prof, sul_depth = _angle_tables(a, z)
    wobble = outline.ravel()[_table_index(turn, row0)]
    width = half_w * (1 - a.egg * Y / half_h)
    rho = np.sqrt((X / width) ** 2 + (Y / half_h) ** 2) / wobble
    head_r = 0.5 * (half_w + half_h)
    skull_depth = (1 - rho) * head_r            # depth below the skull ring's inner edge
    depth = skull_depth - (a.shrink + 0.035)    # depth below the brain surface

    wm, gm, deep, csf = a.intensities
    img = np.float32(wm) + np.float32(5.0) * _field(a.texture, x, y, z, a.rotation, a.scale, offsets)
    cv = _Canvas(X, Y, img, to_pixel)

    # Deep grey nuclei (thalami, caudate heads, putamina) before the ventricles cut into them.
    for side in (-1, 1):
        cv.paint(*cv.ellipse(side * 0.1, 0.05, 0.085, 0.11), deep)
        cv.paint(*cv.ellipse(side * 0.15, -0.17, 0.05, 0.08), deep)
        cv.paint(*cv.ellipse(side * 0.26, -0.04, 0.045, 0.13, side * 0.15), deep)

    # Cortex: a grey band under the surface plus a grey ribbon along every sulcus; sulci hold CSF. Sulci run
    # roughly radially (zero crossings of an angular profile), wiggled by a smooth 3-D field so none is straight.
    r_safe = np.maximum(r, np.float32(0.15))
    wiggle = _field(a.gyri, x, y, z, a.rotation, a.scale, offsets)
    wiggle *= np.float32(0.05 / (2 * np.pi))
    wiggle /= r_safe  # a sideways bend of 0.05 head units, as a fraction of a turn
    idx = _table_index(turn + wiggle, row0)
    dist = prof.ravel()[idx] * r_safe             # ~ distance to the nearest sulcus, head units
    reach = sul_depth.ravel()[idx]                # how deep this sulcus cuts
    taper = np.sqrt(np.clip(1 - depth / reach, 0, 1))
    inner = depth < reach + a.cortex
    img[(depth < a.cortex) | (inner & (dist < a.sulci * taper + a.cortex))] = gm

    # Interhemispheric and Sylvian fissures widen with atrophy.
    fissure_w = 0.004 + 0.6 * a.sulci
    ax_, ay_ = np.abs(X), np.abs(Y)
    img[(ax_ < fissure_w + 0.03) & (ay_ > 0.4 * half_h)] = gm
    img[(inner & (dist < a.sulci * taper) & (depth < reach)) | ((ax_ < fissure_w) & (ay_ > 0.42 * half_h))] = csf
    for side in (-1, 1):
        cv.paint(*cv.ellipse(side * 0.64, -0.03, 0.12, 0.006 + 0.8 * a.sulci, -side * 0.3), csf)

    # Lateral ventricles ("butterfly"), visible mostly at mid levels; atrophy widens them more than it lengthens them.
    vis = (0.55 + 0.45 * np.exp(-((zz - 0.03) / 0.3) ** 2)).astype(np.float32)
    v = a.ventricles
    for side in (-1, 1):
        for cx, cy, rx, ry, tilt in ((0.085, -0.16, 0.045, 0.16, 0.3), (0.12, 0.17, 0.04, 0.15, -0.25)):
            win, mask = cv.ellipse(side * cx, cy, rx * v ** 1.6 * vis, ry * v ** 0.6 * vis, side * tilt)
            cv.paint(win, mask & (np.abs(X[win]) > 0.012), csf)  # keep the septum pellucidum
    win = cv.box(0.0, 0.03, 0.08)
    cv.paint(win, (np.abs(X[win]) < 0.008 * v + 0.004) & (np.abs(Y[win] - 0.03) < 0.07 * np.clip((0.16 - zz) / 0.1, 0, 1)), csf)

    # Hippocampi in their CSF-filled temporal horns, at the lower levels; they shrink and the horns grow.
    hvis = np.clip((0.12 - zz) / 0.2, 0, 1).astype(np.float32) + np.float32(1e-6)
    hs = a.hippocampus
    horn = 1.25 + 0.9 * (1 - hs)
    for side in (-1, 1):
        cv.paint(*cv.ellipse(side * 0.385, 0.09, 0.045 * horn * hvis, 0.13 * horn * hvis, side * 0.4), csf)
        cv.paint(*cv.ellipse(side * 0.37, 0.1, 0.045 * hs * hvis, 0.13 * hs * hvis, side * 0.4), gm)

    # Outside the brain: dark CSF, a thin faint skull ring, then air.
    img[depth <= 0] = 4.0
    img[(skull_depth <= 0) & (skull_depth > -0.022)] = 30.0
    img[skull_depth <= -0.022] = 0.0

    return img


def check_size(size: object) -> tuple[int, int]:
    """``size`` as (width, height) of 16..4096 pixels; DataError otherwise."""
    try:
        w, h = (int(v) for v in size)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise DataError(f"size must be (width, height), got {size!r}") from None
    if w < 16 or h < 16 or w > 4096 or h > 4096:
        raise DataError(f"size must be between 16 and 4096 pixels per side, got {w}x{h}")
    return w, h
