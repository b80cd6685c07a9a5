"""Audio features per video frame and their projection to per-latent-frame tokens.

Encoders turn 16 kHz audio [B, S] into features [B, T, W, D] at 25 fps: every video frame gets a window of
W = 5 feature vectors (frames t-2..t+2, edges replicated) so that the frame-local audio cross-attention
sees a little context around its own instant. The projector groups the frames that one VAE latent frame
covers and maps them to `audio_tokens` tokens.

Only torch is imported at module level: transformers is imported inside the wav2vec2 loader, so the
package imports on machines that lack it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from lit_avatar.errors import UserError

if TYPE_CHECKING:
    from transformers import Wav2Vec2Config

SAMPLE_RATE = 16000
FPS = 25
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640
WINDOW = 5  # frames t-2..t+2

__all__ = [
    "AudioEncoder",
    "AudioProjector",
    "MelAudioEncoder",
    "Wav2Vec2AudioEncoder",
    "frame_window",
    "num_video_frames",
]


@runtime_checkable
class AudioEncoder(Protocol):
    """What the models and data pipeline expect from an audio encoder (docs/INTERFACES.md)."""

    feature_dim: int
    window: int

    def __call__(self, audio: torch.Tensor, num_frames: int | None = None) -> torch.Tensor: ...


def num_video_frames(num_samples: int, num_frames: int | None = None) -> int:
    """Number of 25 fps video frames a clip of `num_samples` 16 kHz samples covers.

    Args:
        num_samples: audio length S.
        num_frames: explicit frame count, which wins when given.
    """
    frames = num_frames if num_frames is not None else num_samples // SAMPLES_PER_FRAME
    if frames < 1:
        raise ValueError(
            f"audio of {num_samples} samples covers no video frame (need >= {SAMPLES_PER_FRAME} or num_frames)"
        )
    return frames


def frame_window(feats: torch.Tensor, window: int = WINDOW) -> torch.Tensor:
    """Give every frame the features of its `window` neighbours, replicating the edge frames.

    Args:
        feats: [B, T, D] per-frame features.
        window: odd number of frames, centred on each frame.

    Returns:
        [B, T, window, D]; entry [:, t, k] is frame clamp(t + k - window // 2, 0, T - 1).
    """
    if window % 2 != 1:
        raise ValueError(f"window must be odd, got {window}")
    length = feats.shape[1]
    radius = window // 2
    offsets = torch.arange(-radius, radius + 1, device=feats.device)
    index = (torch.arange(length, device=feats.device)[:, None] + offsets[None]).clamp(0, length - 1)
    return feats[:, index]


def _normalize_utterance(audio: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit variance per utterance, as Wav2Vec2FeatureExtractor does with do_normalize."""
    mean = audio.mean(dim=-1, keepdim=True)
    var = audio.var(dim=-1, unbiased=False, keepdim=True)
    return (audio - mean) / torch.sqrt(var + 1e-7)


def _check_audio(audio: torch.Tensor) -> None:
    if audio.dim() != 2:
        raise ValueError(f"audio must be [B, S] 16 kHz mono, got shape {tuple(audio.shape)}")


# ---------------------------------------------------------------------------------------------- wav2vec2


def _check_pretrained_dir(path: str) -> None:
    """Fail early, with one line naming the path, before transformers prints a long traceback."""
    if not os.path.isdir(path):
        raise UserError(f"wav2vec2 folder {path!r} does not exist (expected a local Wav2Vec2Model folder)")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise UserError(f"wav2vec2 folder {path!r} has no config.json (expected a Wav2Vec2Model saved folder)")
    weights = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")
    if not any(os.path.isfile(os.path.join(path, name)) for name in weights):
        raise UserError(f"wav2vec2 folder {path!r} has no weights (expected model.safetensors or pytorch_model.bin)")


class Wav2Vec2AudioEncoder(nn.Module):
    """Frozen transformers Wav2Vec2Model whose hidden states are resampled to the video frame rate.

    wav2vec2 yields 50 Hz features; they are linearly interpolated (align_corners=True, as InfiniteTalk)
    to T frames at 25 fps. InfiniteTalk interpolates the CNN features before the transformer; here the
    stock model runs untouched and its hidden states are interpolated, which keeps parity with the
    library exact and differs from InfiniteTalk only by the attention seeing 50 Hz frames.

    With layers="all", the outputs of every transformer layer (hidden_states[1:], as InfiniteTalk stacks
    them) are concatenated: D = num_hidden_layers * hidden_size; with "last", D = hidden_size.

    Args:
        path: local folder written by `save_pretrained` (config.json + weights); nothing is downloaded.
        layers: "all" to concatenate every layer's hidden state, "last" for the final one only.
        window: frames per video-frame window (5: t-2..t+2).
    """

    # Video frames of audio after a block that streaming feeds it (AvatarStreamer's default): wav2vec2 sees
    # its window, not the file, and its features near the window's edge differ; 8 frames (0.32 s) kept
    # SynthSync within 0.02 of whole-clip features on SynthTalk, 3 did not (BENCHMARKS.md).
    stream_lookahead_frames = 8

    def __init__(self, path: str, layers: Literal["all", "last"] = "all", window: int = WINDOW) -> None:
        super().__init__()
        _check_pretrained_dir(path)
        from transformers import Wav2Vec2Model

        model = Wav2Vec2Model.from_pretrained(path, local_files_only=True)
        self._attach(model, layers, window)
        self.path = str(path)  # kept so checkpoints can say how to rebuild the encoder

    @classmethod
    def from_pretrained(
        cls, path: str, layers: Literal["all", "last"] = "all", window: int = WINDOW
    ) -> Wav2Vec2AudioEncoder:
        """Load from a local folder (same as the constructor; the name HF users expect).

        Args:
            path: local save_pretrained folder.
            layers: "all" or "last".
            window: frames per window.
        """
        return cls(path, layers=layers, window=window)

    @classmethod
    def from_config(
        cls, config: Wav2Vec2Config, layers: Literal["all", "last"] = "all", window: int = WINDOW
    ) -> Wav2Vec2AudioEncoder:
        """Randomly initialised encoder from a Wav2Vec2Config, for tests and shape checks.

        Args:
            config: transformers Wav2Vec2Config.
            layers: "all" or "last".
            window: frames per window.
        """
        from transformers import Wav2Vec2Model

        encoder = cls.__new__(cls)
        nn.Module.__init__(encoder)
        encoder._attach(Wav2Vec2Model(config), layers, window)
        return encoder

    def _attach(self, model: nn.Module, layers: str, window: int) -> None:
        if layers not in ("all", "last"):
            raise UserError(f"Wav2Vec2AudioEncoder layers={layers!r}: expected 'all' or 'last'")
        self.model = model.eval().requires_grad_(False)
        self.layers = layers
        self.window = window
        config = model.config
        self.feature_dim = config.hidden_size * (config.num_hidden_layers if layers == "all" else 1)

    def train(self, mode: bool = True) -> Wav2Vec2AudioEncoder:
        """Stay in eval mode: the encoder is frozen, so dropout and SpecAugment must never run."""
        super().train(mode)
        self.model.eval()
        return self

    def forward(self, audio: torch.Tensor, num_frames: int | None = None) -> torch.Tensor:
        """Features per video frame.

        Args:
            audio: [B, S] float 16 kHz mono (raw; normalised here per utterance).
            num_frames: T; default S // 640.

        Returns:
            [B, T, window, feature_dim] float32.
        """
        _check_audio(audio)
        frames = num_video_frames(audio.shape[1], num_frames)
        dtype = next(self.model.parameters()).dtype
        inputs = _normalize_utterance(audio.float()).to(dtype)
        out = self.model(inputs, output_hidden_states=True, return_dict=True)
        if self.layers == "all":
            hidden = torch.cat(out.hidden_states[1:], dim=-1)  # [B, N, L*H]
        else:
            hidden = out.hidden_states[-1]
        hidden = F.interpolate(hidden.float().transpose(1, 2), size=frames, mode="linear", align_corners=True)
        return frame_window(hidden.transpose(1, 2), self.window)


# ----------------------------------------------------------------------------------------------- log-mel


def _hz_to_mel(hz: torch.Tensor) -> torch.Tensor:
    return 2595.0 * torch.log10(1.0 + hz / 700.0)  # HTK scale


def _mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_filterbank(n_fft: int, n_mels: int, sample_rate: int, f_min: float, f_max: float) -> torch.Tensor:
    """Triangular filters, evenly spaced on the HTK mel scale.

    Args:
        n_fft: FFT size (n_fft // 2 + 1 frequency bins).
        n_mels: number of filters.
        sample_rate: audio rate in Hz.
        f_min: lowest filter edge in Hz.
        f_max: highest filter edge in Hz (<= sample_rate / 2).

    Returns:
        [n_mels, n_fft // 2 + 1] weights.
    """
    bins = torch.linspace(0.0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    mels = torch.linspace(
        float(_hz_to_mel(torch.tensor(f_min))), float(_hz_to_mel(torch.tensor(f_max))), n_mels + 2,
        dtype=torch.float64,
    )
    edges = _mel_to_hz(mels)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None] - lower) / (centre - lower)
    falling = (upper - bins[None]) / (upper - centre)
    return torch.clamp(torch.minimum(rising, falling), min=0.0).float()


