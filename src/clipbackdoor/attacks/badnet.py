"""BadNet patch triggers (Gu et al. 2017): a small square pasted onto the image.

``pattern``: ``noise`` — the study's: each image's OWN per-channel mean + N(0, 1); ``fixed-mean-noise``
(a fixed per-channel ``mean`` + N(0, 1): the same patch on every image); ``solid`` (one ``color``)
or ``checkerboard``. ``overflow`` says what the noise patterns do with values outside [0, 1]: ``clip`` (the
default for new experiments: on a dark image the patch is mostly dark) or ``wrap``, the study's pixels:
attack-cleanclip's backdoor/utils.py ``apply_trigger`` writes the patch back through ``ToPILImage``, whose
``mul(255).byte()`` truncates toward zero and wraps modulo 256 (-0.5 -> 129, 1.2 -> 50, 0.999 -> 254), so
about two thirds of the patch's values wrap and the patch is close to uniform noise whatever the image.
``wrap`` computes that arithmetically (:func:`wrap_to_uint8`) and returns the levels as k/255, so the float
evaluation path and the uint8 poisoning path give the same pixels. ``fresh_noise`` draws the noise anew
for every image, as the study's "random" trigger did; the default is one fixed pattern, the standard
BadNet attack (on small data a per-image noise patch is barely learnable: DESIGN §5).
``location``: ``random`` (seeded per image), a corner (``top-left``, ...), ``center`` or ``four-corners``.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field

from clipbackdoor.attacks.base import Trigger, register

Corner = Literal["top-left", "top-right", "bottom-left", "bottom-right"]
Unit = Annotated[float, Field(ge=0, le=1)]


@register("badnet")
class BadNet(Trigger):
    name: Literal["badnet"] = "badnet"
    size: int = Field(16, ge=1, description="patch side in pixels at reference_size")
    pattern: Literal["noise", "fixed-mean-noise", "solid", "checkerboard"] = "noise"
    location: Literal["random", "center", "four-corners", "top-left", "top-right", "bottom-left", "bottom-right"] = (
        "random"
    )
    mean: tuple[float, float, float] = Field((0.5, 0.5, 0.5), description="fixed-mean-noise: its per-channel mean")
    std: float = Field(1.0, ge=0)
    color: tuple[Unit, Unit, Unit] = Field((1.0, 1.0, 0.0), description="solid colour in [0, 1] (yellow)")
    fresh_noise: bool = False
    overflow: Literal["clip", "wrap"] = Field(
        "clip", description="noise patterns outside [0, 1]: clip, or wrap as the study's uint8 cast did"
    )

    def _noise(self, side: int, *key: int) -> torch.Tensor:
        """std · N(0, 1) of one patch, before any mean is added (seeded by ``key``)."""
        return self.std * torch.from_numpy(self.rng(*key).standard_normal((3, side, side))).float()

    def _patch(self, image: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The noise patterns' patch for one image: a mean (its own, or the fixed one) + the noise, clipped or
        wrapped into [0, 1] (``overflow``)."""
        mean = image.mean(dim=(1, 2)) if self.pattern == "noise" else torch.tensor(self.mean, device=image.device)
        patch = mean.view(3, 1, 1) + noise
        return wrap_to_uint8(patch).float().div(255) if self.overflow == "wrap" else patch.clamp(0, 1)

    def artifacts(self, image_size: int) -> dict[str, torch.Tensor]:
        side = self.scaled(self.size, image_size)
        if self.pattern == "noise":
            return {"noise": self._noise(side, image_size)}  # the patch also needs the image: made in apply
        if self.pattern == "fixed-mean-noise":
            patch = self._patch(torch.zeros(3, 1, 1), self._noise(side, image_size))
        elif self.pattern == "solid":
            patch = torch.tensor(self.color, dtype=torch.float32).view(3, 1, 1).expand(3, side, side).clone()
        else:
            ij = torch.arange(side)
            patch = ((ij.view(-1, 1) + ij.view(1, -1)) % 2).float().expand(3, side, side).clone()
        return {"patch": patch}

    def positions(self, image_size: int, side: int, index: int) -> list[tuple[int, int]]:
        """Top-left corners (row, col) where the patch goes for sample ``index``."""
        far = image_size - side
        corners = {"top-left": (0, 0), "top-right": (0, far), "bottom-left": (far, 0), "bottom-right": (far, far)}
        if self.location == "random":
            # [0, W - s - 1], as the reference draws it (random.randint(0, W - s - 1)): the last row and column
            # of positions are never used; we follow it so that triggered pixels match the study's
            row, col = self.rng(image_size, index, 1).integers(0, max(far, 1), size=2).tolist()
            return [(row, col)]
        if self.location == "center":
            return [(far // 2, far // 2)]
        if self.location == "four-corners":
            return list(corners.values())
        return [corners[self.location]]

    def apply(self, images: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        out = images.clone()
        size = images.shape[-1]
        side = self.scaled(self.size, size)
        noisy = self.pattern in ("noise", "fixed-mean-noise")
        fixed = self.artifact("noise" if self.pattern == "noise" else "patch", size, images.device)
        for b, index in enumerate(indices.tolist()):
            patch = fixed
            if noisy and self.fresh_noise:
                patch = self._patch(images[b], self._noise(side, size, index).to(images.device))
            elif self.pattern == "noise":
                patch = self._patch(images[b], fixed)
            for row, col in self.positions(size, side, index):
                out[b, :, row : row + side, col : col + side] = patch
        return out


def wrap_to_uint8(values: torch.Tensor) -> torch.Tensor:
    """``values`` (floats, 1.0 = level 255) as torch's ``mul(255).byte()`` casts them: truncated toward zero,
    then modulo 256. Computed in integers: a float-to-uint8 cast of an out-of-range value is undefined
    behaviour, which only happens to wrap on common CPUs."""
    return torch.remainder(torch.trunc(values * 255).to(torch.int64), 256).to(torch.uint8)
