"""Where a model's randomness comes from: one random stream per sample.

Every draw a model makes (the location posterior's reparameterisation noise, the Gumbel noise that picks a
cell, uniform glimpses) comes from a `Noise` object, batch-major: `noise.normal(3)` is (B, 3). Built with
`Noise.keyed(keys)`, sample b's draws come from its own generator seeded by `keys[b]`, so what sample i sees
depends only on its key, never on the batch it shares, the process (rank) it lands on or how many processes
there are. Training keys sample i of epoch e by `sample_key(seed, e, i)`; evaluation by (seed, pass, i).
`Noise.shared(batch)` draws from torch's global generator instead (the default for interactive use).

The draws are exact samples of the distributions the model defines (torch.distributions builds them; only the
noise is supplied): a Normal's rsample is loc + scale * eps, a Categorical's sample is the Gumbel-max
argmax(logits + G), and k draws without replacement are the Gumbel top-k.
"""

from __future__ import annotations

import torch

_MASK64 = (1 << 63) - 1


def sample_key(seed: int, stream: int, index: int) -> int:
    """A 63-bit generator seed for sample `index` of `stream` (an epoch, an evaluation pass) under `seed`."""
    key = 0x9E3779B97F4A7C15
    for part in (seed, stream, index):  # splitmix64-style mixing: nearby triples give unrelated seeds
        key = (key ^ (int(part) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        key ^= key >> 31
    return key & _MASK64


class Noise:
    """Batch-major random draws: `uniform(*shape)`, `normal(*shape)`, `gumbel(*shape)` -> (B, *shape)."""

    def __init__(self, batch: int, generators: list | None = None, device=None):
        if generators is not None and len(generators) != batch:
            raise ValueError(f"Noise needs one generator per sample: {len(generators)} for a batch of {batch}")
        self.batch, self.generators, self.device = batch, generators, device

    @classmethod
    def shared(cls, batch: int, device=None) -> "Noise":
        return cls(batch, None, device)

    @classmethod
    def keyed(cls, keys, device=None) -> "Noise":
        return cls(len(keys), [torch.Generator().manual_seed(int(k)) for k in keys], device)

    def _draw(self, fill, shape) -> torch.Tensor:
        if self.generators is None:
            out = fill(torch.empty(self.batch, *shape), None)
        else:
            out = torch.stack([fill(torch.empty(*shape), g) for g in self.generators]) if self.batch else torch.empty(0, *shape)
        return out.to(self.device) if self.device is not None else out

    def uniform(self, *shape: int) -> torch.Tensor:
        """U[0, 1), never exactly 0 (safe under log)."""
        return self._draw(lambda t, g: t.uniform_(generator=g), shape).clamp_min(torch.finfo(torch.float32).tiny)

    def normal(self, *shape: int) -> torch.Tensor:
        return self._draw(lambda t, g: t.normal_(generator=g), shape)

    def gumbel(self, *shape: int) -> torch.Tensor:
        return -(-self.uniform(*shape).log()).log()


def resolve_noise(noise: Noise | None, batch: int, device) -> Noise:
    """The caller's noise (checked against the batch), or draws from the global generator."""
    if noise is None:
        return Noise.shared(batch, device)
    if noise.batch != batch:
        raise ValueError(f"noise was built for a batch of {noise.batch}, the model got {batch} images")
    noise.device = device
    return noise
