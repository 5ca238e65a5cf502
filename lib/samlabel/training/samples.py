"""Training samples: one 2-D object on one slice, with the slice's image embedding.

The image encoder's base weights are frozen; while the adapters are not trained (the CPU recipe) the
embedding of a slice never changes, so it is taken through the serving engine (its cache, and the
server's embedding store on disk) and every click-simulation step reuses it; such a run trains on the
slices as saved. When the encoder trains it runs on every step anyway, and volumes get MONAI intensity
and flip augmentation first (:func:`augmentation`). When SD-Trans adapters train, a sample also carries
its slice's stack (the slices the engine encodes together).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from monai.transforms import Compose, RandAdjustContrastd, RandFlipd, RandGaussianNoised, RandScaleIntensityd
from tqdm import tqdm

from samlabel.inference.engine import SamEngine
from samlabel.inference.geometry import volume_slice
from samlabel.inference.objects import label_objects


@dataclass(frozen=True)
class SliceSample:
    """An object mask ``(H, W)`` on slice ``k`` of volume ``volume``; the slice's model input and embedding."""

    volume: str
    k: int
    mask: np.ndarray
    image: torch.Tensor  # 3xSxS, for training with the encoder in the loop (adapters)
    embedding: torch.Tensor  # of the base encoder, for training the decoder side only
    stack: torch.Tensor | None = None  # Dx3xSxS: the slice's stack, for SD-Trans adapters
    stack_index: int = 0  # the slice's place in it


def augmentation(seed: int) -> Compose:
    """Intensity (contrast, scale, noise) and flip augmentation of a [0, 1] volume and its label."""
    transforms = Compose(
        [
            RandFlipd(keys=("image", "label"), prob=0.5, spatial_axis=0),
            RandFlipd(keys=("image", "label"), prob=0.5, spatial_axis=1),
            RandAdjustContrastd(keys="image", prob=0.7, gamma=(0.6, 1.6)),
            RandScaleIntensityd(keys="image", prob=0.5, factors=0.2),
            RandGaussianNoised(keys="image", prob=0.5, std=0.03),
        ]
    )
    transforms.set_random_state(seed)
    return transforms


def training_slices(label: np.ndarray, slice_step: int) -> list[int]:
    """Every ``slice_step``-th slice that holds a label: the slices a run takes samples from."""
    return [int(k) for k in np.flatnonzero(label.any(axis=(0, 1)))[::slice_step]]


def slice_samples(
    engine: SamEngine,
    volumes: list[tuple[str, np.ndarray, np.ndarray]],
    slice_step: int,
    augment: Callable[[dict], dict] | None = None,
    min_size: int | None = None,
) -> list[SliceSample]:
    """Samples from ``(name, volume01, label)`` triples, every ``slice_step``-th slice that holds a label;
    ``augment`` (e.g. :func:`augmentation`) transforms each ``{"image", "label"}`` volume pair first;
    ``min_size``: the smallest object, in pixels (see :func:`~samlabel.inference.objects.label_objects`)."""
    samples = []
    # an augmented volume is seen by this run only: its embeddings stay off the shared store
    with engine.embeddings.memory_only() if augment is not None else contextlib.nullcontext():
        for name, volume01, label in tqdm(volumes, desc="embedding slices", unit="volume"):
            if augment is not None:
                data = augment({"image": volume01[None], "label": label[None]})
                volume01 = np.clip(np.asarray(data["image"][0], dtype=np.float32), 0, 1)
                label = np.asarray(data["label"][0]).astype(label.dtype)
            ks = training_slices(label, slice_step)
            stacks: dict[tuple[int, ...], torch.Tensor] = {}  # shared by the samples of one stack
            for k in ks:
                objects = [
                    m for _, m in label_objects(volume_slice(label, int(k)), min_size=min_size)
                ]  # one prompt each
                if objects:
                    image = engine.model_input(volume01, int(k))
                    embedding = engine.embed(volume01, int(k)).cpu().clone()  # a normal tensor, usable in autograd
                    stack, index = None, 0
                    if engine.stack_depth > 1:
                        unit = engine.stack(volume01.shape[2], int(k))
                        if unit not in stacks:
                            stacks[unit] = torch.stack([engine.model_input(volume01, j) for j in unit])
                        stack, index = stacks[unit], unit.index(int(k))
                    samples += [SliceSample(name, int(k), mask, image, embedding, stack, index) for mask in objects]
    return samples
