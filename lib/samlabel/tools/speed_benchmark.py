"""Speed of the paths an annotator waits on, measured through a real server's REST API.

Paths: the first click on a slice (the encoder runs), further clicks on it (decoder only), the first
click on a neighbouring slice after the background prefetch, ``sam_3d`` over whole volumes (cold,
after a click, fully cached), one incremental fine-tuning round of 5 saved labels, and resident
memory over many clicks. Each request records its round trip, MONAI Label's ``latencies.total`` and
the SAM part inside the server (``sam_seconds``) with the encoder runs it made itself.
"""

from __future__ import annotations

import functools
import logging
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import psutil
from monailabel.client import MONAILabelClient

from samlabel.evaluation.metrics import roi_of
from samlabel.tools.rest import Server
from samlabel.tools.server_evaluation import percentiles

logger = logging.getLogger(__name__)

SIZE = 256  # in-plane size of the benchmark volumes
BENCHMARK_DEPTHS = [40, 64, 128]  # sam_3d volume depths (scripts/benchmark --depths)
ROUND_LABELS = 5  # labels the fine-tuning round saves: the last volumes of benchmark_specs


def benchmark_specs(depths: list[int]) -> dict[str, tuple[int, int]]:
    """The benchmark's volumes, ``{image_id: (depth, seed)}``: a warm-up, the click volume, and a cold and
    a warm one per depth; the fine-tuning round saves the labels of the last ``ROUND_LABELS``."""
    specs = {"warmup": (3, 1), "clicks": (64, 7)}
    for d in depths:
        specs |= {f"cold_{d}": (d, d), f"warm_{d}": (d, d + 1000)}
    return specs


def benchmark_volume(depth: int, seed: int) -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    """A 256² x ``depth`` CT-like volume (HU) with one soft-tissue tube through every slice, and its label."""
    rng = np.random.default_rng(seed)
    i, j = np.mgrid[:SIZE, :SIZE].astype(np.float32)
    image = np.full((SIZE, SIZE, depth), -1000.0, dtype=np.float32)
    label = np.zeros((SIZE, SIZE, depth), dtype=np.uint8)
    body = ((i - 128) / 110) ** 2 + ((j - 128) / 90) ** 2 <= 1
    centre = rng.uniform(100, 150, size=2)
    for k in range(depth):
        t = k / max(depth - 1, 1)
        ci, cj = centre + 12 * np.sin(2 * np.pi * t + np.array([0.0, 1.0]))
        radius = 22 + 8 * np.sin(np.pi * t)
        tube = (i - ci) ** 2 + (j - cj) ** 2 <= radius**2
        image[..., k][body] = 0.0
        image[..., k][tube] = 90.0
        label[..., k] = tube
    image += rng.normal(0, 12, image.shape).astype(np.float32)
    affine = np.diag([0.8, 0.8, 2.0, 1.0])
    return nib.Nifti1Image(image, affine), nib.Nifti1Image(label, affine)


def write_volumes(
    studies: Path, specs: dict[str, tuple[int, int]], truth_dir: Path | None = None
) -> dict[str, np.ndarray]:
    """Write ``{image_id: (depth, seed)}`` into ``studies`` (and their labels into ``truth_dir``);
    returns each image's label array."""
    studies.mkdir(parents=True, exist_ok=True)
    labels = {}
    for image_id, (depth, seed) in specs.items():
        image, label = benchmark_volume(depth, seed)
        nib.save(image, studies / f"{image_id}.nii.gz")
        if truth_dir is not None:
            truth_dir.mkdir(parents=True, exist_ok=True)
            nib.save(label, truth_dir / f"{image_id}.nii.gz")
        labels[image_id] = np.asarray(label.dataobj)
    return labels


def server_rss(server_pid: int) -> int:
    """Resident bytes of the MONAI Label server process (the ``monailabel`` launcher's python child)."""
    root = psutil.Process(server_pid)
    for proc in [root, *root.children(recursive=True)]:
        if "monailabel.main" in " ".join(proc.cmdline()):
            return proc.memory_info().rss
    return root.memory_info().rss


class Timer:
    """Named samples of ``{round_trip, server, sam, encoder_runs}`` per request, summarised as p50/p95/n."""

    def __init__(self, client: MONAILabelClient):
        self.server = Server(client)
        self.samples: dict[str, list[dict[str, float]]] = {}

    def infer(self, path: str, model: str, image: str, params: dict[str, Any]) -> dict[str, Any]:
        answer = self.server.infer(model, image, params, read=False)
        result = answer.result
        sample = {
            "round_trip": answer.round_trip_s,
            "server": result["latencies"]["total"],
            "sam": result["sam_seconds"],
            "encoder_runs": result["encoder_runs"],
        }
        if path:
            self.samples.setdefault(path, []).append(sample)
        return result

    def engine(self) -> dict[str, Any]:
        return self.server.engine()

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per path: n, each request's own encoder runs, and p50/p95 in ms of each measure."""
        out = {}
        for path, samples in self.samples.items():
            out[path] = {"n": len(samples), "encoder_runs": [int(s["encoder_runs"]) for s in samples]}
            for measure in ("round_trip", "server", "sam"):
                out[path][measure] = ms_percentiles([s[measure] for s in samples])
        return out


