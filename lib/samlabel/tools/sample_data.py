"""Small, deterministic sample studies so the server, tests and demos run with no downloads.

LiteMedSAM resizes every slice to 256x256 on the CPU, so volumes stay small. The phantoms are
deliberately awkward in the ways real studies are: non-square slices, anisotropic voxels, an affine
that is neither identity nor axis-aligned, noise and a bias field. Volumes are indexed ``[i, j, k]``
and slices run along ``k`` (see :mod:`samlabel.inference.geometry`).
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from samlabel.atomic_write import atomic_write

CT_LABELS: dict[str, int] = {"liver": 1, "spleen": 2, "kidney": 3}
MR_LABELS: dict[str, int] = {"bright_lesion": 1, "dark_lesion": 2}
MNI_LABELS: dict[str, int] = {"white_matter": 1, "grey_matter": 2}
CARDIAC_LABELS: dict[str, int] = {"lv_blood": 1, "myocardium": 2, "rv_blood": 3}
#: Label name -> value for each study kind (``ct``, ``mr``, ``mni``).
LABELS: dict[str, dict[str, int]] = {"ct": CT_LABELS, "mr": MR_LABELS, "mni": MNI_LABELS, "cardiac": CARDIAC_LABELS}

CT_SHAPE, CT_SPACING = (160, 128, 48), (0.9, 1.1, 2.5)
MR_SHAPE, MR_SPACING = (144, 176, 40), (1.2, 1.0, 3.0)
CARDIAC_SHAPE, CARDIAC_SPACING = (160, 144, 12), (1.6, 1.6, 8.0)
MNI_FILE = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"

Coords = tuple[np.ndarray, np.ndarray, np.ndarray]


def study_labels(study_id: str) -> dict[str, int]:
    """Label map of a study written by :func:`write_sample_studies`, chosen by its id prefix."""
    for prefix, kind in (("ct_", "ct"), ("mr_", "mr"), ("mni", "mni")):
        if study_id.startswith(prefix):
            return dict(LABELS[kind])
    raise KeyError(f"not a sample study id: {study_id!r}")


def _rotation(rz_deg: float, rx_deg: float = 0.0) -> np.ndarray:
    """3x3 rotation about z then x, so the affine is oblique like a tilted acquisition."""
    cz, sz = np.cos(np.radians(rz_deg)), np.sin(np.radians(rz_deg))
    cx, sx = np.cos(np.radians(rx_deg)), np.sin(np.radians(rx_deg))
    rz = np.array([[cz, -sz, 0.0], [sz, cz, 0.0], [0.0, 0.0, 1.0]])
    rx = np.array([[1.0, 0.0, 0.0], [0.0, cx, -sx], [0.0, sx, cx]])
    return rx @ rz


def _affine(
    shape: tuple[int, ...],
    spacing: tuple[float, ...],
    flips: tuple[int, int, int],
    rot: np.ndarray,
    centre: tuple[float, float, float],
) -> np.ndarray:
    """Voxel -> RAS mm affine with the volume centre at ``centre``; ``flips`` (-1) give LPS-like axes."""
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag(np.multiply(flips, spacing))
    aff[:3, 3] = np.asarray(centre) - aff[:3, :3] @ ((np.asarray(shape) - 1) / 2.0)
    return aff


def _coords(shape: tuple[int, ...], spacing: tuple[float, ...], angle_deg: float) -> Coords:
    """Open-grid patient coordinates in mm about the volume centre, rotated in-plane by ``angle_deg``.

    The rotation moves the anatomy inside the grid (patient pose), independent of the affine.
    """
    x, y, z = (((np.arange(n) - (n - 1) / 2.0) * s) for n, s in zip(shape, spacing, strict=True))
    c, s = np.cos(np.radians(angle_deg)), np.sin(np.radians(angle_deg))
    xr = c * x[:, None, None] + s * y[None, :, None]
    yr = -s * x[:, None, None] + c * y[None, :, None]
    return xr, yr, z[None, None, :]


def _smooth_field(
    rng: np.random.Generator, xyz: Coords, wavelength: tuple[float, float], n_waves: int = 6
) -> np.ndarray:
    """Random low-frequency field with unit std: cheap cosines instead of a wide Gaussian filter."""
    field = np.zeros(np.broadcast_shapes(*(a.shape for a in xyz)))
    for _ in range(n_waves):
        direction = rng.normal(size=3)
        direction *= 2 * np.pi / (rng.uniform(*wavelength) * np.linalg.norm(direction))
        phase = rng.uniform(0, 2 * np.pi)
        field += np.cos(direction[0] * xyz[0] + direction[1] * xyz[1] + direction[2] * xyz[2] + phase)
    return field / max(float(field.std()), 1e-6)


def _ellipsoid(
    xyz: Coords,
    centre: tuple[float, float, float],
    radii: tuple[float, float, float],
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Implicit ellipsoid value (<1 inside); ``rng`` jitters centre by ~3 mm and radii by ~10%."""
    c, r = np.asarray(centre, float), np.asarray(radii, float)
    if rng is not None:
        c = c + rng.uniform(-3, 3, 3)
        r = r * rng.uniform(0.9, 1.1, 3)
    return sum(((a - ci) / ri) ** 2 for a, ci, ri in zip(xyz, c, r, strict=True))


