"""Show that the served model learns from saved labels, through a real samlabel server.

A new domain the click starter never saw: cine-MR-like short-axis hearts (LV blood, the ring of
myocardium, RV blood; samlabel.tools.sample_data.make_cardiac_phantom). Each round a "clinician" saves the
corrected labels of 5 more hearts; the server's own trigger (train_every 5) fine-tunes in the
background and publishes the new version if the gate passes. Before the first round and after each,
held-out hearts (never labelled) and held-out CT phantoms (the old domain) are segmented through the
server with simulated clicks: Dice after 1 and 3 clicks on each object's largest slice.

    scripts/learning_demo [--rounds 3] [--per-round 5] [--steps N] [--lr X] [--out results/learning_demo]
Writes OUT.json and OUT.png. Fixed seeds. Each run uses the app's own training recipe (``train`` in
configs/app.yaml) unless --steps / --lr set its max_steps / learning_rate.

With --real (after scripts/make_sample_data --real), the new domain is real anatomy the click starter
never saw: deep grey-matter nuclei of the Colin27 T1 brain (AAL atlas masks, hand-drawn). Each round the
"clinician" saves the left hemisphere's label with two more structures (caudate + putamen, then
pallidum + thalamus, then hippocampus + amygdala); every save starts a run (train_every 1). The right
hemisphere (no voxel shared with the left) is held out; the old domain is the real CT/MR eval split.

    scripts/learning_demo --real [--steps N] [--out results/real/learning_demo]

The default paths (data/real, results/...) are relative to the working directory (the repository's root
when run as scripts/learning_demo).
"""

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from monailabel.client import MONAILabelClient

from samlabel.tools.local_server import start_server, stop_server
from samlabel.tools.rest import Server
from samlabel.tools.sample_data import LABELS, PHANTOMS
from samlabel.tools.server_evaluation import Case, evaluate_server, structure_scores, studies_cases

HELD_OUT = {"cardiac": [100, 101, 102, 103], "ct": [2000, 2001]}
REAL_ROUNDS = [("caudate", "putamen"), ("pallidum", "thalamus"), ("hippocampus", "amygdala")]


@dataclass(frozen=True)
class Demo:
    """What one demo needs: held-out cases per domain, their structure names, and what each round saves."""

    new_domain: list[Case]
    old_domain: list[Case]
    names: dict[str, dict[str, int]]  # image id -> structure -> label value
    saves: list[list[tuple[str, Path]]]  # per round: (image id, label file) saved as final
    labels: str  # the server's label names
    description: dict[str, str]


def phantom_demo(work: Path, rounds: int, per_round: int) -> Demo:
    """Cardiac phantoms to learn (5 hearts saved per round), held-out hearts and CT phantoms."""
    (work / "studies").mkdir(parents=True)
    (work / "truth").mkdir()
    names = [(f"cardiac_{s:03d}", "cardiac", s) for s in range(rounds * per_round)]
    names += [(f"heldout_{kind}_{s}", kind, s) for kind, seeds in HELD_OUT.items() for s in seeds]
    for name, kind, seed in names:
        image, label = PHANTOMS[kind](seed)
        nib.save(image, work / "studies" / f"{name}.nii.gz")
        nib.save(label, work / "truth" / f"{name}.nii.gz")

    def cases(kind: str) -> list[Case]:
        ids = [n for n, k, _ in names if n.startswith(f"heldout_{kind}")]
        return [Case(i, work / "studies" / f"{i}.nii.gz", work / "truth" / f"{i}.nii.gz") for i in ids]

    saves = [
        [
            (f"cardiac_{i:03d}", work / "truth" / f"cardiac_{i:03d}.nii.gz")
            for i in range(r * per_round, (r + 1) * per_round)
        ]
        for r in range(rounds)
    ]
    return Demo(
        new_domain=cases("cardiac"),
        old_domain=cases("ct"),
        names={n: LABELS[k] for n, k, _ in names},
        saves=saves,
        labels="lv_blood,myocardium,rv_blood",
        description={
            "new_domain": "make_cardiac_phantom seeds 0.. (train), held out " + str(HELD_OUT["cardiac"]),
            "old_domain": "make_ct_phantom, held out " + str(HELD_OUT["ct"]),
        },
    )


