"""Compare encoder-adapter kinds and the automatic first pass through real servers, on the shipped data.

    scripts/compare_adapters [--pool data/active_learning/pool] \
        [--holdout data/active_learning/holdout] [--steps 20] [--out results/adapter_kinds]

1. Train: the same `sam_adapter` run (scripts/train, train_parts adapters, same steps, batch, learning
   rate and seed) on the pool's labels for each kind, each starting from the shipped click adapter:
   `plain` (bottleneck), `sd_trans` (stacks of neighbouring slices), `hyp_adpt` (prompt-conditioned).
   Existing files under OUT/train/<kind>/ are reused (delete them to retrain); a run of another call
   in progress there (training.pid) is waited for.
2. Evaluate: one local server per row (`--conf adapter FILE`, over the pool so sam_auto has labels to
   learn from), the hold-out images sent as sessions, the standard simulated user
   (samlabel.tools.server_evaluation): Dice after 1, 3, 5 clicks with sam_2d (slice Dice) and sam_3d
   (volume Dice), and the round trip per request. The `auto` row is sam_auto (0 clicks) on the shipped
   adapter, then an annotator who keeps each proposed object with Dice >= 0.85 and clicks the others
   with sam_2d / sam_3d from scratch; "clicks saved" is NoC@85 without minus with the first pass.

Writes OUT/compare.json and OUT/compare.png. CPU: about an hour on 2 cores (HyP-Adpt re-encodes every
slice a request reaches, so its 3-D run stops at `--hyp-3d-clicks`). The default paths are relative to the
working directory (the repository's root when run as scripts/compare_adapters).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from monailabel.client import MONAILabelClient

from samlabel.tools.local_server import start_server, stop_server
from samlabel.tools.server_evaluation import (
    auto_then_clicks,
    evaluate_auto,
    evaluate_server,
    studies_cases,
)

KINDS = {"plain": "default", "sd_trans": "sd_trans", "hyp_adpt": "hyp_adpt"}  # kind -> --conf adapter
TRAINING_KEYS = ("metrics", "parent_metrics", "gate", "reason", "seconds")
LABELS = "label_1,label_2,label_3"  # the split's values; names do not matter here


def wait_for_other_run(pid_file: Path) -> None:
    """Another call of this script may be training this kind right now: wait for it."""
    while pid_file.is_file():
        try:
            os.kill(int(pid_file.read_text()), 0)
        except (ProcessLookupError, ValueError):
            pid_file.unlink(missing_ok=True)  # left by a run that died
            return
        print(f"waiting for the training run in {pid_file.parent}", flush=True)
        time.sleep(30)


def train(kind: str, args) -> Path:
    """The kind's adapter file, trained now unless it exists."""
    out = args.out / "train" / kind
    adapter = out / "versions" / "ft001.pt"
    wait_for_other_run(out / "training.pid")
    if adapter.is_file():
        print(f"{kind}: reusing {adapter}", flush=True)
        return adapter
    settings = {
        "train_parts": "adapters",
        "max_steps": args.steps,
        "train_batch_size": args.batch,
        "learning_rate": args.lr,
        "val_every": args.steps,
        "slice_step": args.slice_step,
        "seed": 0,
    }
    cmd = [sys.executable, "-m", "samlabel.tools.commands.train", "--studies", str(args.pool), "--out-dir", str(out)]
    cmd += ["--conf", "adapter", KINDS[kind], "--conf", "runtime", "torch"]
    for key, value in settings.items():
        cmd += ["--set", key, str(value)]
    out.mkdir(parents=True, exist_ok=True)
    began = time.time()
    with open(out / "train.log", "w") as log:
        run = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        (out / "training.pid").write_text(str(run.pid))
        if run.wait():
            raise SystemExit(f"{kind}: training failed, see {out / 'train.log'}")
    (out / "training.pid").unlink()
    print(f"{kind}: trained in {time.time() - began:.0f} s -> {adapter}", flush=True)
    return adapter


def row(name: str, adapter: str, args, cases, clicks_3d: int, auto: bool = False) -> dict:
    """One server with ``adapter``: sam_2d and sam_3d clicks (and sam_auto) on the hold-out cases."""
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        log = args.out / f"server_{name.split(' (')[0].replace(' ', '_')}.log"
        proc, url = start_server(
            args.pool, log, "adapter", adapter, "model_dir", str(work / "model"),
            "train_every", "0", "labels", LABELS, "prefetch_slices", "0",
        )  # fmt: skip
        try:
            client = MONAILabelClient(url, tmpdir=str(work))
            result = {"row": name, "adapter": adapter}
            result["sam_2d"] = evaluate_server(client, cases, "sam_2d", "clicks", args.clicks, (1, 3, 5), (0.85,))
            result["sam_3d"] = evaluate_server(client, cases, "sam_3d", "clicks", clicks_3d, (1, 3, 5), (0.85,))
            if auto:
                result["sam_auto"] = evaluate_auto(client, cases)
                result["auto_then_2d"] = auto_then_clicks(result["sam_auto"], result["sam_2d"], "2d")
                result["auto_then_3d"] = auto_then_clicks(result["sam_auto"], result["sam_3d"], "3d")
        finally:
            stop_server(proc)
    print(json.dumps({"row": name, **{k: v.get("mean") for k, v in result.items() if isinstance(v, dict)}}))
    return result


