"""Run the `sam_adapter` trainer from the command line on a MONAI Label studies folder.

The folder has the studies layout (images at the top, final labels with the same names under
labels/final/), exactly what `POST /train/sam_adapter` trains on inside the server. The run starts
from the version served from OUT_DIR and goes through the same publish gate.

    scripts/train --studies DIR [--steps 300] [--out-dir DIR] [--conf KEY VALUE ...]
Writes OUT_DIR/versions/ftNNN.pt (+ .json record) and OUT_DIR/train_stats.json; a server whose
model dir holds OUT_DIR serves the new version from its next request if the gate passed. The default
OUT_DIR, apps/samlabel/model/sam_adapter, is relative to the working directory (the repository's root
when run as scripts/train).
"""

import argparse
import json
import logging
import sys
from pathlib import Path

import yaml
from monailabel.datastore.local import LocalDatastore

from samlabel.adapters.choice import start_record
from samlabel.adapters.versions import AdapterVersions
from samlabel.config import load_app_config, load_model_config
from samlabel.training.task import SamAdapterTrain, TrainingEngines


def main(argv: list[str] | None = None) -> int | None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=Path, required=True)
    parser.add_argument("--out-dir", type=Path, default=Path("apps/samlabel/model/sam_adapter"))
    parser.add_argument("--steps", type=int, default=None, help="default: the train.max_steps of configs/app.yaml")
    parser.add_argument("--name", default="cli")
    parser.add_argument("--conf", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"))
    parser.add_argument(
        "--set",
        nargs=2,
        action="append",
        default=[],
        metavar=("KEY", "VALUE"),
        help="trainer request values, e.g. --set val_split 0.25 (keys: the train section of configs/app.yaml)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    cfg = load_app_config(dict(args.conf))
    model_cfg = load_model_config(cfg.model)
    versions = AdapterVersions(args.out_dir, start_record(cfg.adapter, model_cfg.adapter))
    task = SamAdapterTrain(str(args.out_dir), cfg, versions, TrainingEngines(model_cfg, cfg))
    request = {
        "name": args.name,
        **({"max_steps": args.steps} if args.steps else {}),
        **{k: yaml.safe_load(v) for k, v in args.set},
    }
    stats = task(request, LocalDatastore(str(args.studies), extensions=("*.nii.gz", "*.nii")))
    keys = ("version", "gate", "reason", "served", "before", "best", "trainable_share", "seconds")
    print(json.dumps({k: stats.get(k) for k in keys}, indent=2))


if __name__ == "__main__":
    sys.exit(main())
