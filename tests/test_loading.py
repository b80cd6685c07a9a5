"""Generator records: describe -> instantiate round trips and checkpoint loading with weights_only."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from lit_avatar.checkpoint import describe, generator_record, instantiate, load_generator
from lit_avatar.errors import UserError
from lit_avatar.inference.options import PSBOptions, RolloutOptions, URCROptions
from lit_avatar.models.audio import MelAudioEncoder, Wav2Vec2AudioEncoder
from lit_avatar.models.dit import AvatarDiT
from lit_avatar.models.presets import get_preset
from lit_avatar.models.vae import PatchVAE, WanVAE


def _micro() -> AvatarDiT:
    torch.manual_seed(0)
    return AvatarDiT(config=get_preset("micro", audio_feature_dim=8)).eval()


def test_dit_round_trip_rebuilds_the_config():
    model = _micro()
    spec = describe(model)
    assert spec["class_path"] == "lit_avatar.models.dit.AvatarDiT"
    assert isinstance(spec["init_args"]["config"]["patch_size"], list)  # plain values only
    rebuilt = instantiate(spec)
    assert rebuilt.config == model.config
    assert rebuilt.state_dict().keys() == model.state_dict().keys()


def test_patch_vae_and_mel_round_trip():
    vae = PatchVAE(spatial_factor=4, temporal_factor=2, scale=2.0)
    again = instantiate(describe(vae))
    assert (again.spatial_factor, again.temporal_factor, again.scale) == (4, 2, 2.0)
    mel = MelAudioEncoder(n_mels=24, columns_per_frame=2, normalize=False, window=3)
    copy = instantiate(describe(mel))
    audio = torch.randn(1, 6400)
    assert torch.equal(copy(audio), mel(audio))


def test_mel_with_non_default_band_round_trips():
    mel = MelAudioEncoder(f_min=100.0, f_max=6000.0)
    copy = instantiate(describe(mel))
    assert torch.equal(copy.filters, mel.filters)


def test_wav2vec2_round_trip(tmp_path):
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    config = Wav2Vec2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                            conv_dim=(8,) * 7, num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2)
    Wav2Vec2Model(config).save_pretrained(str(tmp_path / "w2v"))
    encoder = Wav2Vec2AudioEncoder(str(tmp_path / "w2v"), layers="last")
    spec = describe(encoder)
    assert spec["init_args"] == {"path": str(tmp_path / "w2v"), "layers": "last", "window": 5}
    again = instantiate(spec)
    audio = torch.randn(1, 3200)
    assert torch.allclose(again(audio), encoder(audio))


def test_wan_vae_round_trip(tmp_path):
    from diffusers import AutoencoderKLWan

    AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2, 2], num_res_blocks=1, attn_scales=[],
                     temperal_downsample=[True, True], latents_mean=[0.0] * 4,
                     latents_std=[1.0] * 4).save_pretrained(str(tmp_path / "vae"))
    vae = WanVAE(str(tmp_path), sample=False)
    spec = describe(vae)
    assert spec["init_args"]["dtype"] == "float32"
    again = instantiate(spec)
    assert again.latent_channels == 4 and again.temporal_factor == 4


def _record(model: AvatarDiT, kind: str = "student") -> dict:
    options = RolloutOptions(frames_per_block=2, psb=PSBOptions(steps=[3, 2]), urcr=URCROptions(max_frames=8))
    return generator_record(kind, model, PatchVAE(spatial_factor=1, temporal_factor=1, scale=1.0),
                            MelAudioEncoder(n_mels=8, normalize=False), options, "ema_model.", video_size=(8, 8))


def test_checkpoint_written_by_the_test_loads(tmp_path):
    model = _micro()
    state = {f"ema_model.{k}": v for k, v in model.state_dict().items()}
    state.update({f"model.{k}": torch.zeros_like(v) for k, v in model.state_dict().items()})
    path = tmp_path / "student.ckpt"
    torch.save({"state_dict": state, "lit_avatar": _record(model), "epoch": 3}, path)
    bundle = load_generator(str(path))
    assert bundle.kind == "student" and bundle.video_size == (8, 8)
    assert bundle.rollout_options.psb.steps == [3, 2] and bundle.rollout_options.urcr.max_frames == 8
    assert not bundle.model.training
    for key, value in model.state_dict().items():
        assert torch.equal(bundle.model.state_dict()[key], value)
    assert dataclasses.asdict(bundle.rollout_options) == _record(model)["rollout"]


def _one_line(err: pytest.ExceptionInfo, path) -> None:
    message = str(err.value)
    assert "\n" not in message and str(path) in message


def test_wrong_files_give_one_line_errors(tmp_path):
    model = _micro()
    missing = tmp_path / "nope.ckpt"
    with pytest.raises(UserError) as err:
        load_generator(str(missing))
    _one_line(err, missing)
    text = tmp_path / "text.ckpt"
    text.write_text("not a checkpoint")
    with pytest.raises(UserError, match="not a readable torch checkpoint") as err:
        load_generator(str(text))
    _one_line(err, text)
    bare = tmp_path / "bare.ckpt"
    torch.save({"state_dict": model.state_dict()}, bare)
    with pytest.raises(UserError, match="no 'lit_avatar' generator record") as err:
        load_generator(str(bare))
    _one_line(err, bare)
    wrong = tmp_path / "wrong.ckpt"
    other = AvatarDiT(config=get_preset("micro", audio_feature_dim=8, dim=48, num_heads=2))
    torch.save({"state_dict": {f"ema_model.{k}": v for k, v in other.state_dict().items()},
                "lit_avatar": _record(model)}, wrong)
    with pytest.raises(UserError, match="do not fit") as err:
        load_generator(str(wrong))
    _one_line(err, wrong)
    pickled = tmp_path / "pickled.ckpt"
    torch.save({"lit_avatar": _record(model), "state_dict": {}, "obj": _Opaque()}, pickled)
    with pytest.raises(UserError, match="not a readable torch checkpoint") as err:
        load_generator(str(pickled))
    _one_line(err, pickled)


class _Opaque:
    """An arbitrary pickled object: weights_only loading must refuse it."""


def test_lightning_checkpoint_with_record_loads_weights_only(tmp_path):
    """A real Trainer checkpoint (loops, optimizer, hparams) plus the record still loads with weights_only."""
    import lightning.pytorch as pl

    class Tiny(pl.LightningModule):
        def __init__(self, lr: float = 0.1) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.model = _micro()

        def training_step(self, batch, batch_idx):
            x = torch.randn(1, 12, 1, 4, 4)
            return self.model(x, torch.tensor([500.0])).square().mean()

        def train_dataloader(self):
            return torch.utils.data.DataLoader(torch.zeros(2, 1), batch_size=1)

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, betas=(0.0, 0.999))

        def on_save_checkpoint(self, checkpoint):
            checkpoint["lit_avatar"] = _record(self.model)
            checkpoint["lit_avatar"]["weights_prefix"] = "model."

    module = Tiny()
    trainer = pl.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=str(tmp_path), accelerator="cpu")
    trainer.fit(module)
    path = tmp_path / "fit.ckpt"
    trainer.save_checkpoint(str(path))
    bundle = load_generator(str(path))
    for key, value in module.model.state_dict().items():
        assert torch.equal(bundle.model.state_dict()[key], value)


@pytest.mark.parametrize(("change", "key", "reason"), [
    (lambda r: r["model"].update(class_path="lit_avatar.models.vae.PatchVAE"), "model.class_path",
     "not an allowed class; expected lit_avatar.models.dit.AvatarDiT"),
    (lambda r: r["vae"].update(class_path="lit_avatar.models.dit.AvatarDiT"), "vae.class_path",
     "not an allowed class; expected lit_avatar.models.vae.PatchVAE or lit_avatar.models.vae.WanVAE"),
    (lambda r: r["model"]["init_args"].update(weights="/elsewhere/wan.pt"), "model.init_args.weights",
     "not an argument a record may give lit_avatar.models.dit.AvatarDiT (expected config)"),
    (lambda r: r["vae"]["init_args"].update(scale=torch.ones(1)), "vae.init_args.scale",
     "a torch.Tensor is not allowed; expected plain JSON values"),
    (lambda r: r["audio_encoder"]["init_args"].update(window=[1, {"class_path": "os.system"}]),
     "audio_encoder.init_args.window[1].class_path", "a nested class_path is not allowed"),
    (lambda r: r["model"]["init_args"]["config"].update(dim=float("nan")), "model.init_args.config.dim",
     "nan is not a finite number"),
    (lambda r: r["model"].update(kwargs={}), "model.kwargs", "unknown key; a spec has only class_path and init_args"),
    (lambda r: r.update(hook="builtins.exec"), "hook", "unknown key; expected only kind, model, vae"),
    (lambda r: r.update(kind="critic"), "kind", "'critic': expected one of teacher, ode_init, student"),
    (lambda r: r.update(rollout="psb"), "rollout", "expected a dict of rollout options or null"),
    (lambda r: r.update(video_size=[16, "16"]), "video_size", "expected [height, width], positive integers"),
])
def test_records_outside_the_allow_list_are_refused_naming_the_key(change, key, reason, tmp_path):
    model = _micro()
    record = _record(model)
    change(record)
    path = tmp_path / "shared.ckpt"
    torch.save({"state_dict": {f"ema_model.{k}": v for k, v in model.state_dict().items()}, "lit_avatar": record},
               path)
    with pytest.raises(UserError) as err:
        load_generator(str(path))
    _one_line(err, path)
    assert str(err.value).startswith(f"{path}: lit_avatar.{key}") and reason in str(err.value), str(err.value)


def test_instantiate_checks_the_allow_list_too():
    with pytest.raises(UserError, match=r"spec.class_path 'subprocess.Popen': not an allowed class"):
        instantiate({"class_path": "subprocess.Popen", "init_args": {"args": ["true"]}})
    with pytest.raises(UserError, match=r"spec.init_args.weights: not an argument"):
        instantiate({"class_path": "lit_avatar.models.dit.AvatarDiT", "init_args": {"weights": "x.pt"}})