def real_demo(work: Path, data: Path) -> Demo:
    """Colin27's left-hemisphere nuclei to learn (two more structures per round), the right hemisphere held
    out, the real CT/MR eval split as the old domain."""
    if not (data / "real.json").is_file():
        raise SystemExit(f"{data} has no real split: run scripts/make_sample_data --real first")
    (work / "studies").mkdir(parents=True)
    (work / "truth").mkdir()
    names = {}
    for split in ("learn", "learn_heldout", "eval"):
        names.update(json.loads((data / split / "labels.json").read_text()))
        for case in studies_cases(data / split):
            shutil.copy(case.image, work / "studies" / case.image.name)  # images only: truths stay unsaved
    learn = studies_cases(data / "learn")[0]
    label = nib.load(learn.truth)
    values = np.asarray(label.dataobj)
    saves = []
    for r in range(len(REAL_ROUNDS)):
        keep = [names[learn.image_id][s] for group in REAL_ROUNDS[: r + 1] for s in group]
        path = work / "truth" / f"{learn.image_id}_round{r + 1}.nii.gz"
        nib.save(nib.Nifti1Image(np.where(np.isin(values, keep), values, 0).astype(np.uint8), label.affine), path)
        saves.append([(learn.image_id, path)])
    structures = sorted({s for group in REAL_ROUNDS for s in group})
    return Demo(
        new_domain=studies_cases(data / "learn_heldout"),
        old_domain=studies_cases(data / "eval"),
        names=names,
        saves=saves,
        labels=",".join(structures),
        description={
            "new_domain": "Colin27 T1 brain, AAL atlas nuclei: left hemisphere saved, right hemisphere held out",
            "old_domain": "real CT/MR eval split (TotalSegmentator 2.18 masks, silver standard)",
            "rounds": "; ".join(f"round {r + 1}: + {', '.join(g)}" for r, g in enumerate(REAL_ROUNDS)),
        },
    )


def evaluate(client: MONAILabelClient, cases: list[Case], names: dict[str, dict[str, int]]) -> dict:
    """Dice after 1 and 3 simulated clicks through the server, per object and averaged."""
    run = evaluate_server(client, cases, "sam_2d", "clicks", reported=(1, 3), noc_at=(0.85,))
    by_structure: dict[str, list[float]] = {}
    for name, scores in structure_scores(run, names).items():
        by_structure.setdefault(name.split("/", 1)[1], []).append(scores["dice_1"])
    return {
        "dice_1": run["mean"]["dice_1"],
        "dice_3": run["mean"]["dice_3"],
        "dice_1_by_structure": {s: float(np.mean(v)) for s, v in sorted(by_structure.items())},
        "objects": {
            f"{image_id}/{target}": {"dice_1": o["dice_1"], "dice_3": o["dice_3"]}
            for image_id, image in run["per_image"].items()
            for target, o in image["objects"].items()
        },
    }


