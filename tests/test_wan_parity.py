"""AvatarDiT reproduces diffusers' WanTransformer3DModel from both checkpoint layouts."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from lit_avatar.errors import UserError
from lit_avatar.models.dit import AvatarDiT
from lit_avatar.models.presets import get_preset
from lit_avatar.models.wan_compat import diffusers_to_original, load_wan_weights

SMALL = dict(
    patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=24, in_channels=4, out_channels=4,
    text_dim=20, freq_dim=32, ffn_dim=64, num_layers=2, cross_attn_norm=True, eps=1e-6,
)


@pytest.fixture(scope="module")
def wan_checkpoints(tmp_path_factory):
    from diffusers import WanTransformer3DModel
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    torch.manual_seed(0)
    reference = WanTransformer3DModel(**SMALL).eval()
    root = tmp_path_factory.mktemp("wan")
    reference.save_pretrained(root / "diffusers", max_shard_size="40KB")  # sharded on purpose
    diffusers_state = reference.state_dict()
    original = {k: v.clone() for k, v in diffusers_to_original(diffusers_state).items()}
    # The original-layout file is checked against diffusers' own single-file converter.
    back = convert_wan_transformer_to_diffusers(dict(original))
    assert set(back) == set(diffusers_state)
    assert all(torch.equal(back[k], diffusers_state[k]) for k in back)
    (root / "original").mkdir()
    save_file(original, str(root / "original" / "diffusion_pytorch_model.safetensors"))
    return reference, root


def _avatar_config(audio: bool):
    return get_preset(
        "micro", dim=48, num_heads=2, ffn_dim=64, freq_dim=32, text_dim=20, in_channels=4, out_channels=4,
        num_layers=2, audio=audio, audio_feature_dim=8, audio_dim=16, audio_tokens=3, temporal_factor=4,
    )


def _inputs():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 3, 8, 12, generator=g)
    t = torch.tensor([37.0, 911.0])
    text = torch.randn(2, 7, 20, generator=g)
    return x, t, text


@pytest.mark.parametrize("layout", ["diffusers", "original"])
@pytest.mark.parametrize("audio", [False, True])
def test_avatar_dit_matches_diffusers(wan_checkpoints, layout, audio):
    reference, root = wan_checkpoints
    model = AvatarDiT(config=_avatar_config(audio), weights=str(root / layout)).eval()
    x, t, text = _inputs()
    with torch.no_grad():
        expected = reference(x, t, text, return_dict=False)[0]
        kwargs = {}
        if audio:  # zero-initialised audio outputs: the loaded model is still the video model
            kwargs["audio"] = torch.randn(2, 1 + 4 * 2, 5, 8)
        got = model(x, t, text=text, **kwargs)
    assert (got - expected).abs().max().item() <= 1e-4


def test_per_frame_timesteps_match_uniform(wan_checkpoints):
    _, root = wan_checkpoints
    model = AvatarDiT(config=_avatar_config(False), weights=str(root / "original")).eval()
    x, t, text = _inputs()
    with torch.no_grad():
        a = model(x, t, text=text)
        b = model(x, t[:, None].expand(-1, 3), text=text)
    assert torch.allclose(a, b, atol=1e-6)


def test_wan_1_3b_backbone_parameter_count():
    with torch.device("meta"):
        model = AvatarDiT(preset="wan2.1-1.3b")
    avatar = {"null_text", "audio_projector", "audio_attn", "norm_audio"}
    backbone = sum(p.numel() for n, p in model.named_parameters() if not any(a in n for a in avatar))
    extra = sum(p.numel() for n, p in model.named_parameters() if any(a in n for a in avatar))
    assert backbone == 1_418_996_800
    assert extra > 0


def test_checkpoint_that_does_not_fit_names_the_key(wan_checkpoints, tmp_path):
    _, root = wan_checkpoints
    wrong = get_preset("micro", dim=32, num_heads=2, text_dim=20, in_channels=4, out_channels=4, audio=False)
    with pytest.raises(UserError, match=r"checkpoint key .* has shape .* the model expects"):
        AvatarDiT(config=wrong, weights=str(root / "original"))
    bogus = tmp_path / "bogus.safetensors"
    save_file({"not_a_wan_key": torch.zeros(1)}, str(bogus))
    with pytest.raises(UserError, match="not_a_wan_key"):
        load_wan_weights(AvatarDiT(config=_avatar_config(False)), bogus)
    with pytest.raises(UserError, match="not found"):
        load_wan_weights(AvatarDiT(config=_avatar_config(False)), tmp_path / "missing")


PROMPTS = ["a woman talking, smiling", "", "red hair, blue background, mouth wide open"]


@pytest.fixture(scope="module")
def wan_prompt_embeds(tmp_path_factory):
    """Prompt embeddings as Wan feeds them: a (tiny, random) umT5 of the DiT's text width, 16 tokens, every
    position after a prompt's own tokens zero (WanPipeline._get_t5_prompt_embeds; tests/test_prompts.py)."""
    from lit_avatar.models.text import UMT5TextEncoder
    from lit_avatar.prompts import write_tiny_text_encoder

    words = "a woman talking smiling red hair blue background mouth wide open".split()
    folder = write_tiny_text_encoder(tmp_path_factory.mktemp("umt5") / "text_encoder", words, d_model=20)
    embeds = UMT5TextEncoder(str(folder), max_length=16).encode(PROMPTS) * 20.0  # umT5-XXL's outputs are large
    lengths = (embeds.abs().sum(-1) > 0).sum(1).tolist()
    assert lengths == [6, 1, 10] and embeds.shape == (3, 16, 20)  # words, commas, </s>; then zeros
    return embeds


