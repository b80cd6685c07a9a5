"""lit-avatar: block-wise autoregressive audio-driven avatar diffusion."""
__version__ = "0.1.0"
