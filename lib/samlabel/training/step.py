"""One training sample's loss under iterative click simulation (SAM-Med2D style).

A few earlier clicks are simulated without gradients, each from the error of the previous prediction,
whose logits become the next ``mask_input``; the last click is trained. A share of samples gets a
jittered box instead, so the box accuracy LiteMedSAM was trained for is kept. A lone click asks for
SAM's three masks and learns from the best one (SAM's ambiguity-aware loss); the IoU head learns the
real IoU of every mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceFocalLoss
from segment_anything.modeling import Sam

from samlabel.adapters.layers import adapter_kind, conditioned_on, prompt_condition, stack_of
from samlabel.evaluation.simulated_user import next_click
from samlabel.inference.geometry import SliceGeometry, mask_box
from samlabel.model.forward import predict_masks
from samlabel.training.samples import SliceSample


@dataclass(frozen=True)
class StepSettings:
    box_share: float = 0.25  # share of samples prompted with a box
    max_prior_clicks: int = 4  # up to this many clicks simulated (without gradients) before the trained one
    first_click_share: float = 0.2  # share of click samples that train a lone first click (the rest: 1..max earlier)
    box_jitter: int = 4  # pixels of random box enlargement, as MedSAM trained
    iou_weight: float = 1.0


class InteractiveLoss:
    """Dice + focal on the low-res logits (MONAI), plus MSE of the predicted IoU."""

    def __init__(self, settings: StepSettings):
        self.settings = settings
        self.mask_loss = DiceFocalLoss(sigmoid=True, reduction="none")

    def __call__(self, logits: torch.Tensor, iou_pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``logits`` 1xMxhxw, ``iou_pred`` 1xM, ``target`` 1x1xhxw -> the loss of the best of the M masks."""
        masks = logits.shape[1]
        per_mask = self.mask_loss(logits.transpose(0, 1), target.expand(masks, -1, -1, -1)).flatten(1).mean(1)
        with torch.no_grad():
            pred = logits[0] > 0
            inter = (pred & target[0].bool()).flatten(1).sum(1).float()
            union = (pred | target[0].bool()).flatten(1).sum(1).float()
            real_iou = inter / union.clamp(min=1)
        return per_mask.min() + self.settings.iou_weight * F.mse_loss(iou_pred[0], real_iou)


def low_res_target(mask_hw: np.ndarray, geometry: SliceGeometry, size: tuple[int, int]) -> torch.Tensor:
    """A slice mask in the decoder's low-res, padded model frame (1x1xhxw float)."""
    model_frame = geometry.image_to_model(torch.from_numpy(mask_hw.astype(np.float32))[None])
    return (F.interpolate(model_frame[None], size=size, mode="area") > 0.5).float()


def _points(clicks: list[tuple[int, int, int]], geometry: SliceGeometry) -> tuple[torch.Tensor, torch.Tensor]:
    ij = np.array([[col, row] for row, col, _ in clicks])
    labels = torch.tensor([[lab for _, _, lab in clicks]])
    return torch.from_numpy(geometry.voxels_to_model(ij))[None], labels


def encode_sample(model: Sam, sample: SliceSample, points=None, boxes=None) -> torch.Tensor:
    """The sample's embedding from the encoder in the loop, as the engine serves it: within its stack
    (SD-Trans), or conditioned on the prompt (HyP-Adpt)."""
    kind = adapter_kind(model)
    if kind == "sd_trans" and sample.stack is not None:
        with stack_of(model, len(sample.stack)):
            return model.image_encoder(sample.stack)[sample.stack_index][None]
    if kind == "hyp_adpt":
        with conditioned_on(model, prompt_condition(model, points, boxes)):
            return model.image_encoder(sample.image[None])
    return model.image_encoder(sample.image[None])


@torch.no_grad()
def click_history(
    model: Sam,
    embedding: torch.Tensor,
    mask: np.ndarray,
    geometry: SliceGeometry,
    n_clicks: int,
    rng: np.random.Generator,
) -> tuple[list[tuple[int, int, int]], torch.Tensor | None, np.ndarray | None]:
    """Up to ``n_clicks`` earlier clicks as the simulated user places them (each in the largest error of the
    prediction so far, which refines the previous one as served), without gradients. Returns the clicks
    ``(row, col, label)``, the last prediction's logits (the next ``mask_input``) and its mask."""
    clicks: list[tuple[int, int, int]] = []
    previous, prediction = None, None
    for _ in range(n_clicks):
        click = next_click(mask, prediction, rng)
        if click is None:
            break
        clicks.append(click)
        multimask = previous is None and len(clicks) == 1
        logits, iou = predict_masks(model, embedding, _points(clicks, geometry), None, previous, multimask=multimask)
        best = int(torch.argmax(iou[0]))
        previous = logits[:, best : best + 1]
        prediction = (geometry.logits_to_slice(previous)[0, 0] > 0).numpy()
    return clicks, previous, prediction


def prior_click_count(settings: StepSettings, rng: np.random.Generator) -> int:
    """How many simulated clicks precede the trained one: none (the first click, the one a new domain needs
    most) for ``first_click_share`` of the samples, else 1..``max_prior_clicks`` alike."""
    if settings.max_prior_clicks == 0 or rng.random() < settings.first_click_share:
        return 0
    return int(rng.integers(1, settings.max_prior_clicks + 1))


def sample_loss(
    model: Sam,
    sample: SliceSample,
    geometry: SliceGeometry,
    loss: InteractiveLoss,
    rng: np.random.Generator,
    encode: bool = False,
) -> torch.Tensor:
    """The loss of one sample, with a random prompt: box, or a click after 0..N simulated clicks.

    ``encode`` runs the image encoder in the loop (needed when its adapters train); otherwise the
    sample's precomputed embedding is used. A prompt-conditioned encoder is run once, for the trained
    prompt; the simulated earlier clicks use the precomputed (unconditioned) embedding.
    """
    settings = loss.settings
    conditioned = encode and adapter_kind(model) == "hyp_adpt"
    embedding = encode_sample(model, sample) if encode and not conditioned else sample.embedding
    target = low_res_target(sample.mask, geometry, tuple(model.prompt_encoder.mask_input_size))
    if rng.random() < settings.box_share:
        i0, i1, j0, j1 = mask_box(sample.mask)
        h, w = sample.mask.shape
        jitter = rng.integers(0, settings.box_jitter + 1, 4)
        box = geometry.box_to_model(
            max(i0 - jitter[0], 0), min(i1 + jitter[1], w - 1), max(j0 - jitter[2], 0), min(j1 + jitter[3], h - 1)
        )
        boxes = torch.from_numpy(box)[None]
        if conditioned:
            embedding = encode_sample(model, sample, None, boxes)
        logits, iou = predict_masks(model, embedding, None, boxes, None, multimask=False)
        return loss(logits, iou, target)

    n_prior = prior_click_count(settings, rng)
    clicks, previous, prediction = click_history(model, embedding, sample.mask, geometry, n_prior, rng)
    click = next_click(sample.mask, prediction, rng) or clicks[-1]
    clicks.append(click)
    multimask = previous is None and len(clicks) == 1
    points = _points(clicks, geometry)
    if conditioned:
        embedding = encode_sample(model, sample, points, None)
    logits, iou = predict_masks(model, embedding, points, None, previous, multimask=multimask)
    return loss(logits, iou, target)