def _largest(mask: np.ndarray, n: int = 1) -> np.ndarray:
    """Keep the ``n`` largest connected pieces, so each organ is one clean target (two kidneys)."""
    comp, count = ndimage.label(mask)
    if count <= n:
        return mask
    sizes = np.bincount(comp.ravel())[1:]
    return np.isin(comp, np.argsort(sizes)[::-1][:n] + 1)


def make_ct_phantom(seed: int) -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    """CT-like abdomen in HU (int16) with liver (1), spleen (2) and both kidneys (3) labelled (uint8)."""
    rng = np.random.default_rng(seed)
    xyz = _coords(CT_SHAPE, CT_SPACING, rng.uniform(-10, 10))
    x, y, _ = xyz
    wobble = 0.12 * _smooth_field(rng, xyz, (40.0, 80.0))  # irregular organ outlines
    bs = rng.uniform(0.95, 1.05, 2)
    body = np.broadcast_to(((x / (64 * bs[0])) ** 2 + (y / (52 * bs[1])) ** 2) < 1, CT_SHAPE)
    inner = np.broadcast_to(((x / (58 * bs[0])) ** 2 + (y / (46 * bs[1])) ** 2) < 1, CT_SHAPE)  # in the fat
    spine = np.broadcast_to(((x / 9) ** 2 + ((y - 32) / 9) ** 2) < 1, CT_SHAPE)
    lobes = [((-28, -2, 12), (24, 32, 24)), ((-8, -18, 18), (16, 14, 16)), ((-38, 15, 6), (12, 12, 14))]
    liver = np.minimum.reduce([_ellipsoid(xyz, c, r, rng) for c, r in lobes]) < 1 + wobble
    spleen = _ellipsoid(xyz, (38, 8, 20), (14, 22, 22), rng) < 1 + wobble
    kidney_f = np.minimum(
        _ellipsoid(xyz, (-30, 20, -24), (12, 17, 22), rng), _ellipsoid(xyz, (30, 20, -20), (12, 17, 22), rng)
    )
    hilum = np.minimum(_ellipsoid(xyz, (-18, 20, -24), (6, 7, 40)), _ellipsoid(xyz, (18, 20, -20), (6, 7, 40)))
    kidney = (kidney_f < 1 + wobble) & (hilum >= 1)

    hu = np.full(CT_SHAPE, -1000.0)
    hu[body] = 40.0  # abdominal wall muscle
    hu[inner] = -80.0  # visceral fat around the organs, as in most abdominal CT
    label = np.zeros(CT_SHAPE, np.uint8)
    kidney = _largest(kidney & inner & ~spine, 2)
    spleen = _largest(spleen & inner & ~spine & ~kidney)
    liver = _largest(liver & inner & ~spine & ~kidney & ~spleen)
    for value, mask, organ_hu in ((1, liver, 100.0), (2, spleen, 115.0), (3, kidney, 180.0)):  # portal venous phase
        hu[mask], label[mask] = organ_hu, value
    hu[kidney & (kidney_f < 0.35)] = 140.0  # medulla, still labelled kidney
    hu[spine] = 500.0
    hu = ndimage.gaussian_filter(hu, (0.7, 0.7, 0.4))  # partial-volume edges
    hu += 5.0 * _smooth_field(rng, xyz, (150.0, 300.0), 3)  # beam-hardening-like bias
    hu += rng.normal(0.0, rng.uniform(10, 20), CT_SHAPE)
    image = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    aff = _affine(
        CT_SHAPE,
        CT_SPACING,
        (-1, -1, 1),
        _rotation(rng.uniform(-5, 5)),
        (rng.uniform(-10, 10), rng.uniform(0, 40), rng.uniform(-200, -100)),
    )
    return _nifti(image, aff), _nifti(label, aff)


