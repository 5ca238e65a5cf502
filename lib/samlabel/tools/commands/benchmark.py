"""Speed benchmark: samlabel's server side by side with what a user would otherwise run.

    scripts/benchmark [--out results/benchmark] [--quick]
    scripts/benchmark --gpu --out results/benchmark_gpu   # on a CUDA GPU (under 8 minutes)

On the same CT-like 256² volumes, in one run:
  (a) segment-anything's SamPredictor calling set_image on every click (LiteMedSAM and ViT-B@1024);
  (b) MONAI Label 0.8.5's own SAM2 2-D infer task (SAM2.1 hiera-large, random weights: none ship);
  (c) samlabel through the REST API: first click on a slice, further clicks on it, the first click on
      a neighbouring slice after the background prefetch, sam_3d over 40/64/128 slices (cold, after a
      click, cached), one fine-tuning round of 5 saved labels, resident memory over 500 clicks on 5
      volumes; for LiteMedSAM and for ViT-B@1024 (random weights, click paths only on CPU).
Writes OUT/benchmark.json (per path p50/p95/n of the round trip, MONAI Label's server latency and the
SAM part, the encoder runs per request; ratios to (a) and (b); device and versions) and OUT/benchmark.png.
OUT is relative to the working directory (the repository's root when run as scripts/benchmark).
"""

import argparse
import json
import logging
import shutil
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from samlabel.config import load_app_config, load_model_config
from samlabel.inference.preprocess import normalize_volume
from samlabel.model.registry import build_litemedsam, build_model, load_checkpoint
from samlabel.model.weights import resolve_weights
from samlabel.tools.local_server import start_server, stop_server
from samlabel.tools.peers import time_monailabel_sam2, time_sam_predictor
from samlabel.tools.speed_benchmark import (
    BENCHMARK_DEPTHS,
    ROUND_LABELS,
    benchmark_specs,
    click_paths,
    encoder_throughput,
    environment,
    fine_tuning_round,
    memory_over_clicks,
    ms_percentiles,
    ratios,
    run_with_server,
    volume_paths,
    write_volumes,
)

logger = logging.getLogger("benchmark")


def peer_clicks(label: np.ndarray, n: int) -> list[tuple[int, int, int]]:
    slices = np.linspace(2, label.shape[2] - 3, n).astype(int)
    clicks = []
    for k in slices:
        rows, cols = np.nonzero(label[:, :, k])
        clicks.append((int(k), int(rows.mean()), int(cols.mean())))
    return clicks


def summary(seconds: list[float], **extra) -> dict:
    return {"n": len(seconds), **ms_percentiles(seconds), **extra}


