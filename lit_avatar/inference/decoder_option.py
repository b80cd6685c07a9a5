"""`--decoder full|tiny` and `--decoder-path`: which decoder turns a stream's latents into frames.

`tiny` keeps the checkpoint's VAE for encoding the reference (the model's latent space) and decodes with
a TAEHV taew2_1 decoder (lit_avatar.models.taehv), which costs a small fraction of the Wan VAE's decode.
"""
from __future__ import annotations

from argparse import ArgumentParser

from torch import nn

from lit_avatar.errors import UserError, existing_file

__all__ = ["DECODERS", "add_decoder_arguments", "check_decoder_arguments", "with_decoder"]

DECODERS = ("full", "tiny")
WHAT = "a TAEHV taew2_1 .pth or .safetensors file"


def add_decoder_arguments(parser: ArgumentParser) -> None:
    """Add --decoder and --decoder-path to a command's parser."""
    parser.add_argument("--decoder", default="full", choices=DECODERS, help="full: the checkpoint's VAE decoder; "
                        "tiny: a TAEHV taew2_1 decoder for Wan 2.1 latents (much faster, softer detail; needs "
                        "--decoder-path)")
    parser.add_argument("--decoder-path", default=None, help=f"with --decoder tiny: {WHAT}")


def check_decoder_arguments(decoder: str, path: str | None) -> None:
    """Refuse a missing or unused --decoder-path before anything heavy is loaded.

    Args:
        decoder: "full" or "tiny".
        path: --decoder-path.
    """
    if decoder == "tiny":
        if path is None:
            raise UserError(f"--decoder tiny needs --decoder-path PATH ({WHAT})")
        existing_file(path, WHAT, "--decoder-path")
    elif path is not None:
        raise UserError(f"--decoder-path {path}: only used with --decoder tiny (got --decoder {decoder})")


def with_decoder(vae: nn.Module, decoder: str, path: str | None) -> nn.Module:
    """The checkpoint's VAE as it is (`full`), or encoding with it and decoding with the tiny decoder.

    Args:
        vae: the checkpoint's VideoVAE.
        decoder: "full" or "tiny".
        path: the tiny decoder's weights (with "tiny").
    """
    check_decoder_arguments(decoder, path)
    if decoder == "full":
        return vae
    from lit_avatar.models.taehv import TinyDecodedVAE, load_tiny_decoder

    return TinyDecodedVAE(vae, load_tiny_decoder(path))  # a module: the streamer's .to(device) moves both
