"""Concurrent simulated annotators against one server, each checking its own answers, while ``/info``
is polled (it must never wait for inference). Used by ``scripts/load_test`` and the hardening tests.

Each annotator works on its own image, organ and slice with the real MONAI Label client: it clicks
where :func:`~samlabel.evaluation.simulated_user.next_click` says, three clicks per round (refinement), then
starts a new round. A result is *wrong* when it has voxels off the annotator's slice, another label
value, or a Dice below ``min_dice`` with the annotator's own truth: the signs of cross-talk.
"""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import requests

from samlabel.evaluation.metrics import dice, largest_slice
from samlabel.evaluation.simulated_user import next_click
from samlabel.tools.rest import Server
from samlabel.tools.server_evaluation import percentiles

CLICKS_PER_ROUND = 3


@dataclass(frozen=True)
class Annotator:
    name: str
    image: str
    label: str
    value: int
    k: int
    truth: np.ndarray  # the organ on slice k, (H, W) bool


def annotators(truths: dict[str, np.ndarray], organs: dict[str, int], count: int) -> list[Annotator]:
    """``count`` annotators spread over the images and organs, each on a slice of its own."""
    images, names = sorted(truths), sorted(organs)
    team = []
    for n in range(count):
        image, label = images[n % len(images)], names[(n // len(images)) % len(names)]
        volume = truths[image] == organs[label]
        k = largest_slice(volume) + 2 * (n // (len(images) * len(names)))
        team.append(Annotator(f"annotator{n}", image, label, organs[label], k, volume[:, :, k]))
    return team


def check(result: np.ndarray, who: Annotator, min_dice: float) -> str | None:
    """Why ``result`` is not an answer to ``who``'s own request, or None."""
    off_slice = np.delete(result, who.k, axis=2)
    if off_slice.any():
        return f"voxels on slices other than {who.k}"
    values = set(np.unique(result).tolist()) - {0}
    if values - {who.value}:
        return f"label values {sorted(values)} instead of {who.value}"
    score = dice(result[:, :, who.k] > 0, who.truth)
    return None if score >= min_dice else f"Dice {score:.2f} with its own target"


def work(url: str, who: Annotator, n_requests: int, tmpdir: Path, min_dice: float) -> list[dict[str, Any]]:
    server = Server.at(url, tmpdir / who.name)
    (tmpdir / who.name).mkdir(parents=True, exist_ok=True)
    records, clicks, prediction = [], {"foreground": [], "background": []}, None
    for n in range(n_requests):
        if n % CLICKS_PER_ROUND == 0:
            clicks, prediction = {"foreground": [], "background": []}, None
        click = next_click(who.truth, prediction, np.random.default_rng(n))
        if click is not None:
            row, col, positive = click
            clicks["foreground" if positive else "background"].append([row, col, who.k])
        params = {**clicks, "label": who.label, "slice": who.k}
        began = time.perf_counter()
        record: dict[str, Any] = {"annotator": who.name, "request": n}
        try:
            result = server.infer("sam_2d", who.image, params).label
            prediction = result[:, :, who.k] > 0
            record["wrong"] = check(result, who, min_dice)
        except Exception as e:  # noqa: BLE001 - every failure is counted and reported
            record["error"] = f"{type(e).__name__}: {str(e)[:300]}"
        record["ms"] = 1000 * (time.perf_counter() - began)
        records.append(record)
    return records


def _poll(url: str, period: float, stop, out) -> None:
    ms, at, failures, training = [], [], [], set()
    server = Server.at(url)
    start = time.time()
    while not stop.is_set():
        began = time.perf_counter()
        try:
            answer = requests.get(f"{url}/info/", timeout=30)
            ms.append(1000 * (time.perf_counter() - began))
            at.append(round(time.time() - start, 2))
            if not answer.ok:
                failures.append(f"{answer.status_code}: {answer.text[:200]}")
            status = server.train_status()
            if status:
                training.add(status.get("status", ""))
        except requests.RequestException as e:
            failures.append(str(e))
        stop.wait(period)
    slowest = sorted(zip(ms, at, strict=True), reverse=True)[:5]
    out.put(
        {
            "ms": ms,
            "slowest": [{"ms": round(m, 1), "at_s": t} for m, t in slowest],
            "start": start,
            **{"failures": failures, "training": sorted(training)},
        }
    )


class InfoPoller:
    """Polls ``/info/`` every ``period`` seconds and keeps each answer's latency. It runs in its own
    process, so the annotator threads' work on this side cannot delay it and only the server is timed."""

    def __init__(self, url: str, period: float = 0.25):
        context = multiprocessing.get_context("spawn")
        self._stop, self._out = context.Event(), context.Queue()
        self._process = context.Process(target=_poll, args=(url, period, self._stop, self._out), daemon=True)
        self.result: dict[str, Any] = {}

    def __enter__(self) -> InfoPoller:
        self._process.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.result = self._out.get(timeout=120)
        self._process.join()


def run_load(url: str, team: list[Annotator], n_requests: int, tmpdir: Path, min_dice: float = 0.5) -> dict[str, Any]:
    """Every annotator sends ``n_requests`` at once with the others; returns the JSON-ready summary."""
    began = time.perf_counter()
    with InfoPoller(url) as info, ThreadPoolExecutor(len(team)) as pool:
        runs = list(pool.map(lambda who: work(url, who, n_requests, tmpdir, min_dice), team))
    records = [r for run in runs for r in run]
    return {
        "annotators": len(team),
        "requests_each": n_requests,
        "requests": len(records),
        "seconds": round(time.perf_counter() - began, 1),
        "errors": [r for r in records if "error" in r],
        "wrong": [r for r in records if r.get("wrong")],
        "infer_ms": percentiles([r["ms"] for r in records if "error" not in r]),
        "info_ms": {**percentiles(info.result["ms"]), "max": round(max(info.result["ms"], default=0.0), 1)},
        "info_slowest": info.result["slowest"],
        "info_failures": info.result["failures"],
        "training_status_seen": info.result["training"],
        "team": [{"name": a.name, "image": a.image, "label": a.label, "slice": a.k} for a in team],
    }
