"""Random draws derived from (seed, step, stream, rank), never from global RNG state (DESIGN.md "Scale")."""
from __future__ import annotations

import hashlib

import torch


def step_generator(seed: int, step: int, stream: int = 0, rank: int = 0) -> torch.Generator:
    """A CPU generator determined by (seed, optimisation step, stream, rank), hashed so no two differ.

    Deriving every random draw of a step from its index makes a resumed run continue exactly like an
    uninterrupted one; `rank` gives each process its own draws (noise), while rank 0 for all gives a draw
    that is the same on every rank (the exit step must be: ranks that exit at different steps would do
    different amounts of work).
    """
    key = hashlib.blake2b(f"{int(seed)}/{int(step)}/{int(stream)}/{int(rank)}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(key, "little") >> 1)


def generator_on(device: torch.device, generator: torch.Generator | None) -> torch.Generator | None:
    """`generator` itself when it lives on `device`'s type, else a generator on `device` seeded by one draw
    of it: draws on an accelerator then still derive from (seed, step, stream), never the global RNG."""
    if generator is None or generator.device.type == torch.device(device).type:
        return generator
    seed = int(torch.randint(2**62, (), generator=generator))
    return torch.Generator(device=device).manual_seed(seed)
