"""Build the anchor set (``lib/samlabel/assets/anchor_set.npz``) the trainer's gate validates on.

The domains the shipped click adapter was trained on: CT and MR phantoms, and the real split's training
CT (``clicks-v2`` trained on it). Phantoms from seeds no other split uses (training 1000+, hold-out 2000+,
samples 0+): for the ``validate`` part, the largest slice of every object of three CT and three MR
phantoms; for the ``replay`` part, three labelled slices of three other CT and MR phantoms each. The
real CT (``data/real`` from ``scripts/make_sample_data --real``; TotalSegmentator's masks, Apache-2.0):
``validate`` on two of the slices the click starter validated on and never trained on (its first 30),
``replay`` on three slices it trained on. Images are stored normalised as the server would normalise them
(``configs/app.yaml``'s intensity defaults), fp16, with their labels. Deterministic: the same command
writes the same arrays.

    scripts/make_anchor_set [--real data/real] [--out lib/samlabel/assets/anchor_set.npz]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from samlabel.evaluation.metrics import largest_slice
from samlabel.inference.geometry import volume_slice
from samlabel.inference.objects import label_objects
from samlabel.inference.preprocess import normalize_volume
from samlabel.tools.sample_data import make_ct_phantom, make_mr_phantom
from samlabel.tools.server_evaluation import studies_cases
from samlabel.training.anchor import ANCHOR_FILE, load_anchor_set

VALIDATE_SEEDS = {"ct": (3000, 3001, 3002), "mr": (3000, 3001, 3002)}
REPLAY_SEEDS = {"ct": (3100, 3101, 3102), "mr": (3100, 3101, 3102)}
PHANTOMS = {"ct": make_ct_phantom, "mr": make_mr_phantom}
REAL_CT = "ts_ct_abdomen_3mm"  # the real split's training CT
# validate: slices the click starter validated on, never trained on (train_click_starter.STARTER_VAL_SLICES)
REAL_KS = {"validate": (12, 26), "replay": (60, 84, 100)}


def real_ct_slices(real: Path) -> list[tuple[str, str, np.ndarray, np.ndarray]]:
    """``(name, split, image01, label)`` for the real training CT's anchor slices."""
    try:
        case = next(c for c in studies_cases(real / "train") if c.image_id == REAL_CT)
    except (FileNotFoundError, StopIteration):
        raise SystemExit(f"{real / 'train'} lacks {REAL_CT}: run scripts/make_sample_data --real first") from None
    volume01 = normalize_volume(np.asarray(nib.load(case.image).dataobj))
    label = np.asarray(nib.load(case.truth).dataobj)
    return [
        (f"realct_k{k}", split, volume_slice(volume01, k), volume_slice(label, k))
        for split, ks in REAL_KS.items()
        for k in ks
    ]


def anchor_slices(real: Path) -> list[tuple[str, str, np.ndarray, np.ndarray]]:
    """``(name, split, image01, label)`` per slice: the phantoms', then the real CT's."""
    rows = []
    for split, seeds in (("validate", VALIDATE_SEEDS), ("replay", REPLAY_SEEDS)):
        for modality, modality_seeds in seeds.items():
            for seed in modality_seeds:
                image, label = PHANTOMS[modality](seed)
                volume01 = normalize_volume(np.asarray(image.dataobj))
                label = np.asarray(label.dataobj)
                if split == "validate":
                    ks = sorted({largest_slice(mask) for _, mask in label_objects(label)})
                else:
                    labelled = np.flatnonzero(label.any(axis=(0, 1)))
                    ks = [int(k) for k in labelled[[len(labelled) // 4, len(labelled) // 2, 3 * len(labelled) // 4]]]
                for k in ks:
                    rows.append((f"{modality}{seed}_k{k}", split, volume_slice(volume01, k), volume_slice(label, k)))
    return rows + real_ct_slices(real)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--real", type=Path, default=Path("data/real"), help="the real split (make_sample_data --real)")
    parser.add_argument("--out", type=Path, default=ANCHOR_FILE, help="default: the shipped asset")
    args = parser.parse_args(argv)
    rows = anchor_slices(args.real)
    arrays = {}
    for i, (_, _, image01, label) in enumerate(rows):
        arrays[f"image_{i}"], arrays[f"label_{i}"] = image01.astype(np.float16), label.astype(np.uint8)
    names, splits = np.array([r[0] for r in rows]), np.array([r[1] for r in rows])
    np.savez_compressed(args.out, names=names, splits=splits, **arrays)
    anchor = load_anchor_set(len(rows), args.out)
    summary = {"file": str(args.out), "validate_targets": len(anchor.validate), "replay_slices": len(anchor.replay)}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