def ms_percentiles(seconds: list[float]) -> dict[str, float]:
    """:func:`~samlabel.tools.server_evaluation.percentiles` of ``seconds``, named as milliseconds."""
    p = percentiles([1000 * s for s in seconds])
    return {"p50_ms": p["p50"], "p95_ms": p["p95"]}


def click_paths(timer: Timer, image: str, label: np.ndarray, slices: list[int], further: int) -> None:
    """First click on each slice (after the prefetcher went quiet), ``further`` clicks while it works and
    ``further`` once it is done, then the first click on the next slice, which it encoded."""
    for k in slices:
        rows, cols = np.nonzero(label[:, :, k])
        centre = [int(rows.mean()), int(cols.mean()), k]
        points = [centre]
        timer.server.wait_for_background()
        timer.infer("first_click", "sam_2d", image, {"foreground": points, "label": "organ", "slice": k})
        for stage in ("further_click_while_prefetching", "further_click"):
            if stage == "further_click":
                timer.server.wait_for_background()
            for n in range(further):
                points = [*points, [centre[0] + 2 * (n % 5) - 4, centre[1] + 3 - n % 7, k]]
                params = {"foreground": points, "label": "organ", "slice": k}
                timer.infer(stage, "sam_2d", image, params)
        neighbour = k + 1
        rows, cols = np.nonzero(label[:, :, neighbour])
        params = {"foreground": [[int(rows.mean()), int(cols.mean()), neighbour]], "label": "organ", "slice": neighbour}
        timer.infer("neighbour_click_prefetched", "sam_2d", image, params)


def volume_paths(timer: Timer, cold: str, warm: str, label: np.ndarray, truth_warm: np.ndarray) -> dict[str, Any]:
    """``sam_3d`` over a whole volume: on an unseen one, after one click (prefetched), and again (cached)."""
    depth = label.shape[2]
    roi = {"roi": roi_of(label > 0), "label": "organ"}
    result = timer.infer(f"sam_3d_{depth}_cold", "sam_3d", cold, roi)
    slices = result["slices"][1] - result["slices"][0] + 1
    mid = depth // 2
    rows, cols = np.nonzero(truth_warm[:, :, mid])
    timer.infer("", "sam_2d", warm, {"foreground": [[int(rows.mean()), int(cols.mean()), mid]], "slice": mid})
    timer.server.wait_for_background()
    timer.infer(f"sam_3d_{depth}_after_click", "sam_3d", warm, {"roi": roi_of(truth_warm > 0), "label": "organ"})
    timer.infer(f"sam_3d_{depth}_cached", "sam_3d", cold, roi)
    return {"depth": depth, "slices_propagated": slices}


def fine_tuning_round(client: MONAILabelClient, truths: dict[str, Path], timeout: float) -> dict[str, Any]:
    """Save 5 final labels (the server's ``train_every`` is 5) and time the run they trigger: until the
    server serves its version (what the next click gets), or until the run ends if the gate rejects it."""
    server = Server(client)
    runs_before, served_before = server.runs_started(), server.served_version()
    saved_at, saved_epoch = None, None
    for n, (image_id, truth) in enumerate(truths.items(), 1):
        if n == len(truths):  # annotators take minutes per label: what the earlier saves set going is done
            server.wait_for_background()
        client.save_label(image_id, str(truth), tag="final")
        saved_at, saved_epoch = time.monotonic(), time.time()
    served_at, deadline = None, time.monotonic() + timeout
    while served_at is None and (server.runs_started() <= runs_before or server.training()):
        if server.served_version() != served_before:
            served_at = time.monotonic()
        elif time.monotonic() > deadline:
            raise TimeoutError(f"no new version served after {timeout:.0f} s")
        time.sleep(0.25)
    server.wait_for_run(runs_before, timeout)  # its stats are written last
    seconds = (served_at or time.monotonic()) - saved_at
    stats = server.train_stats()
    timing = dict(stats.get("timing", {}))
    breakdown = {"start_up_seconds": round(timing.pop("started_at", saved_epoch) - saved_epoch, 1), **timing}
    phases = sum(v for k, v in timing.items() if k.endswith("_seconds"))
    breakdown["served_after_publish_seconds"] = round(max(seconds - breakdown["start_up_seconds"] - phases, 0.0), 1)
    return {
        "labels": len(truths),
        "seconds": round(seconds, 1),
        "served": served_at is not None,
        "breakdown": breakdown,
        "train_stats": stats,
    }


