"""Frozen parts of a LightningModule (VAE, audio encoder, teacher, EMA copies)."""
from __future__ import annotations

from torch import nn


def freeze(*modules: nn.Module | None) -> None:
    """No gradients and eval mode (dropout, norms) for every given module; None is skipped."""
    for module in modules:
        if module is not None:
            module.requires_grad_(False)
            module.eval()


class KeepsFrozenInEval:
    """Mixin for LightningModules: Lightning calls .train() on the whole module at every fit start;
    the parts named in `frozen_parts` stay in eval mode whatever it asks."""

    frozen_parts: tuple[str, ...] = ()

    def train(self, mode: bool = True):
        super().train(mode)
        for name in self.frozen_parts:
            part = getattr(self, name, None)
            if part is not None:
                part.eval()
        return self