def make_mr_phantom(seed: int) -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    """MR-like head (int16, no HU) with a bright ellipsoid (1) and a darker lobed blob (2) labelled."""
    rng = np.random.default_rng(seed)
    xyz = _coords(MR_SHAPE, MR_SPACING, rng.uniform(-10, 10))
    x, y, z = xyz
    wobble = 0.12 * _smooth_field(rng, xyz, (40.0, 80.0))
    bs = rng.uniform(0.95, 1.05, 2)
    head_f = (x / (70 * bs[0])) ** 2 + (y / (82 * bs[1])) ** 2 + (z / 95) ** 2
    skull_f = (x / (65 * bs[0])) ** 2 + (y / (77 * bs[1])) ** 2 + (z / 90) ** 2
    brain_f = (x / (61 * bs[0])) ** 2 + (y / (73 * bs[1])) ** 2 + (z / 86) ** 2
    ventricles = np.minimum(_ellipsoid(xyz, (-7, 0, 5), (4, 18, 20)), _ellipsoid(xyz, (7, 0, 5), (4, 18, 20))) < 1
    bright = _ellipsoid(xyz, (25, -20, 5), (16, 20, 27), rng) < 1 + wobble
    dark_f = np.minimum(
        _ellipsoid(xyz, (-28, 25, -5), (18, 16, 24), rng), _ellipsoid(xyz, (-15, 38, 2), (12, 12, 18), rng)
    )
    dark = dark_f < 1 + wobble

    signal = np.zeros(MR_SHAPE)
    signal[head_f < 1] = 700.0  # scalp fat
    signal[skull_f < 1] = 80.0
    signal[brain_f < 1] = 380.0 + 30.0 * wobble[brain_f < 1]  # mild tissue heterogeneity
    signal[ventricles] = 120.0
    label = np.zeros(MR_SHAPE, np.uint8)
    bright = _largest(bright & (brain_f < 1) & ~ventricles)
    dark = _largest(dark & (brain_f < 1) & ~ventricles & ~bright)
    for value, mask, level in ((1, bright, 850.0), (2, dark, 190.0)):
        signal[mask], label[mask] = level, value
    signal = ndimage.gaussian_filter(signal, (0.6, 0.6, 0.4))
    signal *= 1.0 + 0.1 * _smooth_field(rng, xyz, (200.0, 400.0), 3)  # receive-coil bias
    sigma = rng.uniform(15, 30)
    noisy = np.hypot(signal + rng.normal(0, sigma, MR_SHAPE), rng.normal(0, sigma, MR_SHAPE))  # Rician
    image = np.clip(np.rint(noisy), 0, 4095).astype(np.int16)
    aff = _affine(
        MR_SHAPE,
        MR_SPACING,
        (1, -1, 1),
        _rotation(rng.uniform(-5, 5), rng.uniform(-8, 8)),
        (rng.uniform(-5, 5), rng.uniform(-20, 20), rng.uniform(0, 30)),
    )
    return _nifti(image, aff), _nifti(label, aff)


