"""Dice of the served model per prompt kind (box, 1/3/5 simulated clicks, sam_3d from an roi) on
phantoms and the MNI brain generated with seeds the shipped sample studies do not use.

    scripts/prompt_accuracy [--out results/prompt_accuracy] [--model litemedsam]
Writes OUT.json (per case and mean) and OUT.png. OUT is relative to the working directory (the
repository's root when run as scripts/prompt_accuracy).
"""

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from samlabel.config import load_app_config, load_model_config
from samlabel.evaluation.metrics import box_dice, click_dice, largest_slice, roi_volume_dice, targets
from samlabel.inference.engine import SamEngine
from samlabel.inference.preprocess import normalize_volume
from samlabel.inference.propagation import PropagationSettings
from samlabel.tools.sample_data import LABELS, make_ct_phantom, make_mni_brain, make_mr_phantom


def cases(seed: int):
    for n in range(2):
        yield f"ct_phantom_seed{seed + n}", LABELS["ct"], make_ct_phantom(seed + n)
    yield f"mr_phantom_seed{seed}", LABELS["mr"], make_mr_phantom(seed)
    yield "mni152_brain", LABELS["mni"], make_mni_brain()


def main(argv: list[str] | None = None) -> int | None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="results/prompt_accuracy")
    parser.add_argument("--model", default="litemedsam")
    parser.add_argument("--seed", type=int, default=100)
    parser.add_argument("--adapter", default="default", help="default (the shipped one), none, or a file")
    args = parser.parse_args(argv)

    cfg = load_app_config({"model": args.model, "adapter": args.adapter})
    engine = SamEngine(load_model_config(cfg.model), cfg)
    settings = PropagationSettings.from_config(cfg)
    rows, began = [], time.time()
    for name, labels, (image, label) in cases(args.seed):
        volume01 = normalize_volume(np.asarray(image.dataobj), **cfg.intensity)
        for organ, truth in targets(np.asarray(label.dataobj), labels).items():
            k = largest_slice(truth)
            clicks = click_dice(engine, volume01, truth, k, 5)
            row = {
                "case": name,
                "target": organ,
                "slice": k,
                "box": box_dice(engine, volume01, truth, k),
                "click_1": clicks[0],
                "click_3": clicks[2],
                "click_5": clicks[4],
                "roi_3d": roi_volume_dice(engine, volume01, truth, settings),
            }
            rows.append(row)
            print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)

    metrics = ["box", "click_1", "click_3", "click_5", "roi_3d"]
    mean = {m: float(np.mean([r[m] for r in rows])) for m in metrics}
    report = {
        "model": engine.version,
        "device": str(engine.device),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "seconds": round(time.time() - began, 1),
        "propagation": vars(settings),
        "mean": mean,
        "cases": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(metrics, [mean[m] for m in metrics], color=["#4c72b0", "#dd8452", "#dd8452", "#dd8452", "#55a868"])
    for x, m in enumerate(metrics):
        ax.scatter([x] * len(rows), [r[m] for r in rows], color="k", s=8, zorder=3)
    ax.set_ylim(0, 1)
    ax.set_ylabel("Dice")
    ax.set_title(f"{engine.version}: Dice by prompt ({len(rows)} targets, dots = targets)")
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)
    print(json.dumps(mean, indent=2))


if __name__ == "__main__":
    sys.exit(main())