def run_peers(args, volume_path: Path, label: np.ndarray, work: Path) -> dict:
    volume01 = normalize_volume(np.asarray(nib.load(volume_path).dataobj))
    slices = [volume01[:, :, k] for k in range(volume01.shape[2])]
    peers = {}
    lite = build_litemedsam()
    load_checkpoint(lite, resolve_weights(load_model_config("litemedsam").weights))
    peers["sam_predictor_litemedsam"] = summary(time_sam_predictor(lite, slices, peer_clicks(label, args.peer_clicks)))
    if "vit_b" in args.models:
        vit_b = build_model("vit_b", 1024)
        seconds = time_sam_predictor(vit_b, slices, peer_clicks(label, max(2, args.peer_clicks // 3)))
        peers["sam_predictor_vit_b"] = summary(seconds, weights="random")
        del vit_b
    if args.sam2:
        result = time_monailabel_sam2(str(volume_path), peer_clicks(label, max(2, args.peer_clicks // 3)), str(work))
        peers["monailabel_sam2"] = summary(result.pop("seconds"), **result)
        shutil.rmtree(work / "sam2_model", ignore_errors=True)  # a 900 MB random checkpoint
    return peers


def litemedsam_server(args, studies: Path, labels: dict, truths: dict, out: Path) -> dict:
    def body(timer, client, url, proc):
        timer.infer("", "sam_2d", "warmup", {"foreground": [[128, 128, 1]], "slice": 1})  # first-request costs
        timer.server.wait_for_background()
        clicks_image = "clicks"
        depth = labels[clicks_image].shape[2]
        slices = [int(k) for k in np.linspace(8, depth - 9, args.first_clicks)]
        click_paths(timer, clicks_image, labels[clicks_image], slices, args.further)
        volumes = [
            volume_paths(timer, f"cold_{d}", f"warm_{d}", labels[f"cold_{d}"], labels[f"warm_{d}"]) for d in args.depths
        ]
        memory_images = {k: labels[k] for k in list(labels)[1 : 1 + args.memory_volumes]}
        memory = memory_over_clicks(timer, proc.pid, memory_images, args.memory_clicks)
        tuning = fine_tuning_round(client, truths, timeout=3600) if args.train_steps != 0 else None
        return {"paths": timer.summary(), "sam_3d": volumes, "memory": memory, "fine_tuning": tuning}

    conf = ["train_every", "5"]
    if args.train_steps:  # else the app's own recipe
        conf += ["train.max_steps", str(args.train_steps), "train.val_every", str(args.train_steps)]
    conf += ["model_dir", str(studies.parent / "model_litemedsam")]  # its own adapter versions
    conf += ["precision", args.precision]
    if args.gpu:
        conf += ["device", "cuda"]  # encoder_batch is 16 on CUDA by default
    start = lambda s, log: start_server(s, log, *conf)  # noqa: E731
    return run_with_server(start, stop_server, studies, out / "server_litemedsam.log", body)


def vit_b_server(args, labels: dict, work: Path, out: Path) -> dict:
    studies = work / "vit_b_studies"
    vit_labels = write_volumes(studies, {"clicks_vit_b": (16, 5)})
    checkpoint = work / "vit_b_random.pth"
    torch.save(build_model("vit_b", 1024).state_dict(), checkpoint)
    conf = ["model", "vit_b", "checkpoint", str(checkpoint), "prefetch_slices", "2", "train_every", "0"]
    conf += ["model_dir", str(work / "model_vit_b")]

    def body(timer, client, url, proc):
        click_paths(timer, "clicks_vit_b", vit_labels["clicks_vit_b"], [5, 10][: args.first_clicks], args.further)
        return {"paths": timer.summary(), "runtime": timer.engine()["runtime"]}

    try:
        start = lambda s, log: start_server(s, log, *conf)  # noqa: E731
        return run_with_server(start, stop_server, studies, out / "server_vit_b.log", body)
    finally:
        checkpoint.unlink(missing_ok=True)


def save(result: dict, out: Path) -> None:
    """Write benchmark.json after each phase (a long run that fails late keeps what it measured), with
    each of our paths' speed-up over the peers."""
    for model in ("litemedsam", "vit_b"):
        if model not in result:
            continue
        naive = result["peers"].get(f"sam_predictor_{model}")
        if naive:
            result[model]["speedup_vs_sam_predictor"] = ratios(result[model]["paths"], naive["p50_ms"])
        if "monailabel_sam2" in result["peers"]:
            sam2 = result["peers"]["monailabel_sam2"]["p50_ms"]
            result[model]["speedup_vs_monailabel_sam2"] = ratios(result[model]["paths"], sam2)
    (out / "benchmark.json").write_text(json.dumps(result, indent=2))


def plot(result: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (bars, memory) = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [2.2, 1]})
    names, values, colours = [], [], []
    for name, peer in result["peers"].items():
        names.append(name.replace("_", " "))
        values.append(peer["p50_ms"] / 1000)
        colours.append("tab:grey")
    for model in ("litemedsam", "vit_b"):
        for path, r in result.get(model, {}).get("paths", {}).items():
            names.append(f"ours {model}: {path.replace('_', ' ')}")
            values.append(r["round_trip"]["p50_ms"] / 1000)
            colours.append("tab:blue" if model == "litemedsam" else "tab:orange")
    bars.barh(names, values, color=colours)
    bars.set_xscale("log")
    bars.invert_yaxis()
    bars.set_xlabel("seconds per request, p50 (log scale; round trip for ours)")
    bars.tick_params(axis="y", labelsize=7)
    bars.set_title(f"{result['environment']['device']}", fontsize=9)
    trace = result.get("litemedsam", {}).get("memory", {}).get("trace", [])
    if trace:
        memory.plot([t["clicks"] for t in trace], [t["rss_mb"] for t in trace], "o-", label="server RSS")
        memory.plot([t["clicks"] for t in trace], [t["cache_mb"] for t in trace], "s-", label="embedding cache")
        memory.axhline(result["litemedsam"]["memory"]["cache_max_mb"], color="k", ls="--", lw=1, label="cache limit")
        memory.set_xlabel("clicks (5 volumes)")
        memory.set_ylabel("MiB")
        memory.legend(fontsize=8)
        memory.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


ROUND_PHASES = {  # breakdown key -> the phase's name on the timeline, in the order they happen
    "start_up_seconds": "trainer start-up",
    "engine_seconds": "engine",
    "embeddings_seconds": "embeddings",
    "steps_seconds": "training steps",
    "validation_seconds": "validation + gate",
    "publish_seconds": "publish",
    "served_after_publish_seconds": "until served",
}


def plot_round(tuning: dict, out: Path) -> None:
    """The fine-tuning round as a timeline: from the last save to the first infer the new version answers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 2.0))
    start = 0.0
    for (key, name), colour in zip(ROUND_PHASES.items(), plt.get_cmap("tab10").colors, strict=False):
        width = tuning["breakdown"][key]
        ax.barh(0, width, left=start, color=colour, label=f"{name} {width:.1f} s")
        start += width
    runs = tuning["breakdown"].get("encoder_runs")
    ax.set(yticks=[], xlabel="seconds after the label that starts the run was saved", xlim=(0, start * 1.02))
    ax.set_title(
        f"save -> new version served: {tuning['seconds']:.0f} s ({tuning['labels']} labels"
        + (f", {runs} encoder runs)" if runs is not None else ")"),
        fontsize=10,
    )
    ax.legend(ncol=4, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.4), frameon=False)
    fig.savefig(out, dpi=120, bbox_inches="tight")


def main(argv: list[str] | None = None) -> int | None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("results/benchmark"))
    parser.add_argument("--models", nargs="+", default=["litemedsam", "vit_b"], choices=["litemedsam", "vit_b"])
    parser.add_argument("--depths", nargs="+", type=int, default=BENCHMARK_DEPTHS, help="sam_3d volume depths")
    parser.add_argument("--first-clicks", type=int, default=4, help="slices that get a first click")
    parser.add_argument("--further", type=int, default=5, help="further clicks per slice, per stage")
    parser.add_argument("--memory-clicks", type=int, default=500)
    parser.add_argument("--memory-volumes", type=int, default=5)
    parser.add_argument(
        "--train-steps", type=int, default=None, help="steps of the fine-tuning round (default: the app's; 0: skip)"
    )
    parser.add_argument("--peer-clicks", type=int, default=9)
    parser.add_argument("--throughput-passes", type=int, default=3, help="encoder passes timed (x4 for LiteMedSAM)")
    parser.add_argument("--no-sam2", dest="sam2", action="store_false", help="skip MONAI Label's SAM2 peer")
    parser.add_argument(
        "--precision", choices=["fp32", "bf16"], default="fp32", help="the server's (bf16 on CPU: OpenVINO's encoder)"
    )
    parser.add_argument("--quick", action="store_true", help="a minutes-long smoke run (tests)")
    parser.add_argument(
        "--gpu", action="store_true", help="on a CUDA GPU, in under 8 minutes: bf16, batched encoder, a 5-label round"
    )
    args = parser.parse_args(argv)
    if args.gpu:
        if not torch.cuda.is_available():
            parser.error("--gpu needs a CUDA GPU, and torch sees none here")
        args.models, args.depths, args.first_clicks, args.further = ["litemedsam"], [40, 128], 2, 3
        args.memory_clicks, args.memory_volumes, args.peer_clicks, args.sam2 = 0, 1, 2, False
        args.precision = "bf16"
    if args.quick:
        args.models, args.depths, args.first_clicks, args.further = ["litemedsam"], [12], 1, 2
        args.memory_clicks, args.memory_volumes, args.train_steps, args.peer_clicks, args.sam2 = 20, 2, 0, 2, False
        args.throughput_passes = 1
    if args.train_steps != 0 and len(args.depths) < 2:  # the round saves the last 5 of 2 + 2 per depth volumes
        parser.error("the fine-tuning round saves 5 labels, which needs at least 2 --depths (or --train-steps 0)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="samlabel-benchmark-"))
    try:
        specs = benchmark_specs(args.depths)
        studies = work / "studies"
        labels = write_volumes(studies, specs, truth_dir=work / "truth")
        truths = {image_id: work / "truth" / f"{image_id}.nii.gz" for image_id in list(specs)[-ROUND_LABELS:]}

        cfg = load_app_config({})
        result = {
            "environment": environment(),
            "config": {
                "volumes": {k: [256, 256, d] for k, (d, _) in specs.items()},
                "runtime": cfg.runtime,
                "precision": args.precision,
                "prefetch_slices": cfg.prefetch_slices,
                "cache_mb": cfg.cache_mb,
                "train_steps": args.train_steps,
                "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            },
        }
        if not torch.cuda.is_available():
            result["gpu"] = "not measured: no GPU on this machine; the same command on one measures it"
        logger.info("encoder throughput")
        result["encoder_throughput"] = {
            "litemedsam": encoder_throughput("litemedsam", 256, passes=args.throughput_passes * 4, batch=64),
        }
        if "vit_b" in args.models:
            result["encoder_throughput"]["vit_b"] = encoder_throughput("vit_b", 1024, args.throughput_passes, 16)
        logger.info("peers")
        result["peers"] = run_peers(args, studies / "clicks.nii.gz", labels["clicks"], work)
        save(result, args.out)
        if "vit_b" in args.models:
            logger.info("samlabel + ViT-B@1024 (random weights)")
            result["vit_b"] = vit_b_server(args, labels, work, args.out)
            save(result, args.out)
        logger.info("samlabel + LiteMedSAM")
        result["litemedsam"] = litemedsam_server(args, studies, labels, truths, args.out)
        save(result, args.out)
        plot(result, args.out / "benchmark.png")
        if result["litemedsam"]["fine_tuning"]:
            plot_round(result["litemedsam"]["fine_tuning"], args.out / "round.png")
        print(json.dumps({m: result[m]["paths"] for m in ("litemedsam", "vit_b") if m in result}, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
