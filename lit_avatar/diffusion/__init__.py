"""Flow matching (DESIGN.md): noising, targets, timestep shift and sampling, step lists, Euler, CFG.

Pure torch: no Lightning, files or CLI, so the GPU machine and the streaming rollout can import it.
"""
from lit_avatar.diffusion.flow import (
    NUM_TRAIN_TIMESTEPS,
    add_noise,
    noise_from_velocity,
    shift_sigma,
    to_timestep,
    velocity_target,
    x0_from_velocity,
)
from lit_avatar.diffusion.guiders import AvatarGuidance, cfg, chained_cfg
from lit_avatar.diffusion.sampler import sample_euler
from lit_avatar.diffusion.schedule import (
    psb_level_indices,
    psb_levels,
    psb_step_lists,
    shifted_schedule,
    subset_indices,
)
from lit_avatar.diffusion.sigma_sampling import SigmaSampler

__all__ = [
    "NUM_TRAIN_TIMESTEPS",
    "AvatarGuidance",
    "SigmaSampler",
    "add_noise",
    "cfg",
    "chained_cfg",
    "noise_from_velocity",
    "psb_level_indices",
    "psb_levels",
    "psb_step_lists",
    "sample_euler",
    "shift_sigma",
    "shifted_schedule",
    "subset_indices",
    "to_timestep",
    "velocity_target",
    "x0_from_velocity",
]