def memory_over_clicks(timer: Timer, pid: int, labels: dict[str, np.ndarray], clicks: int) -> dict[str, Any]:
    """Resident memory of the server, 20 times over ``clicks`` clicks spread over the volumes (10 clicks
    per random slice), with the embedding cache's fill."""
    every = max(1, clicks // 20)
    rng = np.random.default_rng(0)
    trace = [{"clicks": 0, "rss_mb": server_rss(pid) / 2**20, "cache_mb": timer.engine()["cache"]["bytes"] / 2**20}]
    images = list(labels)
    done = 0
    while done < clicks:
        image = images[(done // 10) % len(images)]
        label = labels[image]
        k = int(rng.integers(1, label.shape[2] - 1))
        rows, cols = np.nonzero(label[:, :, k])
        points = []
        for _ in range(min(10, clicks - done)):
            n = int(rng.integers(len(rows)))
            points.append([int(rows[n]), int(cols[n]), k])
            timer.infer("", "sam_2d", image, {"foreground": points, "label": "organ", "slice": k})
            done += 1
            if done % every == 0:
                cache = timer.engine()["cache"]
                trace.append({"clicks": done, "rss_mb": server_rss(pid) / 2**20, "cache_mb": cache["bytes"] / 2**20})
    limit = timer.engine()["cache"]["max_bytes"] / 2**20
    return {"clicks": clicks, "volumes": len(images), "cache_max_mb": limit, "trace": trace}


def ratios(ours: dict[str, Any], baseline_p50_ms: float) -> dict[str, float]:
    """How many times faster each of our click paths' round-trip p50 is than a peer's p50 per click
    (the peers are 2-D: ``sam_3d`` over a volume has no per-click counterpart there)."""
    clicks = {path: r for path, r in ours.items() if not path.startswith("sam_3d")}
    return {path: round(baseline_p50_ms / r["round_trip"]["p50_ms"], 1) for path, r in clicks.items()}


def encoder_throughput(model_name: str, img_size: int, passes: int, batch: int) -> dict[str, float]:
    """Image-encoder slices per second in-process: PyTorch fp32 (and bf16 autocast on a GPU, batched),
    and on CPU the exported graph on ONNX Runtime and on OpenVINO (fp32 and bf16). Random inputs and
    weights: the speed does not depend on them."""
    import torch

    from samlabel.model.onnx_runtime import OnnxEncoder, encoder_graph, onnxruntime_available
    from samlabel.model.openvino_runtime import OpenVinoEncoder, openvino_available
    from samlabel.model.registry import build_model

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build_model(model_name, img_size).to(device)
    batch = batch if device.type == "cuda" else 1  # batching does not pay on CPU
    x = torch.rand(batch, 3, img_size, img_size, device=device)
    variants: dict[str, Callable[[], Any]] = {"torch_fp32": lambda: model.image_encoder(x)}
    if device.type == "cuda":
        variants["torch_bf16"] = lambda: _autocast_bf16(model.image_encoder, x)
    elif onnxruntime_available():
        graph, _ = encoder_graph(model.cpu(), img_size)
        variants["onnxruntime_fp32"] = functools.partial(OnnxEncoder(graph, True), x)
        if openvino_available():
            variants["openvino_fp32"] = functools.partial(OpenVinoEncoder(graph, True), x)
            variants["openvino_bf16"] = functools.partial(OpenVinoEncoder(graph, True, "bf16"), x)
    out = {"batch": batch}
    with torch.inference_mode():
        for name, run in variants.items():
            run()  # warm-up
            _sync(device)
            began = time.perf_counter()
            for _ in range(passes):
                run()
            _sync(device)
            out[f"{name}_slices_per_s"] = round(passes * batch / (time.perf_counter() - began), 2)
    return out


def _autocast_bf16(module, x):
    import torch

    with torch.autocast("cuda", dtype=torch.bfloat16):
        return module(x)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def environment() -> dict[str, Any]:
    import onnxruntime
    import torch

    from samlabel.model.openvino_runtime import openvino_available, openvino_version

    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else f"{cpu}, {os.cpu_count()} cores"
    return {
        "device": name,
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "openvino": openvino_version() if openvino_available() else None,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }


def run_with_server(start: Callable[..., tuple[Any, str]], stop: Callable[[Any], None], studies: Path, log: Path, body):
    """Start a server on ``studies``, wait until it is idle, run ``body(timer, client, url, proc)``, stop it."""
    proc, url = start(studies, log)
    try:
        client = MONAILabelClient(url, tmpdir=tempfile.mkdtemp(prefix="samlabel-bench-"))
        timer = Timer(client)
        timer.server.wait_for_scoring(1800)  # start-up scoring would compete for the CPU
        return body(timer, client, url, proc)
    finally:
        stop(proc)
