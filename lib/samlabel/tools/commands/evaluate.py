"""Evaluate a running samlabel server with the standard simulated user, through its REST API.

    scripts/evaluate --server http://127.0.0.1:8000 --data DIR \
        --model sam_2d [sam_3d] [sam_auto] --prompt clicks|box|clicks_3d|challenge|slice_boxes --out OUTDIR \
        [--versions ...]

DIR has the MONAI Label studies layout: images at the top, ground truth of the same file names in
labels/final/. Images the server does not hold are sent as sessions (the datastore is not changed).
Each connected object of each label value is one target. With several --model or --versions values
each combination is one run (versions are served one after another through /adapter/rollback, and
the version served before is served again at the end).

sam_auto is evaluated as "0 clicks" (one request per image, no prompt); run with sam_2d clicks in the
same call, it also reports the clicks the first pass saves (an annotator keeps proposals with Dice
>= 0.85 and clicks the other targets from scratch).

Writes OUTDIR/eval.json (per run: per-image and mean Dice after 1, 3, 5, 10 clicks or with a box,
NoC@85/90 capped at 20, 3-D Dice for sam_3d, round-trip and server latency p50/p95; per structure
when DIR/labels.json names the label values, as in scripts/make_sample_data --real's folders) and
OUTDIR/eval.png (mean Dice vs clicks, one line per run, sam_auto at 0 clicks; bars for box runs).

sam_3d can be clicked in 3-D: --prompt clicks_3d puts each next click in the largest 3-D error region
(on whatever slice; the server corrects its 3-D result there) and reports 3-D Dice after 1, 3, 5, 10
clicks and NoC@85/90 in 3-D; --prompt challenge runs the CVPR 2025 interactive 3-D challenge's protocol
(the middle slice's box with the target's z-range, then 5 clicks: Dice after each, its area under the
curve over the 5 clicks, the final Dice, seconds per object).

--prompt slice_boxes (with sam_2d) gives the model the truth's box on every slice the target covers and
scores the stacked slices' 3-D Dice: what the 2-D model reaches in 3-D with a perfect box everywhere, the
ceiling for sam_3d's propagation and its clicks.
"""

import argparse
import json
import sys
from pathlib import Path

from samlabel.tools.rest import RestError, Server
from samlabel.tools.server_evaluation import (
    BOX_PROMPTS,
    MAX_CLICKS,
    PROMPTS,
    auto_then_clicks,
    evaluate_auto,
    evaluate_server,
    structure_scores,
    studies_cases,
)


def serve_version(server: Server, version: str) -> None:
    try:
        server.rollback(version)
    except RestError as e:
        raise SystemExit(f"cannot serve {version}: {e.status_code} {e.text}") from e


def plot(runs: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    clicks = [r for r in runs if r["prompt"] not in (*BOX_PROMPTS, "auto")]
    for r in clicks:
        curve = r["dice_by_clicks"]
        name = f"{r['model']} {r['prompt'].replace('_', ' ')} {r['adapter_version'] or 'no adapter'}"
        ax.plot(range(1, len(curve) + 1), curve, "o-", label=name)
    for r in (r for r in runs if r["prompt"] == "auto"):
        ax.plot([0], [r["mean"]["dice_0"]], "*", markersize=12, label=f"sam_auto {r['adapter_version']} (0 clicks)")
    boxes = [r for r in runs if r["prompt"] in BOX_PROMPTS]
    if clicks:
        ax.set_xlabel("simulated clicks")
        ax.set_ylabel("mean Dice" + (" (3-D for sam_3d)" if any(r["model"] == "sam_3d" for r in clicks) else ""))
        ax.legend(fontsize=8, loc="lower right")
    else:
        names = [f"{r['model']} {r['prompt'].replace('_', ' ')}\n{r['adapter_version']}" for r in boxes]
        ax.bar(names, [r["mean"]["dice_box"] for r in boxes])
        ax.set_ylabel("mean Dice with a box")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    n = runs[0]
    ax.set_title(f"samlabel through the REST API: {n['images']} images, {n['objects']} objects", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main(argv: list[str] | None = None) -> int | None:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", default="http://127.0.0.1:8000")
    parser.add_argument("--data", type=Path, required=True, help="images + labels/final/ ground truth")
    parser.add_argument("--model", nargs="+", default=["sam_2d"], choices=["sam_2d", "sam_3d", "sam_auto"])
    parser.add_argument("--prompt", default="clicks", choices=PROMPTS)
    parser.add_argument("--versions", nargs="*", default=[], help="adapter versions to serve in turn")
    parser.add_argument("--max-clicks", type=int, default=MAX_CLICKS, help=f"NoC cap (default {MAX_CLICKS})")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.prompt in ("clicks_3d", "challenge") and set(args.model) != {"sam_3d"}:
        parser.error(f"--prompt {args.prompt} clicks in 3-D: use it with --model sam_3d")
    if args.prompt == "slice_boxes" and set(args.model) != {"sam_2d"}:
        parser.error("--prompt slice_boxes prompts every slice in 2-D: use it with --model sam_2d")

    cases = studies_cases(args.data)
    labels_json = args.data / "labels.json"  # image id -> structure -> value, as make_sample_data --real writes
    names = json.loads(labels_json.read_text()) if labels_json.is_file() else {}
    args.out.mkdir(parents=True, exist_ok=True)
    server = Server.at(args.server, tmpdir=args.out)
    client = server.client
    served_before = server.served_version()
    runs = []
    try:
        for version in args.versions or [None]:
            if version:
                serve_version(server, version)
            for model in args.model:
                if model == "sam_auto":
                    run = evaluate_auto(client, cases, model)
                else:
                    run = evaluate_server(client, cases, model, args.prompt, args.max_clicks)
                if names:
                    run["structures"] = structure_scores(run, names)
                runs.append(run)
                print(json.dumps({k: run[k] for k in ("model", "adapter_version", "mean", "latency_ms")}), flush=True)
            auto = next((r for r in runs[::-1] if r["prompt"] == "auto"), None)
            clicked = next((r for r in runs[::-1] if r["model"] == "sam_2d" and r["prompt"] == "clicks"), None)
            if auto and clicked:
                auto["then_sam_2d"] = auto_then_clicks(auto, clicked, "2d")
                print(json.dumps({"sam_auto then sam_2d": auto["then_sam_2d"]}), flush=True)
    finally:
        if args.versions:
            serve_version(server, served_before)
    report = {"command": " ".join(["scripts/evaluate", *argv]), "server": args.server, "runs": runs}
    report["data"] = str(args.data)
    (args.out / "eval.json").write_text(json.dumps(report, indent=2))
    plot(runs, args.out / "eval.png")
    print(f"wrote {args.out / 'eval.json'} and {args.out / 'eval.png'}")


if __name__ == "__main__":
    sys.exit(main())