class MelAudioEncoder(nn.Module):
    """Log-mel features at 25 fps; no weights. The CPU stand-in for wav2vec2 on SynthTalk.

    The STFT hop is 640 / columns_per_frame samples; the columns whose centres fall inside a video
    frame's 40 ms are averaged, so feature t describes exactly the audio of frame t. Normalisation is
    per utterance (zero mean, unit variance over time and mel bins), like wav2vec2's input, so clips
    recorded at different gains look alike; it uses the whole clip, so a live stream should feed
    windows of a few seconds rather than tiny chunks.

    Args:
        n_mels: mel bins D.
        columns_per_frame: STFT columns averaged per video frame (hop = 640 / this).
        n_fft: FFT size.
        win_length: analysis window in samples (400 = 25 ms).
        f_min: lowest mel edge in Hz.
        f_max: highest mel edge in Hz.
        normalize: per-utterance normalisation of the log-mel values.
        window: frames per video-frame window (5: t-2..t+2).
    """

    def __init__(
        self,
        n_mels: int = 40,
        columns_per_frame: int = 4,
        n_fft: int = 512,
        win_length: int = 400,
        f_min: float = 20.0,
        f_max: float = 8000.0,
        normalize: bool = True,
        window: int = WINDOW,
    ) -> None:
        super().__init__()
        if SAMPLES_PER_FRAME % columns_per_frame:
            raise UserError(f"MelAudioEncoder columns_per_frame={columns_per_frame}: expected a divisor of 640")
        if win_length > n_fft:
            raise UserError(f"MelAudioEncoder win_length={win_length}: expected <= n_fft={n_fft}")
        self.n_fft = n_fft
        self.win_length = win_length
        self.hop = SAMPLES_PER_FRAME // columns_per_frame
        self.columns_per_frame = columns_per_frame
        self.normalize = normalize
        self.window = window
        self.feature_dim = n_mels
        self.f_min, self.f_max = float(f_min), float(f_max)
        # non-persistent: nothing to save or load
        self.register_buffer("stft_window", torch.hann_window(win_length), persistent=False)
        self.register_buffer("filters", mel_filterbank(n_fft, n_mels, SAMPLE_RATE, f_min, f_max), persistent=False)

    def forward(self, audio: torch.Tensor, num_frames: int | None = None) -> torch.Tensor:
        """Features per video frame.

        Args:
            audio: [B, S] float 16 kHz mono.
            num_frames: T; default S // 640 (audio is zero-padded or cut to T * 640 samples).

        Returns:
            [B, T, window, n_mels] float32.
        """
        _check_audio(audio)
        frames = num_video_frames(audio.shape[1], num_frames)
        length = frames * SAMPLES_PER_FRAME
        audio = audio.float()
        audio = F.pad(audio, (0, length - audio.shape[1])) if audio.shape[1] < length else audio[:, :length]
        spec = torch.stft(
            audio, self.n_fft, hop_length=self.hop, win_length=self.win_length, window=self.stft_window,
            center=True, return_complex=True,
        )  # [B, F, S / hop + 1], column c centred on sample c * hop
        power = spec.real.square() + spec.imag.square()
        mel = torch.einsum("mf,bfc->bcm", self.filters, power[..., : frames * self.columns_per_frame])
        logmel = torch.log(mel + 1e-6)
        logmel = logmel.reshape(audio.shape[0], frames, self.columns_per_frame, -1).mean(dim=2)
        if self.normalize:
            mean = logmel.mean(dim=(1, 2), keepdim=True)
            std = logmel.std(dim=(1, 2), keepdim=True, unbiased=False)
            logmel = (logmel - mean) / (std + 1e-5)
        return frame_window(logmel, self.window)


