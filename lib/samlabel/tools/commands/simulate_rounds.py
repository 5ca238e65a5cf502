"""Simulate active-learning rounds: a strategy picks, a simulated annotator clicks and saves, the server
fine-tunes, the hold-out set shows what was learned.

    scripts/simulate_rounds --data DIR --holdout DIR --rounds K --per-round N \
        --strategy random sam_uncertainty --out OUTDIR [--server-conf train.max_steps 40 ...]
    scripts/simulate_rounds --server URL --data DIR --holdout DIR ... --strategy NAME

DIR and the hold-out DIR have the MONAI Label studies layout: images at the top, ground truth of the
same names in labels/final/ (`scripts/make_sample_data --active-learning data/active_learning` writes
one). Without --server, each strategy gets a fresh local server (this app, fresh adapter versions,
train_every N) over a copy of DIR's images without their labels. With --server, that server must
serve DIR's images unlabelled, and one strategy is run.

Writes OUTDIR/rounds.json (per strategy and round: images picked, clicks per image, hold-out Dice@1,
Dice@3, NoC@85, adapter version, training time) and OUTDIR/rounds.png (the curves of every strategy).
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from monailabel.client import MONAILabelClient

from samlabel.tools.local_server import start_server, stop_server
from samlabel.tools.round_simulation import simulate_rounds
from samlabel.tools.server_evaluation import MAX_CLICKS, studies_cases


def run_with_own_server(args, pool, holdout, strategy: str, work: Path) -> dict:
    """A fresh server over an unlabelled copy of the pool's images, stopped afterwards."""
    studies = work / strategy / "studies"
    studies.mkdir(parents=True)
    for case in pool:
        shutil.copy(case.image, studies / case.image.name)
    conf = ["model_dir", str(work / strategy / "model"), "train_every", str(args.per_round), *args.server_conf]
    proc, url = start_server(studies, work / strategy / "server.log", *conf)
    try:
        return run(url, args, pool, holdout, strategy, work / strategy)
    finally:
        stop_server(proc)


def run(url: str, args, pool, holdout, strategy: str, tmp: Path) -> dict:
    client = MONAILabelClient(url, tmpdir=str(tmp))

    def report(record: dict) -> None:
        print(json.dumps({strategy: {k: record[k] for k in ("round", "holdout", "mean_clicks_per_image")}}), flush=True)

    result = simulate_rounds(
        client, pool, holdout, args.rounds, args.per_round, strategy, on_round=report, max_clicks=args.max_clicks
    )
    print(json.dumps({strategy: {"final holdout": result["rounds"][-1]["holdout"]}}), flush=True)
    return result


def plot(report: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for name, result in report["strategies"].items():
        rounds = result["rounds"]
        labelled = [sum(len(r["images"]) for r in rounds[:i]) for i in range(len(rounds))]
        axes[0].plot(labelled, [r["holdout"]["dice_1"] for r in rounds], "o-", label=name)
        axes[1].plot(labelled, [r["holdout"]["noc85"] for r in rounds], "o-", label=name)
        worked = [r for r in rounds if r["images"]]
        axes[2].plot([r["round"] for r in worked], [r["mean_clicks_per_image"] for r in worked], "o-", label=name)
    axes[0].set(xlabel="images labelled", ylabel="hold-out Dice after 1 click", ylim=(0, 1.02))
    axes[1].set(
        xlabel="images labelled",
        ylabel=f"hold-out NoC@85 (clicks, capped at {report['settings']['max_clicks']})",
    )
    axes[2].set(xlabel="round", ylabel="clicks per picked image (annotation effort)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("samlabel active-learning rounds: simulated annotator, server fine-tuning after each round")
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main(argv: list[str] | None = None) -> int | None:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", help="a running server over DIR's images (default: start one per strategy)")
    parser.add_argument("--data", type=Path, required=True, help="the pool: images + labels/final/ ground truth")
    parser.add_argument("--holdout", type=Path, required=True, help="hold-out images + labels/final/")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--per-round", type=int, default=3)
    parser.add_argument("--strategy", nargs="+", default=["random", "sam_uncertainty"])
    parser.add_argument(
        "--max-clicks", type=int, default=MAX_CLICKS, help="clicks per object at most, annotating and on the hold-out"
    )
    parser.add_argument(
        "--server-conf", nargs="*", default=[], metavar="KEY VALUE", help="--conf pairs for the servers it starts"
    )
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.server and len(args.strategy) > 1:
        parser.error("a given --server can run one strategy (its labels are spent); omit --server to compare")
    if len(args.server_conf) % 2:
        parser.error("--server-conf takes KEY VALUE pairs")

    pool, holdout = studies_cases(args.data), studies_cases(args.holdout)
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="samlabel-rounds-"))
    began = time.time()
    report = {
        "command": " ".join(["scripts/simulate_rounds", *argv]),
        "pool": [c.image_id for c in pool],
        "holdout": [c.image_id for c in holdout],
        "settings": {
            "rounds": args.rounds,
            "per_round": args.per_round,
            "max_clicks": args.max_clicks,
            "server_conf": args.server_conf,
        },
        "device": "see the server log" if args.server else f"this machine ({os.cpu_count()} cores, no GPU unless cuda)",
        "strategies": {},
    }
    for strategy in args.strategy:
        if args.server:
            report["strategies"][strategy] = run(args.server, args, pool, holdout, strategy, work)
        else:
            report["strategies"][strategy] = run_with_own_server(args, pool, holdout, strategy, work)
        report["minutes"] = round((time.time() - began) / 60, 1)
        (args.out / "rounds.json").write_text(json.dumps(report, indent=2))
        plot(report, args.out / "rounds.png")
    print(f"wrote {args.out / 'rounds.json'} and {args.out / 'rounds.png'}")


if __name__ == "__main__":
    sys.exit(main())
