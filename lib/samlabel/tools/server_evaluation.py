"""Accuracy and latency as a client gets them: the standard simulated user against a running server.

Every connected object of every label value in the ground truth is one target. With ``clicks`` the
simulated annotator (:mod:`samlabel.evaluation.simulated_user`) clicks the target's largest slice through the
REST API, resending all clicks each time as viewers do, until 20 clicks or until both Dice 0.9 and the
10th click are reached (so Dice after 1, 3, 5, 10 clicks and NoC@85/90 are known). With ``box`` the
target's box is sent once: on its largest slice for ``sam_2d``, around the whole target for
``sam_3d``. ``sam_2d`` is scored by the slice's Dice, ``sam_3d`` by the volume's.

``sam_3d`` can also be clicked in 3-D (``clicks_3d``): each next click goes to the largest 3-D error
region, on whatever slice (:func:`~samlabel.evaluation.simulated_user.next_click_3d`), and the server
corrects its 3-D result there. ``challenge`` is the CVPR 2025 interactive 3-D challenge's protocol: the
target's box on its middle slice with its z-range, then 5 such clicks; it reports the Dice after each,
the area under that curve over the 5 clicks (trapezoid, as the challenge), the final Dice and the
seconds per object.

``sam_auto`` is "0 clicks": one request per image; each target is scored by the proposed components
of its label value that touch it (so each kidney against its own), on its largest slice and in 3-D.
:func:`auto_then_clicks` combines that with a clicks run: an annotator keeps every proposed object
with Dice >= 0.85 and clicks the others from scratch, which gives the clicks the first pass saves.

Images the server's datastore holds are used by id; others (a hold-out set) are sent as MONAI Label
sessions, so evaluating never adds images to the datastore that active learning picks from.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from monailabel.client import MONAILabelClient
from scipy import ndimage

from samlabel.datastore.local import NIFTI_SUFFIXES
from samlabel.datastore.local import image_id as datastore_id
from samlabel.evaluation.metrics import dice, largest_slice, roi_of, simulated_clicks_dice, targets
from samlabel.evaluation.simulated_user import next_click_3d
from samlabel.inference.geometry import volume_slice
from samlabel.tools.rest import Server

logger = logging.getLogger(__name__)

REPORTED_CLICKS = (1, 3, 5, 10)
MAX_CLICKS = 20  # NoC cap
CHALLENGE_CLICKS = 5  # after the box, in the CVPR 2025 interactive 3-D challenge
PROMPTS = ("clicks", "box", "clicks_3d", "challenge", "slice_boxes")
BOX_PROMPTS = ("box", "slice_boxes")  # scored once, as dice_box: no clicks


@dataclass(frozen=True)
class Case:
    """An image file and its ground truth, as in a MONAI Label studies folder (truth in labels/final/)."""

    image_id: str
    image: Path
    truth: Path


def studies_cases(folder: Path) -> list[Case]:
    """The images at the top of ``folder`` that have a ground truth of the same name in ``labels/final/``."""
    folder = Path(folder)
    cases = []
    for path in sorted(folder.iterdir()):
        if not path.name.endswith(NIFTI_SUFFIXES) or not path.is_file():
            continue
        truth = folder / "labels" / "final" / path.name
        if not truth.is_file():
            logger.warning("no ground truth for %s in %s: skipped", path.name, truth.parent)
            continue
        cases.append(Case(datastore_id(path), path, truth))
    if not cases:
        raise FileNotFoundError(f"{folder}: no images with ground truth in {folder / 'labels' / 'final'}")
    return cases


def noc(scores: list[float], threshold: float, cap: int = MAX_CLICKS) -> int:
    """Number of clicks until Dice first reaches ``threshold`` (``cap`` if it never does)."""
    return next((n for n, s in enumerate(scores, 1) if s >= threshold), cap)


def percentiles(values: list[float]) -> dict[str, float]:
    """p50 and p95 of latencies in ms, and how many there were."""
    if not values:
        return {"n": 0}
    p50, p95 = np.percentile(values, [50, 95])
    return {"p50": round(float(p50), 1), "p95": round(float(p95), 1), "n": len(values)}


class ServerModel:
    """One infer task of a server for one image (id or session); records each request's latency."""

    def __init__(
        self, client: MONAILabelClient, model: str, image_id: str, session_id: str | None, binary: bool = True
    ):
        self.server, self.model, self.image_id, self.session_id = Server(client), model, image_id, session_id
        self.binary = binary  # a boolean mask, or the label values (sam_auto)
        self.round_trip_ms: list[float] = []
        self.server_ms: list[float] = []
        self.last_params: dict[str, Any] = {}

    def __call__(self, params: dict[str, Any]) -> np.ndarray:
        """The returned label volume ``(I, J, K)`` as a boolean mask (or its values, if not ``binary``)."""
        answer = self.server.infer(self.model, self.image_id, params, session_id=self.session_id)
        self.round_trip_ms.append(answer.round_trip_s * 1000)
        if answer.server_s is not None:
            self.server_ms.append(answer.server_s * 1000)
        self.last_params = answer.result
        return answer.label > 0 if self.binary else answer.label


