"""Build the anchor set (``lib/samlabel/assets/anchor_set.npz``) the trainer's gate validates on.

CT and MR phantoms from seeds no other split uses (training 1000+, hold-out 2000+, samples 0+): for the
``validate`` part, the largest slice of every object of two CT and two MR phantoms; for the ``replay``
part, three labelled slices of one more CT and MR phantom each. Images are stored normalised as the
server would normalise them (``configs/app.yaml``'s intensity defaults), fp16, with their labels.
Deterministic: the same command writes the same arrays.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from samlabel.evaluation.metrics import largest_slice
from samlabel.inference.geometry import volume_slice
from samlabel.inference.objects import label_objects
from samlabel.inference.preprocess import normalize_volume
from samlabel.tools.sample_data import make_ct_phantom, make_mr_phantom
from samlabel.training.anchor import ANCHOR_FILE, load_anchor_set

VALIDATE_SEEDS = {"ct": (3000, 3001, 3002), "mr": (3000, 3001, 3002)}
REPLAY_SEEDS = {"ct": (3100, 3101, 3102), "mr": (3100, 3101, 3102)}
PHANTOMS = {"ct": make_ct_phantom, "mr": make_mr_phantom}


def anchor_slices() -> list[tuple[str, str, np.ndarray, np.ndarray]]:
    """``(name, split, image01, label)`` per slice."""
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
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ANCHOR_FILE, help="default: the shipped asset")
    args = parser.parse_args(argv)
    rows = anchor_slices()
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
