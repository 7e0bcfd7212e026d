import open_clip
import pytest

from clipbackdoor.config import TrainConfig
from clipbackdoor.models import ModelConfig, create_model
from clipbackdoor.train.optim import build_optimizer, lr_at, no_decay_names


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (0, 1e-3 * 1 / 10),  # the very first step is already warming up: no off-by-one
        (4, 1e-3 * 5 / 10),
        (9, 1e-3),  # end of warmup
        (10, 1e-3),  # cosine starts at the peak
        (60, 0.5e-3),  # half-way through the cosine
        (110, 0.0),  # the end
    ],
)
def test_warmup_then_cosine(step: int, expected: float) -> None:
    assert lr_at(step, 1e-3, warmup_steps=10, total_steps=110) == pytest.approx(expected, abs=1e-12)


def test_min_lr_and_no_warmup() -> None:
    assert lr_at(0, 1.0, warmup_steps=0, total_steps=100, min_lr=0.1) == pytest.approx(1.0)
    assert lr_at(100, 1.0, warmup_steps=0, total_steps=100, min_lr=0.1) == pytest.approx(0.1)


def test_weight_decay_groups() -> None:
    model = create_model(ModelConfig(name="tiny-rn")).model
    exempt = no_decay_names(model)
    assert "logit_scale" in exempt
    assert "ln_final.weight" in exempt and "ln_final.bias" in exempt
    assert "visual.bn1.weight" in exempt
    assert "text_projection" not in exempt and "visual.conv1.weight" not in exempt
    optimizer = build_optimizer(model, TrainConfig(weight_decay=0.2))
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.2 and no_decay["weight_decay"] == 0.0
    n_params = sum(1 for _ in model.parameters())
    assert len(decay["params"]) + len(no_decay["params"]) == n_params
    assert isinstance(model, open_clip.CLIP)
