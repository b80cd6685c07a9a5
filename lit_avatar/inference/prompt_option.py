"""`--prompt`, `--negative-prompt`, `--text-guidance`, `--prompt-cache`: what a stream is told in words.

The prompt is embedded by the text encoder the checkpoint's record names (`GeneratorBundle.text_encoder`, a
PromptEncoder: each prompt encoded once, then read from the disk cache). A checkpoint trained without text has
no encoder to embed with, and its DiT only ever saw the null text: a prompt for it is refused, naming it.

The student samples without guidance (it was distilled from the guided teacher), so a negative prompt means
nothing to it by default. `--text-guidance G` (G != 1) adds guidance on top: each denoising forward runs under
the prompt and under the negative prompt (default: the null text), v = v_neg + G (v - v_neg), the cached text
state swapped in place between the two (Rollout.set_text_guidance). Twice the denoising cost; and only an
approximation of the teacher's text CFG: the negative branch reads the context frames and reference sink made
under the prompt.
"""
from __future__ import annotations

import math
from argparse import ArgumentParser

import torch

from lit_avatar.errors import UserError

__all__ = ["add_prompt_arguments", "check_prompt_arguments", "embed_prompts"]

MAX_PROMPT_CHARS = 2000  # umT5 reads 512 tokens; a longer text is truncated anyway


def add_prompt_arguments(parser: ArgumentParser) -> None:
    """Add --prompt, --negative-prompt, --text-guidance and --prompt-cache to a command's parser."""
    parser.add_argument("--prompt", default=None, help="what the avatar should look like or do, e.g. 'a woman "
                        "talking, smiling' (needs a checkpoint trained with captions: its record names a text "
                        "encoder)")
    parser.add_argument("--negative-prompt", default=None, help="with --text-guidance G != 1: what to steer away "
                        "from (default: the learned null text)")
    parser.add_argument("--text-guidance", type=float, default=1.0, help="text guidance scale on top of the "
                        "distilled student (1: off; G != 1 runs two forwards per denoising step: 2x the DiT cost)")
    parser.add_argument("--prompt-cache", default=None, help="folder of cached prompt embeddings (default: "
                        "$LIT_AVATAR_PROMPT_CACHE or ~/.cache/lit_avatar/prompts)")


def _check_text(text: str | None, flag: str) -> None:
    if text is not None and len(text) > MAX_PROMPT_CHARS:
        raise UserError(f"{flag}: {len(text)} characters; expected at most {MAX_PROMPT_CHARS}")


def check_prompt_arguments(args, record: dict, checkpoint: str, cuda_graphs: bool = False) -> None:
    """Refuse prompt options that cannot work, before anything heavy is built.

    Args:
        args: parsed options with prompt, negative_prompt, text_guidance.
        record: the checkpoint's generator record (read, not built).
        checkpoint: its path, for the message.
        cuda_graphs: --cuda-graphs was given.
    """
    _check_text(args.prompt, "--prompt")
    _check_text(args.negative_prompt, "--negative-prompt")
    guided = args.text_guidance != 1.0
    if not math.isfinite(args.text_guidance) or args.text_guidance <= 0:
        raise UserError(f"--text-guidance {args.text_guidance}: expected a positive number (1: off)")
    if args.negative_prompt is not None and not guided:
        raise UserError("--negative-prompt is only used with --text-guidance G != 1 (the student samples "
                        "without guidance)")
    if guided and args.prompt is None:
        raise UserError("--text-guidance needs --prompt (guidance steers toward a prompt)")
    if args.prompt is not None and not record.get("text_encoder"):
        raise UserError(f"{checkpoint}: trained without text (its record names no text encoder); --prompt needs a "
                        "checkpoint trained with captions")
    if guided and cuda_graphs and args.negative_prompt is None:
        raise UserError("--text-guidance with --cuda-graphs needs --negative-prompt: swapping the prompt's K/V "
                        "with the one-token null text changes the graphs' inputs at every forward")


def embed_prompts(args, text_encoder, text_dim: int, checkpoint: str,
                  device: torch.device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(prompt, negative prompt) embeddings [1, L, text_dim] on `device`, each None when not given.

    Args:
        args: parsed options (check_prompt_arguments passed).
        text_encoder: the bundle's PromptEncoder (None when the checkpoint has none).
        text_dim: the DiT's text width.
        checkpoint: its path, for the message.
        device: where the stream runs.
    """
    if args.prompt is None:
        return None, None
    if args.prompt_cache is not None:
        text_encoder.use_cache(args.prompt_cache)
    if text_encoder.text_dim != text_dim:
        raise UserError(f"{checkpoint}: its text encoder makes {text_encoder.text_dim}-d embeddings, its DiT "
                        f"reads {text_dim}-d text")
    texts = [args.prompt] + ([args.negative_prompt] if args.negative_prompt is not None else [])
    embedded = text_encoder(texts, device=device)
    return embedded[:1], embedded[1:] if len(texts) > 1 else None