@pytest.mark.parametrize("layout", ["diffusers", "original"])
@pytest.mark.parametrize("audio", [False, True])
def test_avatar_dit_matches_diffusers_on_wan_padded_prompt_embeddings(wan_checkpoints, wan_prompt_embeds, layout,
                                                                      audio):
    """The same `encoder_hidden_states`: padded umT5 prompts (the empty one is </s> and zeros) give diffusers'
    output, and the prompt matters (another prompt, or the null text, moves it)."""
    reference, root = wan_checkpoints
    model = AvatarDiT(config=_avatar_config(audio), weights=str(root / layout)).eval()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 4, 3, 8, 12, generator=g)
    t = torch.tensor([37.0, 500.0, 911.0])
    kwargs = {"audio": torch.randn(3, 1 + 4 * 2, 5, 8, generator=g)} if audio else {}
    with torch.no_grad():
        expected = reference(x, t, wan_prompt_embeds, return_dict=False)[0]
        got = model(x, t, text=wan_prompt_embeds, **kwargs)
        other = model(x, t, text=wan_prompt_embeds.roll(1, dims=0), **kwargs)
        null = model(x, t, text=None, **kwargs)
    assert (got - expected).abs().max().item() <= 1e-4
    assert (other - got).abs().max().item() > 1e-2 and (null - got).abs().max().item() > 1e-2


def test_the_cached_text_state_gives_diffusers_output_too(wan_checkpoints, wan_prompt_embeds):
    """Streaming path: one block-causal block over the whole clip, its prompt's K/V cached by set_text (what a
    stream and a mid-stream prompt change use), equals diffusers' bidirectional forward with that prompt."""
    reference, root = wan_checkpoints
    model = AvatarDiT(config=_avatar_config(False), weights=str(root / "original")).eval()
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 4, 3, 8, 12, generator=g)
    t = torch.tensor([37.0, 500.0, 911.0])
    with torch.no_grad():
        expected = reference(x, t, wan_prompt_embeds, return_dict=False)[0]
        cache = model.new_cache(capacity=3, latent_height=8, latent_width=12)
        model.prefill(cache, None, None, 3, 4, 6)  # starts on the null text ...
        model.set_text(cache, wan_prompt_embeds, 3)  # ... and changes prompt before the block
        got = model.forward_cached(x, t, [0, 1, 2], cache)
    assert (got - expected).abs().max().item() <= 1e-4
