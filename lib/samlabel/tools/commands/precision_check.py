"""Would the image encoder at OpenVINO's bf16 keep today's masks? Speed and agreement against fp32.

OpenVINO picks bf16 by itself on CPUs with bf16 instructions (faster); the server pins fp32. This
measures what bf16 would change, on the real CT/MR eval split (TotalSegmentator masks): for every
structure, the box-prompt mask on its largest slice (2-D) and ``sam_3d`` grown from it (3-D, the server's
propagation), at fp32 and at bf16, in-process with the served default model; Dice between the two
precisions' masks, each precision's Dice with the ground truth (does the difference cost accuracy?), and
seconds per encoded slice.

    scripts/precision_check [--data data/real/eval] [--out results/precision_check]
Writes OUT.json. Run scripts/make_sample_data --real first.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from samlabel.config import load_app_config, load_model_config
from samlabel.evaluation.metrics import dice, largest_slice
from samlabel.inference.embeddings import EmbeddingCache
from samlabel.inference.engine import SamEngine
from samlabel.inference.geometry import mask_box, volume_slice
from samlabel.inference.preprocess import normalize_volume
from samlabel.inference.propagation import PropagationSettings, propagate
from samlabel.model.openvino_runtime import OpenVinoEncoder
from samlabel.tools.server_evaluation import studies_cases


def structures(folder: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``(study/structure, [0, 1] volume, mask)`` for every structure of a labelled folder (its
    ``labels.json`` names the label values)."""
    names = json.loads((folder / "labels.json").read_text())
    rows = []
    for case in studies_cases(folder):
        volume01 = normalize_volume(np.asarray(nib.load(case.image).dataobj))
        label = np.asarray(nib.load(case.truth).dataobj)
        masks = {name: label == value for name, value in names[case.image_id].items()}
        rows += [(f"{case.image_id}/{name}", volume01, mask) for name, mask in masks.items() if mask.any()]
    return rows


def encoder_seconds(encoder: OpenVinoEncoder, img_size: int, runs: int = 16) -> float:
    """Seconds per slice of the encoder alone, compiled and warmed up first."""
    image = torch.rand(1, 3, img_size, img_size)
    encoder(image)
    began = time.perf_counter()
    for _ in range(runs):
        encoder(image)
    return (time.perf_counter() - began) / runs


def masks_at(engine: SamEngine, precision: str, cases, settings: PropagationSettings) -> tuple[list, list, float]:
    """Each case's 2-D box mask and 3-D propagated mask with the encoder at ``precision``; the encoder's
    seconds per slice."""
    graph = engine._graph_encoder[1].graph
    encoder = OpenVinoEncoder(graph, exported=False, precision=precision)
    seconds = encoder_seconds(encoder, engine.model_cfg.img_size)
    engine._graph_encoder = (f"check:{precision}", encoder)
    engine.embeddings = EmbeddingCache(2**31, None, engine.device)  # nothing encoded at the other precision
    two_d, three_d = [], []
    for _, volume01, mask in cases:
        k = largest_slice(mask)
        box = engine.geometry(volume01.shape).box_to_model(*mask_box(volume_slice(mask, k), 2))
        start = engine.segment(volume01, k, np.zeros((0, 2), np.float32), np.zeros(0, np.int64), box)
        grown = propagate(engine, volume01, k, start, None, settings)
        two_d.append(start.mask)
        slices = [grown.get(j, np.zeros_like(start.mask)) for j in range(volume01.shape[2])]
        three_d.append(np.stack(slices, -1).transpose(1, 0, 2))  # (J, I) slices -> the (I, J, K) volume
    return two_d, three_d, seconds


def main(argv: list[str] | None = None) -> int | None:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data/real/eval"))
    parser.add_argument("--out", type=Path, default=Path("results/precision_check"))
    args = parser.parse_args(argv)
    if not (args.data / "labels.json").is_file():
        parser.error(f"{args.data} has no labels.json: run scripts/make_sample_data --real first")

    cfg = load_app_config({"runtime": "openvino", "prefetch_slices": "0"})
    engine = SamEngine(load_model_config(cfg.model), cfg)
    settings = PropagationSettings.from_config(cfg)
    cases = structures(args.data)
    fp32_2d, fp32_3d, fp32_seconds = masks_at(engine, "fp32", cases, settings)
    bf16_2d, bf16_3d, bf16_seconds = masks_at(engine, "bf16", cases, settings)
    rows = []
    for (name, _, truth), a, b, c, d in zip(cases, fp32_2d, bf16_2d, fp32_3d, bf16_3d, strict=True):
        truth_2d = volume_slice(truth, largest_slice(truth))  # the slice masks_at prompted
        scores = {
            "dice_2d": dice(a, b),
            "dice_3d": dice(c, d),
            "truth_dice_2d_fp32": dice(a, truth_2d),
            "truth_dice_2d_bf16": dice(b, truth_2d),
            "truth_dice_3d_fp32": dice(c, truth),
            "truth_dice_3d_bf16": dice(d, truth),
        }
        rows.append({"structure": name, **{k: round(v, 4) for k, v in scores.items()}})
    columns = list(scores)
    report = {
        "what": "Dice between the masks with the encoder at OpenVINO fp32 and at bf16 (box prompt on the largest "
        "slice, and sam_3d propagated from it), each precision's Dice with the truth (truth_dice_*), and the "
        "encoder's seconds per slice (16 runs after a warm-up)",
        "command": " ".join(["scripts/precision_check", *argv]),
        "data": str(args.data),
        "model": engine.version,
        "device": f"cpu ({os.cpu_count()} cores)",
        "seconds_per_slice": {"fp32": round(fp32_seconds, 3), "bf16": round(bf16_seconds, 3)},
        "mean": {k: round(float(np.mean([r[k] for r in rows])), 4) for k in columns},
        "min": {k: round(float(np.min([r[k] for r in rows])), 4) for k in columns},
        "structures": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k != "structures"}, indent=2))


if __name__ == "__main__":
    sys.exit(main())
