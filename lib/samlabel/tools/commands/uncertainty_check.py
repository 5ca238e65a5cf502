"""Does SAM's uncertainty rank images by the annotation effort they really need?

For every image of a labelled folder (MONAI Label layout: images + labels/final/), computes the
uncertainty signals of samlabel.inference.uncertainty (what sam_uncertainty scores) and the effort the simulated
annotator needs (clicks per image: every object to Dice 0.9 on its largest slice, at most 20), both
in-process with the served default model, then the Spearman rank correlation of each signal with the
effort. A useful active-learning score correlates positively.

    scripts/uncertainty_check [--data data/active_learning/pool] [--out results/uncertainty_check]
Writes OUT.json and OUT.png (effort against each signal). The default paths are relative to the working
directory (the repository's root when run as scripts/uncertainty_check).
"""

import argparse
import json
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy.stats import spearmanr

from samlabel.config import load_app_config, load_model_config
from samlabel.evaluation.metrics import click_dice, largest_slice
from samlabel.inference.engine import SamEngine
from samlabel.inference.preprocess import normalize_volume
from samlabel.inference.uncertainty import volume_uncertainty
from samlabel.tools.server_evaluation import MAX_CLICKS, noc, object_targets, studies_cases

SIGNALS = ("prompt_jitter", "multimask_disagreement", "predicted_iou_gap")


def plot(rows: list[dict], correlation: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(SIGNALS), figsize=(5 * len(SIGNALS), 4.2))
    kinds = sorted({r["image"].split("_")[0] for r in rows})
    for ax, signal in zip(axes, SIGNALS, strict=True):
        for kind in kinds:
            mine = [r for r in rows if r["image"].startswith(kind)]
            ax.scatter([r[signal] for r in mine], [r["clicks"] for r in mine], label=kind)
        ax.set(xlabel=signal, ylabel="clicks to label the image", title=f"Spearman {correlation[signal]['rho']:+.2f}")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main(argv: list[str] | None = None) -> int | None:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data/active_learning/pool"))
    parser.add_argument("--out", type=Path, default=Path("results/uncertainty_check"))
    args = parser.parse_args(argv)

    cfg = load_app_config({})
    engine = SamEngine(load_model_config(cfg.model), cfg)
    rows = []
    began = time.time()
    for case in studies_cases(args.data):
        volume01 = normalize_volume(np.asarray(nib.load(case.image).dataobj), **cfg.intensity)
        label = np.asarray(nib.load(case.truth).dataobj)
        clicks = 0
        for truth in object_targets(label).values():
            scores = click_dice(engine, volume01, truth, largest_slice(truth), MAX_CLICKS)
            clicks += noc(scores, 0.9)
        row = {"image": case.image_id, "clicks": clicks, **volume_uncertainty(engine, volume01)}
        rows.append(row)
        print(json.dumps({k: row[k] for k in ("image", "clicks", *SIGNALS, "seconds")}), flush=True)
    effort = [r["clicks"] for r in rows]
    correlation = {}
    for signal in SIGNALS:
        result = spearmanr([r[signal] for r in rows], effort)
        correlation[signal] = {"rho": round(float(result.statistic), 3), "p": round(float(result.pvalue), 4)}
    report = {
        "what": "Spearman correlation of each uncertainty signal with the clicks an image needs",
        "command": " ".join(["scripts/uncertainty_check", *argv]),
        "model_version": engine.version,
        "device": str(engine.device),
        "minutes": round((time.time() - began) / 60, 1),
        "correlation": correlation,
        "images": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    plot(rows, correlation, args.out.with_suffix(".png"))
    print(json.dumps(correlation, indent=2))


if __name__ == "__main__":
    sys.exit(main())
