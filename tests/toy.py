"""A tiny learnable pose dataset for plumbing tests: the three head axes drawn as coloured
blobs (x red, y green, z blue; size grows towards the camera). Not a head model: the real
default data is :mod:`hpelib.data.synthetic`."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from hpelib.rotation import random_rotation


class AxisGlyphDataset(Dataset):
    def __init__(self, num_samples: int = 64, image_size: int = 32, seed: int = 0, identities: int = 4):
        g = torch.Generator().manual_seed(seed)
        self.rotations = random_rotation(num_samples, generator=g)
        self.identity = torch.randint(0, identities, (num_samples,), generator=g)
        s = image_size
        yy, xx = torch.meshgrid(torch.arange(s, dtype=torch.float32), torch.arange(s, dtype=torch.float32), indexing="ij")
        c = (s - 1) / 2
        tips = self.rotations.transpose(-1, -2)  # rows = head axes in camera coordinates
        images = torch.zeros(num_samples, 3, s, s)
        for axis in range(3):
            u = c + 0.35 * s * tips[:, axis, 0]
            v = c + 0.35 * s * tips[:, axis, 1]
            sigma = 0.06 * s * (1.2 - 0.5 * tips[:, axis, 2])
            d2 = (xx - u[:, None, None]) ** 2 + (yy - v[:, None, None]) ** 2
            images[:, axis] = torch.exp(-d2 / (2 * sigma[:, None, None] ** 2))
        self.images = (images.clamp(0, 1) * 255).to(torch.uint8)

    def __len__(self) -> int:
        return len(self.rotations)

    def __getitem__(self, i: int) -> dict:
        return {
            "image": self.images[i],
            "rotation": self.rotations[i],
            "identity": self.identity[i],
            "index": torch.tensor(i),
        }
