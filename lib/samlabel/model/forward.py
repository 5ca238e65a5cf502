"""The one prompt -> mask forward of SAM, shared by serving (PyTorch runtime) and training."""

from __future__ import annotations

import torch
from segment_anything.modeling import Sam


def predict_masks(
    model: Sam,
    embedding: torch.Tensor,
    points: tuple[torch.Tensor, torch.Tensor] | None,
    boxes: torch.Tensor | None,
    mask_input: torch.Tensor | None,
    multimask: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt encoder + mask decoder with gradients enabled: the one forward for serving and training.

    ``embedding`` 1x256xhxw; ``points`` (BxNx2 model-input ``(x, y)``, BxN labels 1/0); ``boxes`` Bx4 XYXY;
    ``mask_input`` Bx1x(4h)x(4w) logits. Returns low-res logits BxMx(4h)x(4w) and predicted IoU BxM,
    M = 3 with ``multimask`` else 1. (``Sam.forward`` is ``@torch.no_grad`` and cannot be trained.)
    """
    sparse, dense = model.prompt_encoder(points=points, boxes=boxes, masks=mask_input)
    return model.mask_decoder(
        image_embeddings=embedding,
        image_pe=model.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=multimask,
    )
