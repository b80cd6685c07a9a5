"""Store VAE latents and audio features in the samples, so training skips the encoders.

Why from the decoded sample: the loader trains on what the shard holds (the H.264 clip, the FLAC
audio), not on the frames before compression. Encoding the sample exactly as the loader decodes it
makes a batch of precomputed latents equal to encoding the raw batch on the fly, up to the float16
storage of the schema.

Specs (the strings of --precompute-latents / --precompute-audio):
- latents: a local WanVAE folder (diffusers AutoencoderKLWan, or a pipeline root with vae/), or
  `patch:SF[:TF[:SCALE]]` for the lossless PatchVAE (CPU runs and tests).
- audio: a local wav2vec2 folder (Wav2Vec2AudioEncoder, all layers), or `mel` (MelAudioEncoder defaults).
The spec is recorded in the sample's json (`latents_from`, `audio_feats_from`) so a training config
can check it uses the same encoder.
"""
from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from lit_avatar.errors import UserError


def check_spec(spec: str, option: str) -> None:
    """Fail before any work starts when a spec is malformed or names a missing folder.

    Args:
        spec: the option's value.
        option: "--precompute-latents" or "--precompute-audio".
    """
    if option == "--precompute-latents" and spec.startswith("patch:"):
        _patch_args(spec)
    elif option == "--precompute-audio" and spec == "mel":
        return
    elif not os.path.isdir(spec):
        kinds = "a WanVAE folder or patch:SF[:TF[:SCALE]]" if option == "--precompute-latents" else \
            "a wav2vec2 folder or `mel`"
        raise UserError(f"{option} {spec}: not found (expected {kinds})")


def _patch_args(spec: str) -> tuple[int, int, float]:
    fields = spec.split(":")[1:]
    try:
        spatial = int(fields[0])
        temporal = int(fields[1]) if len(fields) > 1 else 1
        scale = float(fields[2]) if len(fields) > 2 else 1.0
    except (ValueError, IndexError):
        raise UserError(f"--precompute-latents {spec}: expected patch:SF[:TF[:SCALE]], e.g. patch:2") from None
    return spatial, temporal, scale


def make_vae(spec: str):
    """The VideoVAE a --precompute-latents spec names.

    Args:
        spec: a WanVAE folder or `patch:SF[:TF[:SCALE]]`.
    """
    from lit_avatar.models.vae import PatchVAE, WanVAE

    if spec.startswith("patch:"):
        spatial, temporal, scale = _patch_args(spec)
        return PatchVAE(spatial_factor=spatial, temporal_factor=temporal, scale=scale)
    return WanVAE.from_pretrained(spec)


def make_audio_encoder(spec: str):
    """The AudioEncoder a --precompute-audio spec names.

    Args:
        spec: a wav2vec2 folder or `mel`.
    """
    from lit_avatar.models.audio import MelAudioEncoder, Wav2Vec2AudioEncoder

    if spec == "mel":
        return MelAudioEncoder()
    return Wav2Vec2AudioEncoder.from_pretrained(spec)


def video_tensor(frames: np.ndarray):
    """uint8 [T, H, W, 3] -> float [1, 3, T, H, W] in [-1, 1] (the batch convention)."""
    import torch

    video = torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2).float()
    return (video / 127.5 - 1.0)[None]


def causal_length(num_frames: int, temporal_factor: int) -> int:
    """The longest prefix 1 + tf*k <= num_frames that the causal VAE grid takes."""
    return 1 + (num_frames - 1) // temporal_factor * temporal_factor


class Precomputer:
    """Adds latents.npy / ref_latent.npy and audio_feats.npy to a schema sample.

    Args:
        latents: VAE spec or None.
        audio: audio encoder spec or None.
        threads: torch CPU threads.
        device: where the encoders run ("cpu", "cuda"); outputs come back as CPU float32.
    """

    def __init__(self, latents: str | None, audio: str | None, threads: int = 1, device: str = "cpu") -> None:
        import torch

        torch.set_num_threads(max(1, threads))
        self.latents_spec, self.audio_spec, self.device = latents, audio, torch.device(device)
        self.vae = make_vae(latents).to(self.device) if latents else None
        self.audio_encoder = make_audio_encoder(audio).to(self.device) if audio else None

    def arrays(self, decoded: dict[str, Any]) -> dict[str, np.ndarray]:
        """Encoder outputs for one decoded sample (`schema.decode_sample`), float32, without batch axis.

        Args:
            decoded: the sample as the loader sees it.
        """
        import torch

        out: dict[str, np.ndarray] = {}
        with torch.inference_mode():
            if self.vae is not None:
                frames = decoded["video"]
                frames = frames[: causal_length(len(frames), self.vae.temporal_factor)]
                out["latents"] = self._numpy(self.vae.encode(video_tensor(frames).to(self.device))[0])
                # the build always stores a ref; the fallback matches the loader's for clips from frame 0
                ref = decoded["ref"] if decoded.get("ref") is not None else decoded["video"][-1]
                out["ref_latent"] = self._numpy(self.vae.encode(video_tensor(ref[None]).to(self.device))[0])
            if self.audio_encoder is not None:
                num_frames = len(decoded["video"]) if decoded.get("video") is not None else None
                audio = torch.from_numpy(np.ascontiguousarray(decoded["audio"], np.float32))[None]
                out["audio_feats"] = self._numpy(self.audio_encoder(audio.to(self.device), num_frames)[0])
        return out

    @staticmethod
    def _numpy(tensor) -> np.ndarray:
        return tensor.float().cpu().numpy()

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        """The sample with the precomputed members added (and their specs in the json).

        Args:
            sample: from `schema.encode_sample`.
        """
        from lit_avatar.data import schema

        decoded = schema.decode_sample(sample)
        arrays = self.arrays(decoded)
        meta = json.loads(bytes(sample[schema.META_EXT]).decode("utf-8"))
        if "latents" in arrays:
            meta["latents_from"] = self.latents_spec
            meta["latent_temporal_factor"] = int(self.vae.temporal_factor)
        if "audio_feats" in arrays:
            meta["audio_feats_from"] = self.audio_spec
        result = dict(sample)
        result[schema.META_EXT] = json.dumps(meta, sort_keys=True).encode("utf-8")
        for name, array in arrays.items():
            result[schema.ARRAY_EXTS[name]] = schema.encode_array(array)
        return result


def precompute_batch(precompute, samples: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], Exception | None]:
    """`precompute` on each sample in order, stopping at the first failure.

    Why a batch and an error value rather than a raise: a remote encoder (a Ray actor) is fed a batch of
    clips per call, and the build must keep the samples before a failing one, as when encoding one by one.

    Args:
        precompute: a Precomputer (sample -> sample).
        samples: schema samples of one source, in clip order.

    Returns:
        the samples done before any failure, and the failure (None when all are done).
    """
    done = []
    for sample in samples:
        try:
            done.append(precompute(sample))
        except Exception as err:  # handed back: the build records it as the source's reason
            return done, err
    return done, None
