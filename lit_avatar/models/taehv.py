"""A tiny decoder for Wan 2.1 latents in the TAEHV `taew2_1` layout, and the VideoVAE that decodes with it.

TAEHV (madebyollin/taehv) is a distilled stand-in for a video VAE: 2-D convolutions per frame, with
"memory" blocks that also see the previous frame's activations at their depth, and 1x1 convolutions
that turn one frame into several (4x in time over two stages) and nearest upsampling (8x in space over
three stages). Written here from its public description and code; the module indices of `decoder`
are those of the published weights (`decoder.<index>.…`), so a `taew2_1.pth` or `.safetensors` file
loads as it is. It decodes the normalised latents the diffusion model produces (the taew2_1 weights
were trained on them: their diffusers wrapper sets latents_mean 0 and latents_std 1), like `WanVAE`.

Because each memory block looks one frame back at its own depth, decoding a stream chunk by chunk with
the last frame of every memory block carried over gives the same frames as decoding the whole clip.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from lit_avatar.errors import UserError, existing_file

__all__ = ["TinyDecodedVAE", "TinyDecoder", "TinyStreamDecoder", "load_tiny_decoder"]

WAN21_WIDTHS = (256, 128, 64, 64)
TIME_GROWTH = (1, 2, 2)  # frames made per frame in each of the three stages: 4x in all, as Wan's VAE
# Sequential indices of the convolutions whose shapes give the widths (stem, the three stage outputs, head)
_STEM, _STAGE_OUT, _HEAD = 1, (8, 14, 20), 22


def _conv3(n_in: int, n_out: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, bias=bias)


class _SoftClamp(nn.Module):
    """tanh squashing of latents to (-3, 3): outliers cannot blow up the first convolution."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


class _MemBlock(nn.Module):
    """Residual block over [this frame, the previous frame] at this depth (zeros before the first frame)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(_conv3(2 * width, width), nn.ReLU(), _conv3(width, width), nn.ReLU(),
                                  _conv3(width, width))

    def forward(self, x: torch.Tensor, past: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(torch.cat([x, past], dim=1)) + x)


class _TimeGrow(nn.Module):
    """A 1x1 convolution making `stride` frames of each frame: output channels are grouped by frame."""

    def __init__(self, width: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(width, width * stride, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames, channels, height, width = x.shape
        return self.conv(x).reshape(frames * self.stride, channels, height, width)


class TinyDecoder(nn.Module):
    """TAEHV decoder: latents [B, C, t, h, w] -> video [B, 3, 1 + 4*(t-1), 8h, 8w] in [-1, 1].

    The network makes 4 frames per latent; the first 3 of the first latent are dropped, which puts its
    output on Wan's causal grid (latent 0 is frame 0 alone).

    Args:
        latent_channels: C (16 for Wan 2.1).
        widths: channels of the stem and of the three stages' outputs (taew2_1: 256, 128, 64, 64).
    """

    temporal_factor = 4
    spatial_factor = 8

    def __init__(self, latent_channels: int = 16, widths: tuple[int, int, int, int] = WAN21_WIDTHS) -> None:
        super().__init__()
        self.latent_channels = latent_channels
        self.widths = tuple(widths)
        layers: list[nn.Module] = [_SoftClamp(), _conv3(latent_channels, widths[0]), nn.ReLU()]
        for stage, grow in enumerate(TIME_GROWTH):
            width = widths[stage]
            layers += [_MemBlock(width), _MemBlock(width), _MemBlock(width)]
            layers += [nn.Upsample(scale_factor=2), _TimeGrow(width, grow), _conv3(width, widths[stage + 1], False)]
        layers += [nn.ReLU(), _conv3(widths[-1], 3)]
        self.decoder = nn.Sequential(*layers)

    @property
    def dtype(self) -> torch.dtype:
        """dtype of the weights."""
        return self.decoder[_STEM].weight.dtype

    def run(self, latents: torch.Tensor, memory: dict[int, torch.Tensor]) -> torch.Tensor:
        """All 4t frames of t latents [B, C, t, h, w], untrimmed, unclamped, in [0, 1] scale.

        Args:
            latents: the latents.
            memory: per memory block, the last frame it saw before these latents (read and updated; empty
                at the start of a video).
        """
        if latents.dim() != 5 or latents.shape[1] != self.latent_channels:
            raise ValueError(f"latents must be [B, {self.latent_channels}, t, h, w], got shape {tuple(latents.shape)}")
        batch = latents.shape[0]
        x = latents.to(self.dtype).transpose(1, 2).flatten(0, 1)  # frames of all videos as one batch
        for index, layer in enumerate(self.decoder):
            x = layer(x, _previous_frames(x, batch, memory, index)) if isinstance(layer, _MemBlock) else layer(x)
        return x.unflatten(0, (batch, -1)).transpose(1, 2)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents [B, C, t, h, w] -> video [B, 3, 1 + 4*(t-1), 8h, 8w] in [-1, 1], in the latents' dtype.

        Args:
            latents: normalised Wan 2.1 latents.
        """
        return _to_video(self.run(latents, {})[:, :, self.temporal_factor - 1:], latents.dtype)

    def stream_decoder(self) -> TinyStreamDecoder:
        """A decoder for consecutive latent chunks whose outputs concatenate to `decode` of the whole."""
        return TinyStreamDecoder(self)