def make_cardiac_phantom(seed: int) -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    """Cine-MR-like short-axis heart stack (int16): bright LV (1) and RV (3) blood, the dark ring of
    myocardium (2) between them. A domain the click starter never saw: a ring, and thin 8 mm slices
    tapering to the apex."""
    rng = np.random.default_rng(seed)
    xyz = _coords(CARDIAC_SHAPE, CARDIAC_SPACING, rng.uniform(-30, 30))
    x, y, z = xyz
    wobble = 0.08 * _smooth_field(rng, xyz, (40.0, 80.0))
    depth = (z - z.min()) / (z.max() - z.min())  # 0 at the base, 1 at the apex
    cx, cy = rng.uniform(-12, 12, 2)
    taper = 1.0 - 0.6 * depth**2
    r_lv = rng.uniform(20, 28) * taper
    wall = rng.uniform(7, 11) * (1.0 - 0.3 * depth)
    r = np.hypot((x - cx) / rng.uniform(0.9, 1.1), y - cy) * (1 + wobble)
    lv = r < r_lv
    myo = (r >= r_lv) & (r < r_lv + wall)
    rv_f = _ellipsoid(xyz, (cx - 1.5 * (30 + 9), cy + 5, 0), (30, 22, 80), rng)
    rv = (rv_f < 1 + wobble) & (r >= r_lv + wall + 2) & (depth < rng.uniform(0.75, 0.9))
    body = ((x / 120) ** 2 + (y / 90) ** 2) < 1
    lungs = (_ellipsoid(xyz, (75, -10, 0), (35, 55, 200), rng) < 1) | (_ellipsoid(xyz, (-80, -5, 0), (30, 50, 200)) < 1)

    signal = np.zeros(CARDIAC_SHAPE)
    signal[np.broadcast_to(body, CARDIAC_SHAPE)] = 300.0  # chest wall and mediastinum
    signal[np.broadcast_to(body & ~((x / 112) ** 2 + (y / 82) ** 2 < 1), CARDIAC_SHAPE)] = 700.0  # fat
    signal[lungs & np.broadcast_to(body, CARDIAC_SHAPE)] = 40.0
    label = np.zeros(CARDIAC_SHAPE, np.uint8)
    blood = rng.uniform(700, 900)
    for value, mask, level in ((3, rv, blood), (2, myo, rng.uniform(150, 220)), (1, lv, blood)):
        signal[mask], label[mask] = level, value
    signal = ndimage.gaussian_filter(signal, (0.8, 0.8, 0.3))
    signal *= 1.0 + 0.15 * _smooth_field(rng, xyz, (150.0, 300.0), 3)  # surface-coil bias
    sigma = rng.uniform(15, 30)
    noisy = np.hypot(signal + rng.normal(0, sigma, CARDIAC_SHAPE), rng.normal(0, sigma, CARDIAC_SHAPE))
    image = np.clip(np.rint(noisy), 0, 4095).astype(np.int16)
    aff = _affine(CARDIAC_SHAPE, CARDIAC_SPACING, (1, -1, 1), _rotation(rng.uniform(-40, 40), 50.0), (0, 0, 0))
    return _nifti(image, aff), _nifti(label, aff)


def mni_dir() -> Path:
    """Folder of the MNI152 2009a templates that ship inside the nilearn wheel (no network)."""
    import nilearn

    return Path(nilearn.__file__).parent / "datasets" / "data"