def table_line(name: str, two: dict, three: dict, r: dict, auto: bool) -> dict:
    m2, m3 = two["mean"], three["mean"]
    latency = {
        key: r[key]["latency_ms"]["round_trip"].get("p50") for key in ("sam_2d", "sam_3d", "sam_auto") if key in r
    }
    return {
        "row": name,
        "dice_2d": [m2.get(f"dice_{n}") for n in (0, 1, 3, 5)],
        "dice_3d": [m3.get(f"dice_{n}") for n in (0, 1, 3, 5)],
        "noc85_2d": m2.get("noc85"),
        "clicks_saved_2d": two.get("clicks_saved_per_object") if auto else None,
        "latency_ms_2d": latency["sam_2d"],
        "latency_ms_3d": latency["sam_3d"],
        "latency_ms_auto": latency.get("sam_auto") if auto else None,
    }


def table_rows(rows: list[dict]) -> list[dict]:
    """Per row: Dice after 0/1/3/5 clicks in 2-D and 3-D, NoC@85 (2-D), round trip p50 per request;
    the shipped adapter's row is followed by its automatic first pass (then clicks)."""
    out = []
    for r in rows:
        out.append(table_line(r["row"], r["sam_2d"], r["sam_3d"], r, auto=False))
        if "sam_auto" in r:
            out.append(table_line("automatic first pass + clicks", r["auto_then_2d"], r["auto_then_3d"], r, auto=True))
    return out


def plot(table: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    for t in table:
        for ax, key in zip(axes[:2], ("dice_2d", "dice_3d"), strict=True):
            xs = [n for n, v in zip((0, 1, 3, 5), t[key], strict=True) if v is not None]
            ax.plot(xs, [v for v in t[key] if v is not None], "o-", label=t["row"])
    for ax, title in zip(axes[:2], ("sam_2d: slice Dice", "sam_3d: volume Dice"), strict=True):
        ax.set(xlabel="clicks", ylabel="mean Dice", title=title, ylim=(0, 1.02), xticks=(0, 1, 3, 5))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower right")
    names = [
        t["row"].replace(" + clicks", "").replace(" (no encoder adapter)", "").replace(" ", "\n", 1) for t in table
    ]
    x = range(len(table))
    axes[2].bar([i - 0.2 for i in x], [t["latency_ms_2d"] or 0 for t in table], 0.4, label="sam_2d click")
    axes[2].bar([i + 0.2 for i in x], [t["latency_ms_3d"] or 0 for t in table], 0.4, label="sam_3d request")
    axes[2].set(yscale="log", ylabel="round trip p50 (ms)", title="latency per request")
    axes[2].set_xticks(list(x), names, fontsize=7)
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main(argv: list[str] | None = None) -> int | None:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pool", type=Path, default=Path("data/active_learning/pool"))
    parser.add_argument("--holdout", type=Path, default=Path("data/active_learning/holdout"))
    parser.add_argument("--out", type=Path, default=Path("results/adapter_kinds"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--slice-step", type=int, default=6)
    parser.add_argument("--clicks", type=int, default=5, help="simulated clicks per target (2-D and 3-D)")
    parser.add_argument("--hyp-3d-clicks", type=int, default=1, help="clicks per target for HyP-Adpt's sam_3d")
    parser.add_argument("--train-only", action="store_true")
    args = parser.parse_args(argv)
    if not args.pool.is_dir():
        raise SystemExit(f"{args.pool} missing: run scripts/make_sample_data --active-learning data/active_learning")
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    if args.train_only:
        for kind in KINDS:
            train(kind, args)
        return
    cases = studies_cases(args.holdout)
    rows = [row("shipped click adapter (no encoder adapter)", "default", args, cases, args.clicks, auto=True)]
    rows += [row("plain adapter", str(train("plain", args)), args, cases, args.clicks)]
    rows += [row("HyP-Adpt", str(train("hyp_adpt", args)), args, cases, args.hyp_3d_clicks)]
    rows += [row("SD-Trans", str(train("sd_trans", args)), args, cases, args.clicks)]
    training = {k: json.loads((args.out / "train" / k / "versions" / "ft001.json").read_text()) for k in KINDS}
    table = table_rows(rows)
    report = {
        "command": " ".join(["scripts/compare_adapters", *argv]),
        "device": "cpu",
        "cpu_threads": torch.get_num_threads(),
        "pool": str(args.pool),
        "holdout": str(args.holdout),
        "training": {k: {key: v.get(key) for key in TRAINING_KEYS} for k, v in training.items()},
        "table": table,
        "rows": rows,
    }
    (args.out / "compare.json").write_text(json.dumps(report, indent=2))
    plot(table, args.out / "compare.png")
    print(json.dumps(table, indent=2))
    print(f"wrote {args.out / 'compare.json'} and {args.out / 'compare.png'}")


if __name__ == "__main__":
    sys.exit(main())