def _previous_frames(x: torch.Tensor, batch: int, memory: dict[int, torch.Tensor], index: int) -> torch.Tensor:
    """Each frame's predecessor at memory block `index` (the carried frame, or zeros, for the first one)."""
    frames = x.unflatten(0, (batch, -1))
    before = memory.get(index)
    if before is None:
        before = torch.zeros_like(frames[:, :1])
    memory[index] = frames[:, -1:].clone()  # a copy: a view would keep the whole chunk's activation alive
    return torch.cat([before, frames[:, :-1]], dim=1).flatten(0, 1)


def _to_video(frames: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (frames.clamp(0.0, 1.0) * 2.0 - 1.0).to(dtype)


class TinyStreamDecoder:
    """Chunk-by-chunk decoding: each memory block's last frame is carried to the next chunk.

    Args:
        decoder: the TinyDecoder.
    """

    def __init__(self, decoder: TinyDecoder) -> None:
        self.decoder = decoder
        self.reset()

    def reset(self) -> None:
        """Start a new video."""
        self._memory: dict[int, torch.Tensor] = {}
        self._started = False

    @torch.no_grad()
    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        """Decode the next chunk [B, C, n, h, w]: 1 + 4*(n-1) frames for the first chunk, 4n after.

        Args:
            latents: normalised latents of the chunk.
        """
        frames = self.decoder.run(latents, self._memory)
        if not self._started:
            frames = frames[:, :, self.decoder.temporal_factor - 1:]
        self._started = True
        return _to_video(frames, latents.dtype)


# ------------------------------------------------------------------------------------------------ weights


def _read_weights(path: str) -> dict[str, torch.Tensor]:
    """A name->tensor dict from .safetensors or a torch file read with weights_only=True."""
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # foreign or corrupt files raise many types; all mean the same to the user
        raise UserError(f"--decoder-path {path}: cannot read as a weight file ({type(err).__name__}); expected "
                        "a TAEHV taew2_1 .pth or .safetensors file") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"--decoder-path {path}: expected a name->tensor dict (a TAEHV taew2_1 weight file)")
    return state


def _widths(state: dict[str, torch.Tensor], path: str) -> tuple[int, int, tuple[int, int, int, int]]:
    """(latent channels, head output channels, widths) read off the convolution shapes."""
    keys = [f"decoder.{i}.weight" for i in (_STEM, *_STAGE_OUT, _HEAD)]
    missing = [k for k in keys if k not in state or state[k].dim() != 4]
    if missing:
        raise UserError(f"--decoder-path {path}: no 4-D tensor {missing[0]!r}; expected a TAEHV taew2_1 weight "
                        "file (keys decoder.1.weight ... decoder.22.weight)")
    shapes = [state[k].shape for k in keys]
    return shapes[0][1], shapes[-1][0], (shapes[0][0], shapes[1][0], shapes[2][0], shapes[3][0])


