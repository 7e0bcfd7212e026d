import math

import torch
import torch.nn.functional as F

from clipbackdoor.objectives import OBJECTIVES, WeightedObjective


def _features(n: int = 32, d: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(n, d, generator=g), dim=1)
    text = F.normalize(image + 0.05 * torch.randn(n, d, generator=g), dim=1)
    return image, text


def test_mmcl_is_low_for_aligned_pairs_and_high_for_shuffled() -> None:
    image, text = _features()
    scale = torch.tensor(1 / 0.07)
    loss = WeightedObjective({"mmcl": 1.0})
    aligned, _ = loss({"image": image, "text": text, "logit_scale": scale})
    shuffled, _ = loss({"image": image, "text": text.roll(1, dims=0), "logit_scale": scale})
    assert aligned < 0.1
    assert shuffled > math.log(32)  # worse than chance: the right text is always ranked low


def test_mmcl_matches_the_formula() -> None:
    image, text = _features(n=8, seed=1)
    s = torch.tensor(3.0)
    logits = s * image @ text.T
    labels = torch.arange(8)
    expected = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
    total, parts = WeightedObjective({"mmcl": 2.0})({"image": image, "text": text, "logit_scale": s})
    assert torch.allclose(parts["mmcl"], expected)
    assert torch.allclose(total, 2.0 * expected)


def test_registry_lists_mmcl_and_needs_no_extra_views() -> None:
    assert "mmcl" in OBJECTIVES
    assert WeightedObjective({"mmcl": 1.0}).views == frozenset()
