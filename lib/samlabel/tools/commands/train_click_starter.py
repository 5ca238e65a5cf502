"""Train the click adapter that ships with samlabel (LiteMedSAM decoder + point embeddings).

Deterministic recipe on generated data, no network:
  train       CT phantoms (seeds 1000..1000+N_CT-1) and MR phantoms (seeds 1000..), every 2nd labelled
              slice, one sample per 2-D object, MONAI intensity/flip augmentation per volume;
  validation  CT and MR phantoms with seeds 2000.. (never trained on): Dice after 1/3/5 clicks and box;
  unseen      the real MNI152 brain (white and grey matter), a domain not in the training data.
Writes lib/samlabel/assets/litemedsam_clicks.pt (+ .json) and results/click_starter.{json,png} (relative
to the working directory: the repository's root when run as scripts/train_click_starter).

    scripts/train_click_starter [--steps 250] [--n-ct 10] [--n-mr 5]

With --real DIR (scripts/make_sample_data --real), the real split's `train` volumes join the phantoms
(each twice: as is and augmented); their first --val-slices slices are cut off and validate instead,
beside the held-out phantoms, so no voxel that selects the best state is trained on. The `eval` and
`learn*` studies are never read. The version that ships as clicks-v2:

    scripts/train_click_starter --real data/real --start default --version clicks-v2 \
        --steps 300 --prior-clicks 6 --out lib/samlabel/assets/litemedsam_clicks_v2.pt \
        --results results/click_starter_v2
"""

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from samlabel.config import ASSET_DIR, load_app_config, load_model_config
from samlabel.evaluation.metrics import targets
from samlabel.inference.engine import SamEngine
from samlabel.inference.preprocess import normalize_volume
from samlabel.tools.sample_data import LABELS, make_ct_phantom, make_mni_brain, make_mr_phantom
from samlabel.tools.server_evaluation import studies_cases
from samlabel.training.loop import TrainSettings, ValTarget, prepare_model, train_adapter, validate
from samlabel.training.samples import augmentation, slice_samples
from samlabel.training.step import StepSettings

STARTER_VAL_SLICES = 30  # a real volume's first slices validate, never train (the anchor set validates on them too)


def volume(image) -> np.ndarray:
    return normalize_volume(np.asarray(image.dataobj, dtype=np.float32))


def val_targets(named_volumes) -> list[ValTarget]:
    found = []
    for name, kind, (image, label) in named_volumes:
        v = volume(image)
        found += [ValTarget(f"{name}/{t}", v, m) for t, m in targets(np.asarray(label.dataobj), LABELS[kind]).items()]
    return found


def real_volumes(folder: Path, val_slices: int) -> tuple[list, list[ValTarget]]:
    """The split's `train` volumes, less their first ``val_slices`` slices, which become validation targets."""
    names = json.loads((folder / "train" / "labels.json").read_text())
    train, val = [], []
    for case in studies_cases(folder / "train"):
        v = volume(nib.load(case.image))
        label = np.asarray(nib.load(case.truth).dataobj)
        train.append((case.image_id, v[:, :, val_slices:], label[:, :, val_slices:]))
        cut = label[:, :, :val_slices]
        val += [
            ValTarget(f"{case.image_id}/{t}", v[:, :, :val_slices], m)
            for t, m in targets(cut, names[case.image_id]).items()
        ]
    return train, val


