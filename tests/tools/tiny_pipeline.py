"""A tiny random-weight Stable Diffusion 1.5-shaped pipeline, built in code with no download.

It keeps the shapes that matter to an adapter (8× VAE latent factor, 4 latent channels, CLIP
text encoder feeding UNet cross-attention, a real tokenizer) and shrinks everything else, so it
saves to ~4 MB in about 0.1 s and runs a 64×64 step in milliseconds on a CPU. Its images are
noise; tests check sizes, seeds, sharing and control flow, not beauty.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: UNet cross-attention width == text encoder hidden size
TINY_WIDTH = 32


def byte_level_clip_tokenizer(model_max_length: int = 77) -> Any:
    """A working CLIPTokenizer from no files: every byte is a token, with no merges.

    transformers 5 builds CLIPTokenizer from a vocab dict and a merges list. The byte-level
    pre-tokenizer maps each UTF-8 byte to one of 256 printable characters, and BPE marks the
    last piece of a word with `</w>`, so the 256 characters, the same with `</w>` and the two
    specials cover any text.
    """
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    alphabet = sorted(ByteLevel.alphabet())
    vocab: dict[str, int] = {}
    for piece in [*alphabet, *(ch + "</w>" for ch in alphabet), "<|startoftext|>", "<|endoftext|>"]:
        vocab[piece] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=model_max_length)


def tiny_sd_pipeline(seed: int = 0, *, inpainting: bool = False) -> Any:
    """An SD 1.5-shaped `StableDiffusionPipeline` (or the inpainting one, with a 9-channel UNet)."""
    import torch
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionInpaintPipeline,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = byte_level_clip_tokenizer()
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=9 if inpainting else 4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TINY_WIDTH,
        attention_head_dim=(2, 4),
        norm_num_groups=32,
    )
    # four levels, as in SD: three downsamplers keep the real 8× pixel-to-latent factor
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 8, 8, 8),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=64,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=TINY_WIDTH,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            projection_dim=TINY_WIDTH,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    cls = StableDiffusionInpaintPipeline if inpainting else StableDiffusionPipeline
    return cls(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_tiny_sd(path: Path, *, inpainting: bool = False) -> Path:
    """Write the tiny pipeline as a diffusers folder (model_index.json + one folder per component)."""
    tiny_sd_pipeline(inpainting=inpainting).save_pretrained(path)
    return path