def make_mni_brain() -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    """Real MNI152 T1 at 2 mm (2x2x2 block mean, float32) cropped to the brain; WM=1, GM=2 (uint8)."""
    imgs = {n: nib.load(mni_dir() / MNI_FILE.format(n)) for n in ("t1", "gm", "wm")}
    t1 = np.asanyarray(imgs["t1"].dataobj).astype(np.float32)
    nz = np.argwhere(t1 > 0)
    shape = np.asarray(t1.shape)
    lo = np.maximum(nz.min(0) - 4, 0)
    n = np.minimum((nz.max(0) + 5 - lo + 1) // 2, (shape - lo) // 2)  # whole 2-voxel blocks
    box = tuple(slice(a, a + 2 * b) for a, b in zip(lo, n, strict=True))

    def down(a: np.ndarray) -> np.ndarray:
        return a[box].reshape(n[0], 2, n[1], 2, n[2], 2).mean(axis=(1, 3, 5), dtype=np.float64)

    def prob(name: str) -> np.ndarray:
        a = np.asanyarray(imgs[name].dataobj).astype(np.float32)
        return down(a / (255.0 if a.max() > 1 else 1.0))

    wm, gm = prob("wm") > 0.5, prob("gm") > 0.5
    label = np.where(wm, 1, np.where(gm, 2, 0)).astype(np.uint8)
    step = np.diag([2.0, 2.0, 2.0, 1.0])
    step[:3, 3] = lo + 0.5  # block centre in source voxels
    aff = imgs["t1"].affine @ step
    return _nifti(down(t1).astype(np.float32), aff), _nifti(label, aff)


ASYMMETRIC_SHAPE, ASYMMETRIC_SPACING = (96, 80, 24), (1.0, 1.2, 3.0)
ASYMMETRIC_LABELS: dict[str, int] = {"target": 1, "decoy": 2}


def make_asymmetric_phantom(modality: str, flips: tuple[int, int, int]) -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    """A voxel-order check: a target blob (1) off-centre in all three axes and a decoy (2) at its mirror
    image through the centre. Any flipped axis moves a click on the target into background or onto the
    decoy. ``flips`` with an odd number of -1 give a left-handed affine, whose slices DICOM readers
    order the other way round."""
    xyz = _coords(ASYMMETRIC_SHAPE, ASYMMETRIC_SPACING, 0.0)
    x, y, _ = xyz
    body = np.broadcast_to((x / 44) ** 2 + (y / 44) ** 2 < 1, ASYMMETRIC_SHAPE)
    target = (_ellipsoid(xyz, (20, 16, 18), (9, 8, 12)) < 1) & body
    decoy = (_ellipsoid(xyz, (-20, -16, -18), (9, 8, 12)) < 1) & body
    label = np.zeros(ASYMMETRIC_SHAPE, np.uint8)
    label[target], label[decoy] = 1, 2
    rng = np.random.default_rng(7)
    if modality == "CT":
        levels, noise, dtype = (-1000.0, 0.0, 120.0, 200.0), 12.0, np.int16
    else:
        levels, noise, dtype = (0.0, 300.0, 800.0, 550.0), 20.0, np.uint16
    value = np.full(ASYMMETRIC_SHAPE, levels[0])
    value[body], value[target], value[decoy] = levels[1], levels[2], levels[3]
    value = ndimage.gaussian_filter(value, 0.6) + rng.normal(0.0, noise, ASYMMETRIC_SHAPE)
    aff = _affine(ASYMMETRIC_SHAPE, ASYMMETRIC_SPACING, flips, _rotation(8.0, 5.0), (5.0, -10.0, 40.0))
    return _nifti(np.rint(value).clip(levels[0]).astype(dtype), aff), _nifti(label, aff)


def _nifti(data: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    """NIfTI with matching qform/sform (scanner code) so every reader agrees on the geometry."""
    img = nib.Nifti1Image(data, affine)
    img.set_data_dtype(data.dtype)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return img


def write_sample_studies(out_dir: Path, n_ct: int = 3, n_mr: int = 2, seed: int = 0) -> list[str]:
    """Write ``studies/<id>.nii.gz`` (images the server serves), ``truth/<id>.nii.gz`` and
    ``truth/labels.json`` (id -> {name: value}). Phantom ``n`` uses seed ``seed + n``. Returns ids."""
    out_dir = Path(out_dir)
    studies, truth = out_dir / "studies", out_dir / "truth"
    studies.mkdir(parents=True, exist_ok=True)
    truth.mkdir(parents=True, exist_ok=True)
    makers = [(f"ct_phantom_{n:03d}", lambda s=seed + n: make_ct_phantom(s)) for n in range(n_ct)]
    makers += [(f"mr_phantom_{n:03d}", lambda s=seed + n: make_mr_phantom(s)) for n in range(n_mr)]
    makers.append(("mni152_brain", make_mni_brain))
    labels: dict[str, dict[str, int]] = {}
    for study_id, make in makers:
        image, label = make()
        atomic_write(studies / f"{study_id}.nii.gz", image.to_filename)
        atomic_write(truth / f"{study_id}.nii.gz", label.to_filename)
        labels[study_id] = study_labels(study_id)
    text = json.dumps(labels, indent=2) + "\n"
    atomic_write(truth / "labels.json", lambda p: p.write_text(text))
    return [study_id for study_id, _ in makers]


PHANTOMS = {"ct": make_ct_phantom, "mr": make_mr_phantom, "cardiac": make_cardiac_phantom}
#: The active-learning split: a pool to label (the click starter is sure on CT and MR, unsure on hearts)
#: and a hold-out set; phantom seeds never repeat between the two.
ACTIVE_LEARNING_SPLIT = {
    "pool": {"cardiac": range(0, 6), "ct": range(10, 13), "mr": range(10, 13)},
    "holdout": {"cardiac": range(100, 102), "ct": range(110, 111), "mr": range(110, 111)},
}


def write_labelled_studies(folder: Path, seeds: dict[str, range]) -> list[str]:
    """Phantoms in the MONAI Label studies layout: ``<id>.nii.gz`` at the top, the ground truth under
    ``labels/final/<id>.nii.gz``; ids are ``<kind>_<seed>``. Returns the ids."""
    final = Path(folder) / "labels" / "final"
    final.mkdir(parents=True, exist_ok=True)
    ids = []
    for kind, kind_seeds in seeds.items():
        for seed in kind_seeds:
            image, label = PHANTOMS[kind](seed)
            study_id = f"{kind}_{seed:03d}"
            atomic_write(Path(folder) / f"{study_id}.nii.gz", image.to_filename)
            atomic_write(final / f"{study_id}.nii.gz", label.to_filename)
            ids.append(study_id)
    return ids
