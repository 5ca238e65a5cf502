"""Load test: concurrent simulated annotators on one server while a fine-tuning run is in progress.

    scripts/load_test [--annotators 8] [--requests 50] [--out results/load]

Starts a real server on three CT phantoms, saves two ground-truth labels, starts a fine-tuning run,
then every annotator (a thread with its own MONAI Label client) sends its clicks on its own image,
organ and slice while /info is polled every 0.25 s. Writes OUT/load.json: errors, wrong answers
(cross-talk), p50/p95 of the infer round trip and of /info, the training states seen meanwhile.
Exits 1 if any request failed or was wrong, or /info took 1 s or more at p95 (the maximum is reported).
OUT is relative to the working directory (the repository's root when run as scripts/load_test).
"""

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from samlabel.tools.load_test import annotators, run_load
from samlabel.tools.local_server import start_server, stop_server
from samlabel.tools.rest import Server
from samlabel.tools.sample_data import make_ct_phantom
from samlabel.tools.speed_benchmark import environment

ORGANS = {"liver": 1, "spleen": 2}
INFO_LIMIT_MS = 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--annotators", type=int, default=8)
    parser.add_argument("--requests", type=int, default=50, help="requests per annotator")
    parser.add_argument("--out", type=Path, default=Path("results/load"))
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="samlabel-load-"))
    studies, truths = work / "studies", {}
    studies.mkdir()
    for seed in range(3):
        image, label = make_ct_phantom(seed)
        nib.save(image, studies / f"ct_{seed}.nii.gz")
        nib.save(label, work / f"truth_{seed}.nii.gz")
        truths[f"ct_{seed}"] = np.asarray(label.dataobj)
    conf = ["labels", "liver,spleen,kidney", "model_dir", str(work / "model"), "train_every", "0"]
    proc, url = start_server(studies, work / "server.log", *conf)
    try:
        server = Server.at(url, tmpdir=work)
        for seed in range(2):
            server.client.save_label(f"ct_{seed}", str(work / f"truth_{seed}.nii.gz"))
        server.start_training({"max_steps": 100000, "val_every": 100000})
        while server.train_status().get("status") != "RUNNING":
            time.sleep(0.5)
        team = annotators(truths, ORGANS, args.annotators)
        summary = run_load(url, team, args.requests, work / "clients")
        summary["training_at_end"] = server.train_status().get("status")
        server.stop_training()
    finally:
        stop_server(proc)
    summary["info_limit_ms"] = INFO_LIMIT_MS
    summary["environment"] = environment()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "load.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: summary[k] for k in ("requests", "seconds", "infer_ms", "info_ms")}, indent=2))
    print(f"errors {len(summary['errors'])}, wrong {len(summary['wrong'])}; written to {args.out / 'load.json'}")
    failed = summary["errors"] or summary["wrong"] or summary["info_failures"]
    failed = failed or summary["info_ms"].get("p95", 0) >= INFO_LIMIT_MS
    shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