def main(argv: list[str] | None = None) -> int | None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--n-ct", type=int, default=10)
    parser.add_argument("--n-mr", type=int, default=5)
    parser.add_argument("--val-every", type=int, default=50)
    parser.add_argument("--out", type=Path, default=ASSET_DIR / "litemedsam_clicks.pt")
    parser.add_argument("--results", type=Path, default=Path("results/click_starter"))
    parser.add_argument("--real", type=Path, help="a real split folder: train on its `train` studies too")
    parser.add_argument(
        "--val-slices", type=int, default=STARTER_VAL_SLICES, help="slices of each real volume kept to validate"
    )
    parser.add_argument("--start", default="none", help="none (LiteMedSAM) or default (the shipped adapter)")
    parser.add_argument("--version", default="clicks-v1")
    parser.add_argument("--prior-clicks", type=int, default=4, help="most clicks simulated before the trained one")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.manual_seed(0)

    cfg = load_app_config({"adapter": args.start, "cache_mb": "8192"})
    # the frozen encoder's embeddings come from the serving runtime (ONNX Runtime on CPU, the same numbers
    # to ~1e-6), training and validation need PyTorch's autograd on the weights being trained
    sampler = SamEngine(load_model_config("litemedsam"), cfg)
    engine = SamEngine(load_model_config("litemedsam"), cfg, runtime="torch")
    began = time.time()
    train = [
        (f"ct{s}", volume(i), np.asarray(lab.dataobj))
        for s in range(1000, 1000 + args.n_ct)
        for i, lab in [make_ct_phantom(s)]
    ]
    train += [
        (f"mr{s}", volume(i), np.asarray(lab.dataobj))
        for s in range(1000, 1000 + args.n_mr)
        for i, lab in [make_mr_phantom(s)]
    ]
    held_out = val_targets(
        [(f"ct{s}", "ct", make_ct_phantom(s)) for s in (2000, 2001, 2002)]
        + [(f"mr{s}", "mr", make_mr_phantom(s)) for s in (2000, 2001)]
    )
    samples = slice_samples(sampler, train, slice_step=2, augment=augmentation(0))
    real_train, real_val = real_volumes(args.real, args.val_slices) if args.real else ([], [])
    samples += slice_samples(sampler, real_train, slice_step=2)  # as is
    samples += slice_samples(sampler, real_train, slice_step=2, augment=augmentation(1))
    del sampler
    held_out += real_val
    logging.info("%d training samples from %d volumes in %.0f s", len(samples), len(train), time.time() - began)
    unseen = val_targets([("mni152", "mni", make_mni_brain())])
    unseen_before = validate(engine, unseen)

    # every history length alike, a lone first click included, as clicks-v2 was trained
    step = StepSettings(max_prior_clicks=args.prior_clicks, first_click_share=1 / (args.prior_clicks + 1))
    run = {**cfg.train, "max_steps": args.steps, "train_batch_size": args.batch_size, "val_every": args.val_every}
    settings = TrainSettings.from_request(run, step)
    prepare_model(engine, settings)
    report = train_adapter(engine, samples, held_out, settings, args.out, version=args.version)
    report["unseen_domain"] = {
        "name": "MNI152 brain (real T1 MRI)",
        "before": unseen_before,
        "after": validate(engine, unseen),
    }
    report["data"] = {
        "phantom_volumes": len(train),
        "real_volumes": [name for name, _, _ in real_train],
        "train_samples": len(samples),
        "validation_targets": len(held_out),
        "started_from": args.start if args.start == "none" else engine.adapter.version,
    }
    report["device"] = str(engine.device)
    report["torch"] = torch.__version__
    report["total_seconds"] = round(time.time() - began, 1)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.with_suffix(".json").write_text(json.dumps(report, indent=2))
    plot(report, args.results.with_suffix(".png"))
    print(json.dumps({k: report[k] for k in ("before", "best", "unseen_domain")}, indent=2))


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.4))
    keys = ["dice_1", "dice_3", "dice_5", "dice_box"]
    x = np.arange(len(keys))
    for offset, (label, metrics) in zip(
        (-0.3, -0.1, 0.1, 0.3),
        [
            ("held-out, LiteMedSAM", report["before"]),
            ("held-out, + click adapter", report["best"]),
            ("MNI brain, LiteMedSAM", report["unseen_domain"]["before"]),
            ("MNI brain, + click adapter", report["unseen_domain"]["after"]),
        ],
        strict=False,
    ):
        ax1.bar(x + offset, [metrics[k] for k in keys], width=0.2, label=label)
    ax1.set_xticks(x, ["1 click", "3 clicks", "5 clicks", "box"])
    ax1.set_ylim(0, 1)
    ax1.set_ylabel("Dice")
    ax1.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2)
    ax1.set_title("Before / after the click adapter")
    steps = [h["step"] for h in report["history"]]
    for k in keys:
        ax2.plot(steps, [h[k] for h in report["history"]], marker="o", label=k)
    ax2.set_xlabel("training step")
    ax2.set_ylim(0, 1)
    ax2.legend(fontsize=7)
    ax2.set_title("Held-out validation during training")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