def load_tiny_decoder(path: str | os.PathLike) -> TinyDecoder:
    """Build a TinyDecoder from a TAEHV weight file (taew2_1 layout; `encoder.*` keys are ignored).

    The widths and latent channels are read off the weights. A time-growth convolution stored with more
    output frames than this layout makes keeps its last frames, as TAEHV itself does.

    Args:
        path: .pth/.pt (read with weights_only=True) or .safetensors.
    """
    path = os.fspath(path)
    existing_file(path, "a TAEHV taew2_1 .pth or .safetensors file", "--decoder-path")
    state = {k: v for k, v in _read_weights(path).items() if k.startswith("decoder.")}
    channels, head, widths = _widths(state, path)
    if head != 3:
        raise UserError(f"--decoder-path {path}: decoder.{_HEAD}.weight makes {head} channels; expected 3 (RGB, "
                        "patch size 1 as taew2_1; taew2_2 and taehv1_5 are other layouts)")
    model = TinyDecoder(channels, widths)
    own = model.state_dict()
    for index, layer in enumerate(model.decoder):
        key = f"decoder.{index}.conv.weight"
        if isinstance(layer, _TimeGrow) and key in state and state[key].shape[0] > own[key].shape[0]:
            state[key] = state[key][-own[key].shape[0]:]  # trained to make more frames: keep the last ones
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        detail = (f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}" if unexpected
                  else f"{wrong[0]} has shape {tuple(state[wrong[0]].shape)}, expected {tuple(own[wrong[0]].shape)}")
        raise UserError(f"--decoder-path {path}: not a TAEHV taew2_1 decoder ({detail})")
    model.load_state_dict(state)
    return model.eval().requires_grad_(False)


# ------------------------------------------------------------------------------------------- the swap


class TinyDecodedVAE(nn.Module):
    """A VideoVAE that encodes with `vae` (the model's own latent space) and decodes with the tiny decoder.

    Args:
        vae: the checkpoint's VideoVAE (WanVAE for Wan 2.1 latents).
        tiny: the TinyDecoder; its latent channels and factors must match `vae`'s.
    """

    def __init__(self, vae: nn.Module, tiny: TinyDecoder) -> None:
        super().__init__()
        theirs = (vae.latent_channels, vae.temporal_factor, vae.spatial_factor)
        ours = (tiny.latent_channels, tiny.temporal_factor, tiny.spatial_factor)
        if theirs != ours:
            raise UserError(f"--decoder tiny: the checkpoint's {type(vae).__name__} makes latents of {theirs[0]} "
                            f"channels, {theirs[1]}x in time, {theirs[2]}x in space; the tiny decoder decodes "
                            f"{ours[0]} channels, {ours[1]}x, {ours[2]}x (Wan 2.1 latents)")
        self.vae, self.tiny = vae, tiny
        self.latent_channels, self.temporal_factor, self.spatial_factor = theirs

    @property
    def dtype(self) -> torch.dtype:
        """dtype the encoder runs in (latents reach the decoder in it)."""
        inner = getattr(self.vae, "dtype", None)
        return inner if isinstance(inner, torch.dtype) else torch.float32

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Encode with the checkpoint's VAE.

        Args:
            video: [B, 3, T, H, W] in [-1, 1].
        """
        return self.vae.encode(video)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Decode with the tiny decoder.

        Args:
            latents: [B, C, t, h, w].
        """
        return self.tiny.decode(latents)

    def stream_decoder(self) -> TinyStreamDecoder:
        """The tiny decoder's chunk-by-chunk decoder."""
        return self.tiny.stream_decoder()