# ----------------------------------------------------------------------------------------------- projector


class AudioProjector(nn.Module):
    """Map the audio windows of the video frames one latent frame covers to `audio_tokens` tokens.

    Grouping follows the VAE's causal convention so latent j hears exactly the frames it encodes: with
    starts_at_zero, latent 0 is frame 0 alone (repeated temporal_factor times) and latent j is frames
    tf*j-(tf-1)..tf*j; a later streaming chunk (starts_at_zero=False) is plain runs of tf frames.
    Each latent is projected independently, so chunked projection equals projection of the whole clip.

    Args:
        feature_dim: D of the audio features.
        window: W of the audio features.
        temporal_factor: video frames per latent frame (tf, the VAE's temporal factor).
        audio_tokens: tokens per latent frame.
        dim: token width (the DiT's hidden size).
        hidden_dim: MLP hidden width; default `dim`.
    """

    def __init__(
        self,
        feature_dim: int,
        window: int,
        temporal_factor: int,
        audio_tokens: int,
        dim: int,
        hidden_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.feature_dim = feature_dim
        self.window = window
        self.temporal_factor = temporal_factor
        self.audio_tokens = audio_tokens
        self.dim = dim
        hidden = hidden_dim or dim
        self.mlp = nn.Sequential(
            nn.Linear(temporal_factor * window * feature_dim, hidden),
            nn.GELU(),
            nn.Linear(hidden, audio_tokens * dim),
        )
        self.norm = nn.LayerNorm(dim)

    def group(self, feats: torch.Tensor, starts_at_zero: bool = True) -> torch.Tensor:
        """Concatenate the features of the frames each latent frame covers.

        Args:
            feats: [B, T, W, D].
            starts_at_zero: the chunk begins at video frame 0 (T = 1 + tf*(t-1)); else T = tf*t.

        Returns:
            [B, t, tf*W*D].
        """
        batch, frames, window, dim = feats.shape
        if (window, dim) != (self.window, self.feature_dim):
            raise ValueError(
                f"audio features have window={window}, dim={dim}; the projector expects "
                f"window={self.window}, dim={self.feature_dim}"
            )
        tf = self.temporal_factor
        if starts_at_zero:
            if (frames - 1) % tf:
                raise ValueError(
                    f"{frames} audio frames do not fit the causal latent grid: expected T = 1 + {tf}*(t-1) "
                    f"(e.g. {1 + tf * ((frames - 1) // tf)} or {1 + tf * ((frames - 1) // tf + 1)})"
                )
            feats = torch.cat([feats[:, :1].expand(-1, tf - 1, -1, -1), feats], dim=1)
        elif frames % tf:
            raise ValueError(
                f"{frames} audio frames do not fill whole latent frames: expected a multiple of {tf} "
                "when starts_at_zero=False"
            )
        return feats.reshape(batch, feats.shape[1] // tf, tf * window * dim)

    def forward(self, feats: torch.Tensor, starts_at_zero: bool = True) -> torch.Tensor:
        """Tokens per latent frame.

        Args:
            feats: [B, T, W, D] audio features.
            starts_at_zero: the chunk begins at video frame 0 (see `group`).

        Returns:
            [B, t, audio_tokens, dim].
        """
        grouped = self.group(feats, starts_at_zero)
        tokens = self.mlp(grouped.to(self.mlp[0].weight.dtype))
        return self.norm(tokens.reshape(*grouped.shape[:2], self.audio_tokens, self.dim))