def plot(report: dict, out: Path, new_domain: str, old_domain: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = report["rounds"]
    saved = [r["labels_saved"] for r in rounds]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, metric in zip(axes, ("dice_1", "dice_3"), strict=True):
        ax.plot(saved, [r["new_domain"][metric] for r in rounds], "o-", label=f"new domain: held-out {new_domain}")
        ax.plot(
            saved,
            [r["old_domain"][metric] for r in rounds],
            "s--",
            label="old domain: held-out " + ("real CT/MR" if new_domain != "hearts" else "CT"),
        )
        for s in rounds[0]["new_domain"]["dice_1_by_structure"] if metric == "dice_1" else []:
            values = [r["new_domain"]["dice_1_by_structure"][s] for r in rounds]
            ax.plot(saved, values, ":", alpha=0.6, label=f"  {s}")
        for r in rounds[1:]:
            ax.annotate(f"{r['version']} ({r['gate']})", (r["labels_saved"], r["new_domain"][metric]), fontsize=7)
        ax.set_xlabel("corrected labels saved")
        ax.set_ylabel(f"Dice after {metric[-1]} click{'s' if metric != 'dice_1' else ''}")
        ax.set_ylim(0, 1.02)
        ax.set_xticks(saved)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle("samlabel learning from saved labels (LiteMedSAM + click adapter, server-triggered runs)")
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main(argv: list[str] | None = None) -> int | None:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--per-round", type=int, default=5)
    parser.add_argument("--steps", type=int, default=None, help="train.max_steps of each run (default: the app's)")
    parser.add_argument("--lr", type=float, default=None, help="train.learning_rate of each run (default: the app's)")
    parser.add_argument(
        "--server-conf", nargs="*", default=[], metavar="KEY VALUE", help="more --conf pairs for the server"
    )
    parser.add_argument("--real", action="store_true", help="learn real brain nuclei (data/real, see above)")
    parser.add_argument("--data", type=Path, default=Path("data/real"), help="the real split (with --real)")
    parser.add_argument("--out", type=Path, default=None, help="default: results/learning_demo (results/real/...)")
    parser.add_argument("--work", type=Path, default=None, help="working folder (default: a temp folder)")
    args = parser.parse_args(argv)
    out = args.out or Path("results", "real/learning_demo" if args.real else "learning_demo")

    work = args.work or Path(tempfile.mkdtemp(prefix="samlabel-learning-"))
    demo = real_demo(work, args.data) if args.real else phantom_demo(work, args.rounds, args.per_round)
    per_round = len(demo.saves[0])
    conf = ["labels", demo.labels, "model_dir", str(work / "model")]
    conf += ["train_every", str(per_round)]
    if args.steps:
        conf += ["train.max_steps", str(args.steps), "train.val_every", str(max(args.steps // 3, 1))]
    if args.lr:
        conf += ["train.learning_rate", str(args.lr)]
    if len(args.server_conf) % 2:
        parser.error("--server-conf takes KEY VALUE pairs")
    conf += args.server_conf
    proc, url = start_server(work / "studies", work / "server.log", *conf)
    began = time.time()
    try:
        server = Server.at(url, tmpdir=work)
        client = server.client
        start_version = server.served_version()
        rounds = [{"round": 0, "labels_saved": 0, "version": start_version, "gate": "start"}]
        for r in range(len(demo.saves) + 1):
            if r > 0:
                runs_before = server.runs_started()
                for image_id, label_file in demo.saves[r - 1]:
                    client.save_label(image_id, str(label_file), tag="final")
                saved = time.monotonic()
                task = server.wait_for_run(runs_before, timeout=3600)
                stats = server.train_stats()
                rounds.append(
                    {
                        "round": r,
                        "labels_saved": r * per_round,
                        "run_status": task.get("status"),
                        "version": stats["version"],
                        "gate": stats["gate"],
                        "reason": stats["reason"],
                        "served": stats["served"],
                        "run_seconds": stats["seconds"],
                        "last_save_to_run_end_seconds": round(time.monotonic() - saved, 1),
                        "train_settings": stats.get("settings"),
                        "validation_before": stats["before"],
                        "validation_best": stats["best"],
                    }
                )
            rounds[-1]["new_domain"] = evaluate(client, demo.new_domain, demo.names)
            rounds[-1]["old_domain"] = evaluate(client, demo.old_domain, demo.names)
            print(json.dumps({k: v for k, v in rounds[-1].items() if "domain" not in k}), flush=True)
            print("  new", rounds[-1]["new_domain"]["dice_1_by_structure"], "old", rounds[-1]["old_domain"]["dice_1"])
    finally:
        stop_server(proc)

    first, last = rounds[0], rounds[-1]
    report = {
        "what": "held-out Dice after 1 and 3 simulated clicks through a real server, before and after each round",
        "command": " ".join(["scripts/learning_demo", *argv]),
        **demo.description,
        "settings": {"rounds": len(demo.saves), "per_round": per_round, "train": rounds[-1].get("train_settings")},
        "device": "cpu (2 cores)",
        "minutes": round((time.time() - began) / 60, 1),
        "gain_dice_1_new_domain": last["new_domain"]["dice_1"] - first["new_domain"]["dice_1"],
        "gain_dice_3_new_domain": last["new_domain"]["dice_3"] - first["new_domain"]["dice_3"],
        "change_dice_1_old_domain": last["old_domain"]["dice_1"] - first["old_domain"]["dice_1"],
        "rounds": rounds,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    plot(report, out.with_suffix(".png"), *(("brain nuclei", "real CT/MR") if args.real else ("hearts", "CT")))
    print(json.dumps({k: v for k, v in report.items() if k != "rounds"}, indent=2))


if __name__ == "__main__":
    sys.exit(main())