@contextlib.contextmanager
def server_image(client: MONAILabelClient, case: Case, datastore_ids: set[str]) -> Iterator[tuple[str, str | None]]:
    """``(image id, session id)`` for a case: the datastore's image, or a session made for it."""
    if case.image_id in datastore_ids:
        yield case.image_id, None
        return
    session = client.create_session(str(case.image))
    session_id = session["session_id"]
    try:
        yield session_id, session_id
    finally:
        with contextlib.suppress(Exception):
            client.remove_session(session_id)


def evaluate_target(
    model: ServerModel,
    truth: np.ndarray,
    prompt: str,
    max_clicks: int = MAX_CLICKS,
    reported: tuple[int, ...] = REPORTED_CLICKS,
    noc_at: tuple[float, ...] = (0.85, 0.90),
) -> dict:
    """Scores of one target (``(I, J, K)`` boolean) through ``model`` with ``clicks`` or ``box``: Dice
    after each of the ``reported`` clicks and NoC at each ``noc_at``; clicking stops once all are known."""
    three_d = model.model == "sam_3d"
    if prompt in ("clicks_3d", "challenge"):
        return clicks_in_3d(model, truth, prompt, max_clicks, reported, noc_at)
    if prompt == "slice_boxes":
        return {"dice_box": dice(boxed_slices(model, truth), truth)}
    k = largest_slice(truth)
    truth_hw = volume_slice(truth, k)
    if prompt == "box":
        label = model({"roi": roi_of(truth) if three_d else roi_of(truth, k)})
        return {"slice": k, "dice_box": dice(label, truth) if three_d else dice(volume_slice(label, k), truth_hw)}
    last: dict[str, np.ndarray] = {}

    def segment(clicks: dict[str, list[list[int]]]) -> np.ndarray:
        last["label"] = model(clicks)
        return volume_slice(last["label"], k)

    def known(scores: list[float]) -> bool:
        return len(scores) >= max(reported) and max(scores) >= max(noc_at)

    score = (lambda _: dice(last["label"], truth)) if three_d else None
    scores = simulated_clicks_dice(segment, truth_hw, k, max_clicks, score=score, done=known)
    return {
        "slice": k,
        "dice": [round(s, 4) for s in scores],
        **{f"dice_{n}": scores[min(n, len(scores)) - 1] for n in reported},
        **{f"noc{round(t * 100)}": noc(scores, t, max_clicks) for t in noc_at},
    }


def boxed_slices(model: ServerModel, truth: np.ndarray) -> np.ndarray:
    """``sam_2d`` given the truth's own box on every slice the target covers, the slices stacked: what the 2-D
    model reaches in 3-D with a perfect box everywhere (MedSAM's 3-D protocol), a ceiling for any way of
    growing a 3-D mask from its slices."""
    if model.model != "sam_2d":
        raise ValueError(f"slice_boxes prompts each slice in 2-D: it needs sam_2d, not {model.model}")
    prediction = np.zeros_like(truth)
    for k in np.flatnonzero(truth.any(axis=(0, 1))):
        prediction[:, :, k] = model({"roi": roi_of(truth, int(k))})[:, :, k]
    return prediction


