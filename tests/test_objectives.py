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


def _views(n: int = 6, d: int = 8, seed: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    f = {k: F.normalize(torch.randn(n, d, generator=g), dim=1) for k in ("image", "text", "image_aug", "text_aug")}
    f["logit_scale"] = torch.tensor(2.0)
    return f


def test_ssl_matches_the_formula_one_direction_per_modality() -> None:
    f = _views()
    s, labels = f["logit_scale"], torch.arange(6)
    image = F.cross_entropy(s * f["image"] @ f["image_aug"].T, labels)
    text = F.cross_entropy(s * f["text"] @ f["text_aug"].T, labels)
    total, parts = WeightedObjective({"ssl": 1.0})(f)
    assert torch.allclose(total, 0.5 * (image + text))
    assert torch.allclose(parts["ssl/image"], image) and torch.allclose(parts["ssl/text"], text)
    weighted, _ = WeightedObjective({"ssl": {"weight": 2.0, "image": 1.0, "text": 0.5}})(f)
    assert torch.allclose(weighted, 2.0 * 0.5 * (image + 0.5 * text))
    # rows are originals: transposing the direction gives a different value
    assert not torch.allclose(image, F.cross_entropy(s * f["image_aug"] @ f["image"].T, labels))


def test_ssl_views_follow_the_weights() -> None:
    assert WeightedObjective({"mmcl": 1.0, "ssl": 1.0}).views == {"image_aug", "text_aug"}
    assert WeightedObjective({"ssl": {"weight": 1.0, "image": 0.0}}).views == {"text_aug"}
    assert WeightedObjective({"mmcl": 1.0, "ssl": 0.0}).views == frozenset()


def test_cyclip_is_zero_for_consistent_features_and_matches_the_formula() -> None:
    f = _views()
    same = {**f, "text": f["image"]}  # identical modalities: both symmetric differences vanish
    total, _ = WeightedObjective({"cyclip": 1.0})(same)
    assert float(total) < 1e-10
    i, t = f["image"], f["text"]
    cross = ((i @ t.T) - (i @ t.T).T).square().sum() / 6
    inmodal = ((i @ i.T) - (t @ t.T)).square().sum() / 6
    total, parts = WeightedObjective({"cyclip": {"weight": 1.0, "cross": 0.5, "inmodal": 2.0}})(f)
    assert torch.allclose(parts["cyclip/crossmodal"], cross) and torch.allclose(parts["cyclip/inmodal"], inmodal)
    assert torch.allclose(total, 0.5 * cross + 2.0 * inmodal)


def test_siglip_matches_the_sigmoid_formula() -> None:
    f = _views()
    f["logit_bias"] = torch.tensor(-1.0)
    logits = f["logit_scale"] * f["image"] @ f["text"].T + f["logit_bias"]
    signs = 2 * torch.eye(6) - 1
    expected = -F.logsigmoid(signs * logits).sum() / 6
    total, _ = WeightedObjective({"siglip": 1.0})(f)
    assert torch.allclose(total, expected)


def test_objective_parameters_are_checked() -> None:
    import pytest

    from clipbackdoor.config import ConfigError
    from clipbackdoor.resolve import load_config

    with pytest.raises(ConfigError, match=r"objective\.ssl\.imag"):
        load_config("demo", ["objective={ssl: {weight: 1, imag: 2}}"])
    with pytest.raises(ConfigError, match="needs a 'weight'"):
        load_config("demo", ["objective={ssl: {image: 2}}"])
    cfg = load_config("demo", ["objective={mmcl: 1, siglip: 1}"])
    assert cfg.model.init_logit_bias == -10.0 and cfg.model.init_logit_scale == pytest.approx(math.log(10))
