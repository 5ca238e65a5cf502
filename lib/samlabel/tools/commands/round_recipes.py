"""The benchmark's 5-label fine-tuning round, run in-process through the app's own trainer task, once per
recipe and seed: does the gate publish, what the held-out labels gain, what each anchor source loses.

One run is one draw: the gate checks each source of the anchor set (6 to 20 objects), so one seed of a
recipe can be refused where another is served. A default recipe is chosen on several seeds, not one.

    scripts/round_recipes [--recipe NAME [KEY=VALUE ...]] ... [--seeds 0 1 2] [--out results/round_recipes]

Without --recipe it compares the app's defaults with `anchor_slices=8` (their value until 2026-12-04).
Each run starts from the shipped version in a fresh folder; the volumes (`scripts/benchmark`'s: tubes
of 40 to 128 slices) and their embeddings are made once under --work (a temp folder unless given, so a
second call can reuse them). Writes OUT/round_recipes.json and OUT/round_recipes.png.
"""

import argparse
import json
import logging
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml
from monailabel.datastore.local import LocalDatastore

from samlabel.adapters.choice import start_record
from samlabel.adapters.versions import GATED_METRICS, AdapterVersions
from samlabel.config import AppConfig, load_app_config, load_model_config
from samlabel.model.runtime import serving_runtime
from samlabel.tools.speed_benchmark import (
    BENCHMARK_DEPTHS,
    ROUND_LABELS,
    benchmark_specs,
    environment,
    write_volumes,
)
from samlabel.training.task import SamAdapterTrain, TrainingEngines

DEFAULT_RECIPES = [["default"], ["anchor_slices_8", "anchor_slices=8"]]  # the app's defaults, and before 2026-12-04


def parse_recipe(words: list[str]) -> tuple[str, dict]:
    """``NAME KEY=VALUE ...`` -> (name, trainer request values), the values read as YAML."""
    name, *pairs = words
    if any("=" not in p for p in pairs):
        raise ValueError(f"recipe {name}: give its values as KEY=VALUE, got {pairs}")
    return name, {k: yaml.safe_load(v) for k, v in (p.split("=", 1) for p in pairs)}


def round_studies(work: Path) -> Path:
    """A studies folder with the benchmark round's volumes and their final labels (written once)."""
    studies = work / "studies"
    if not (studies / "labels" / "final").is_dir():
        specs = dict(list(benchmark_specs(BENCHMARK_DEPTHS).items())[-ROUND_LABELS:])
        write_volumes(studies, specs, truth_dir=studies / "labels" / "final")
    return studies


def run_once(cfg: AppConfig, work: Path, studies: Path, name: str, values: dict, seed: int) -> dict:
    """One run of the trainer task from the shipped version; the gate's decision and both sides' figures."""
    model_cfg = load_model_config(cfg.model)
    out = work / "runs" / f"{name}_seed{seed}"
    shutil.rmtree(out, ignore_errors=True)
    versions = AdapterVersions(out, start_record(cfg.adapter, model_cfg.adapter))
    runtime = serving_runtime(cfg.runtime, cfg.device, cfg.precision)
    engines = TrainingEngines(model_cfg, cfg, encoder_dir=work / "encoder", encoder_runtime=runtime)
    task = SamAdapterTrain(str(out), cfg, versions, engines)
    stats = task({"name": name, **values, "seed": seed}, LocalDatastore(str(studies), extensions=("*.nii.gz",)))
    anchor = stats["anchor"]
    return {
        "recipe": name,
        "values": values,
        "seed": seed,
        "gate": stats["gate"],
        "reason": stats["reason"],
        "held_out": {"before": stats["before"], "best": stats["best"]},
        "anchor": {"before": anchor["before"], "best": anchor["best"], "targets": anchor["targets"]},
        "timing": stats["timing"],
    }


def summary(runs: list[dict]) -> dict:
    """Per recipe: runs accepted, the held-out Dice@1 gain and the worst change of a gated metric on one anchor
    source (mean and worst over seeds)."""
    out = {}
    for name in dict.fromkeys(r["recipe"] for r in runs):
        mine = [r for r in runs if r["recipe"] == name]
        gains = [r["held_out"]["best"]["dice_1"] - r["held_out"]["before"]["dice_1"] for r in mine]
        worst = [worst_anchor_change(r) for r in mine]
        out[name] = {
            "accepted": sum(r["gate"] == "accepted" for r in mine),
            "runs": len(mine),
            "held_out_dice_1_gain": {"mean": float(np.mean(gains)), "min": float(np.min(gains))},
            "worst_anchor_source_change": {"mean": float(np.mean([w[0] for w in worst])), "min": min(worst)},
        }
    return out


def worst_anchor_change(run: dict) -> tuple[float, str]:
    """The largest drop of a gated metric on one anchor source (negative: a loss), and where."""
    before, best = run["anchor"]["before"]["by_group"], run["anchor"]["best"]["by_group"]
    return min((best[g][m] - before[g][m], f"{g} {m}") for g in before for m in GATED_METRICS)


def plot(runs: list[dict], tolerance: float, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    names = list(dict.fromkeys(r["recipe"] for r in runs))
    for colour, name in zip(plt.get_cmap("tab10").colors, names, strict=False):
        for r in (r for r in runs if r["recipe"] == name):
            gain = r["held_out"]["best"]["dice_1"] - r["held_out"]["before"]["dice_1"]
            change, _ = worst_anchor_change(r)
            accepted = r["gate"] == "accepted"
            ax.scatter(gain, change, color=colour, marker="o" if accepted else "x", s=60)
            ax.annotate(f"seed {r['seed']}", (gain, change), fontsize=7, xytext=(4, 3), textcoords="offset points")
        ax.scatter([], [], color=colour, label=name)
    ax.axhline(-tolerance, color="grey", ls="--", lw=1, label=f"gate: {tolerance} below the served version")
    ax.set(
        xlabel="held-out tubes: Dice@1 gain",
        ylabel="worst change on one anchor source\n(Dice@1, @3 or box)",
        title="5-label round per recipe and seed (o served, x refused)",
    )
    ax.legend(fontsize=8)
    fig.savefig(out, dpi=120, bbox_inches="tight")


def main(argv: list[str] | None = None) -> int | None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", nargs="+", action="append", metavar="NAME [KEY=VALUE", help="repeatable")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("results/round_recipes"))
    parser.add_argument("--work", type=Path, default=None, help="volumes and embeddings (default: a temp folder)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    try:
        recipes = [parse_recipe(words) for words in args.recipe or DEFAULT_RECIPES]
    except ValueError as e:
        parser.error(str(e))
    work = args.work or Path(tempfile.mkdtemp(prefix="samlabel-recipes-"))
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        studies = round_studies(work)
        cfg = load_app_config({})
        result = {"environment": environment(), "defaults": dict(cfg.train), "runs": []}
        for name, values in recipes:
            for seed in args.seeds:
                run = run_once(cfg, work, studies, name, values, seed)
                print(f"{name} seed {seed}: {run['gate']}: {run['reason']}", flush=True)
                result["runs"].append(run)
                result["summary"] = summary(result["runs"])
                (args.out / "round_recipes.json").write_text(json.dumps(result, indent=2))
        plot(result["runs"], cfg.publish_tolerance, args.out / "round_recipes.png")
        print(json.dumps(result["summary"], indent=1))
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