def clicks_in_3d(
    model: ServerModel,
    truth: np.ndarray,
    prompt: str,
    max_clicks: int = MAX_CLICKS,
    reported: tuple[int, ...] = REPORTED_CLICKS,
    noc_at: tuple[float, ...] = (0.85, 0.90),
) -> dict:
    """``sam_3d`` clicked in 3-D, all clicks resent each time, scored by the volume's Dice: ``clicks_3d``
    (Dice after the ``reported`` clicks, NoC in 3-D) or ``challenge`` (a middle-slice box with the
    target's z-range first, then 5 clicks)."""
    if model.model != "sam_3d":
        raise ValueError(f"{prompt} clicks in 3-D: it needs sam_3d, not {model.model}")
    params: dict[str, Any] = {"foreground": [], "background": []}
    began = time.perf_counter()
    prediction, box = None, None
    if prompt == "challenge":
        ks = np.flatnonzero(truth.any(axis=(0, 1)))
        middle = int(ks[len(ks) // 2])
        params |= {"roi": [*roi_of(truth, middle)[:4], int(ks[0]), int(ks[-1])], "slice": middle}
        prediction = model(params)
        box = dice(prediction, truth)
    scores: list[float] = []
    for _ in range(CHALLENGE_CLICKS if prompt == "challenge" else max_clicks):
        if prompt == "clicks_3d" and len(scores) >= max(reported) and max(scores) >= max(noc_at):
            break
        click = next_click_3d(truth, prediction)
        if click is None:  # nothing left to correct: the score stays
            scores.append(scores[-1] if scores else 1.0)
            continue
        i, j, k, label = click
        params["foreground" if label else "background"].append([i, j, k])
        prediction = model(params)
        scores.append(dice(prediction, truth))
    seconds = round(time.perf_counter() - began, 2)
    if prompt == "challenge":
        auc = float(np.trapz(scores)) if len(scores) > 1 else scores[0]
        return {"dice": scores, "dice_box": box, "dice_auc": auc, "dice_final": scores[-1], "seconds": seconds}
    return {
        "dice": [round(v, 4) for v in scores],
        **{f"dice_{n}": scores[min(n, len(scores)) - 1] for n in reported},
        **{f"noc{round(t * 100)}": noc(scores, t, max_clicks) for t in noc_at},
        "seconds": seconds,
    }


def object_targets(label: np.ndarray) -> dict[str, np.ndarray]:
    """Every connected object of every label value, named ``label_<value>[_<n>]``."""
    values = [int(v) for v in np.unique(label) if v > 0]
    return targets(label, {f"label_{v}": v for v in values})


def mean_scores(objects: list[dict]) -> dict[str, float]:
    keys = [key for key in objects[0] if key.startswith(("dice_", "noc", "seconds"))] if objects else []
    return {key: round(float(np.mean([o[key] for o in objects])), 4) for key in keys}


def structure_scores(run: dict[str, Any], names: dict[str, dict[str, int]]) -> dict[str, dict[str, float]]:
    """Mean scores per ``image/structure`` of a run, over the structure's connected objects; ``names`` maps
    image id -> structure -> label value (a studies folder's ``labels.json``)."""
    rows: dict[str, list[dict]] = {}
    for image_id, image in run["per_image"].items():
        value_names = {f"label_{v}": s for s, v in names[image_id].items()}
        for target, scores in image["objects"].items():
            structure = value_names.get(target) or value_names[target.rsplit("_", 1)[0]]  # label_<v>[_<n>]
            rows.setdefault(f"{image_id}/{structure}", []).append(scores)
    return {name: mean_scores(objects) for name, objects in sorted(rows.items())}


def evaluate_server(
    client: MONAILabelClient,
    cases: list[Case],
    model: str,
    prompt: str,
    max_clicks: int = MAX_CLICKS,
    reported: tuple[int, ...] = REPORTED_CLICKS,
    noc_at: tuple[float, ...] = (0.85, 0.90),
) -> dict[str, Any]:
    """One evaluation run over ``cases``: per-image and mean scores, the Dice-vs-clicks curve, latency."""
    if prompt not in PROMPTS:
        raise ValueError(f"prompt must be one of {', '.join(PROMPTS)}, not {prompt!r}")
    reported = tuple(n for n in reported if n <= max_clicks) or (max_clicks,)  # never report unmade clicks
    began = time.perf_counter()
    datastore_ids = Server(client).datastore_ids()
    per_image, every_object, round_trip, server = {}, [], [], []
    params: dict[str, Any] = {}
    for case in cases:
        label = np.asarray(nib.load(case.truth).dataobj)
        with server_image(client, case, datastore_ids) as (image_id, session_id):
            served = ServerModel(client, model, image_id, session_id)
            objects = {
                name: evaluate_target(served, truth, prompt, max_clicks, reported, noc_at)
                for name, truth in object_targets(label).items()
            }
        round_trip += served.round_trip_ms
        server += served.server_ms
        params = served.last_params or params
        per_image[case.image_id] = {"objects": objects, "mean": mean_scores(list(objects.values()))}
        every_object += objects.values()
        logger.info("%s %s %s: %s", model, prompt, case.image_id, per_image[case.image_id]["mean"])
    curve = []
    if prompt not in BOX_PROMPTS:
        curve = [
            round(float(np.mean([o["dice"][min(n, len(o["dice"])) - 1] for o in every_object])), 4)
            for n in range(1, (CHALLENGE_CLICKS if prompt == "challenge" else max(reported)) + 1)
        ]
    return {
        "model": model,
        "prompt": prompt,
        "model_version": params.get("model_version"),
        "adapter_version": params.get("adapter_version"),
        "images": len(cases),
        "objects": len(every_object),
        "mean": mean_scores(every_object),
        "dice_by_clicks": curve,
        "latency_ms": {"round_trip": percentiles(round_trip), "server": percentiles(server)},
        "seconds": round(time.perf_counter() - began, 1),
        "per_image": per_image,
    }


def touching(prediction: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """The connected components of ``prediction`` that overlap ``truth``."""
    components, _ = ndimage.label(prediction)
    hit = np.unique(components[prediction & truth])
    return np.isin(components, hit[hit > 0])


def auto_object_scores(label: np.ndarray, truth: np.ndarray) -> dict:
    """The first pass's Dice for one target ``truth`` (boolean), on its largest slice and in 3-D."""
    value = int(np.bincount(label[truth].astype(np.int64)).argmax()) if truth.any() else 0
    proposed = (label == value) & (value > 0)
    k = largest_slice(truth)
    on_slice = touching(volume_slice(proposed, k), volume_slice(truth, k))
    return {
        "slice": k,
        "dice_0": dice(on_slice, volume_slice(truth, k)),
        "dice_0_3d": dice(touching(proposed, truth), truth),
    }


def evaluate_auto(client: MONAILabelClient, cases: list[Case], model: str = "sam_auto") -> dict[str, Any]:
    """``sam_auto`` once per image: Dice of each target with 0 clicks (2-D and 3-D), latency."""
    began = time.perf_counter()
    datastore_ids = Server(client).datastore_ids()
    per_image, every_object, round_trip = {}, [], []
    params: dict[str, Any] = {}
    for case in cases:
        truth = np.asarray(nib.load(case.truth).dataobj)
        with server_image(client, case, datastore_ids) as (image_id, session_id):
            served = ServerModel(client, model, image_id, session_id, binary=False)
            label = served({})
        objects = {name: auto_object_scores(label, mask) for name, mask in object_targets(truth).items()}
        round_trip += served.round_trip_ms
        params = served.last_params
        per_image[case.image_id] = {
            "objects": objects,
            "mean": mean_scores(list(objects.values())),
            "proposals": params.get("proposals"),
        }
        every_object += objects.values()
        logger.info("%s %s: %s", model, case.image_id, per_image[case.image_id]["mean"])
    return {
        "model": model,
        "prompt": "auto",
        "model_version": params.get("model_version"),
        "adapter_version": params.get("adapter_version"),
        "images": len(cases),
        "objects": len(every_object),
        "mean": mean_scores(every_object),
        "latency_ms": {"round_trip": percentiles(round_trip)},
        "seconds": round(time.perf_counter() - began, 1),
        "per_image": per_image,
    }


def auto_then_clicks(auto: dict, clicks: dict, dims: str, accept: float = 0.85) -> dict[str, Any]:
    """An annotator after the first pass: a target whose proposal reaches Dice ``accept`` is kept (0
    clicks), the others are clicked from scratch as in ``clicks`` (a sam_2d run for ``dims`` "2d",
    sam_3d for "3d"). Returns mean Dice after 0, 1, 3, 5 clicks, NoC@85 and the clicks saved."""
    key = "dice_0" if dims == "2d" else "dice_0_3d"
    rows, saved = [], []
    for image_id, image in auto["per_image"].items():
        for name, scores in image["objects"].items():
            clicked = clicks["per_image"][image_id]["objects"][name]
            kept = scores[key] >= accept
            row = {"dice_0": scores[key], "kept": float(kept)}
            for n in (1, 3, 5):
                if f"dice_{n}" in clicked:
                    row[f"dice_{n}"] = scores[key] if kept else clicked[f"dice_{n}"]
            if "noc85" in clicked:
                row["noc85"] = 0 if kept else clicked["noc85"]
                saved.append(clicked["noc85"] - row["noc85"])
            rows.append(row)
    mean = {k: round(float(np.mean([r[k] for r in rows])), 4) for k in rows[0]} if rows else {}
    return {
        "accept": accept,
        "objects": len(rows),
        "kept": int(sum(r["kept"] for r in rows)),
        "mean": mean,
        "clicks_saved_per_object": round(float(np.mean(saved)), 3) if saved else None,
    }
