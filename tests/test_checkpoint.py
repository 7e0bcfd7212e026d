import json
from pathlib import Path

import pytest
import torch

from clipbackdoor import checkpoints as ckpt
from clipbackdoor.config import ModelConfig
from clipbackdoor.models import create_model


def test_weights_and_state_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    a = create_model(ModelConfig(name="tiny-rn"))
    torch.manual_seed(1)
    b = create_model(ModelConfig(name="tiny-rn"))
    optimizer = torch.optim.AdamW(a.model.parameters(), lr=0.1)
    a.model(torch.rand(2, 3, 32, 32), a.tokenizer(["x", "y"]))[0].sum().backward()
    optimizer.step()
    state = {"optimizer": optimizer.state_dict(), "rng": ckpt.rng_state(), "step": 5}
    next_draw = torch.rand(3)
    ckpt.save_checkpoint(tmp_path, 3, a.model, state, {"model_name": "tiny-rn"})

    latest = ckpt.latest_checkpoint(tmp_path)
    assert latest["epoch"] == 3 and latest["weights"].name == "epoch_003.safetensors"
    assert ckpt.checkpoint_model_name(latest["weights"]) == "tiny-rn"
    ckpt.load_weights(b.model, tmp_path)
    a.model.eval(), b.model.eval()
    x, t = torch.rand(4, 3, 32, 32), a.tokenizer(["a", "b", "c", "d"])
    for out_a, out_b in zip(a.model(x, t), b.model(x, t), strict=True):
        assert torch.equal(out_a, out_b)

    loaded = ckpt.load_state(latest["state"])
    assert loaded["step"] == 5 and loaded["epoch"] == 3
    fresh = torch.optim.AdamW(b.model.parameters(), lr=0.1)
    fresh.load_state_dict(loaded["optimizer"])
    first = next(iter(optimizer.state.values()))["exp_avg"]
    assert torch.equal(next(iter(fresh.state.values()))["exp_avg"], first)

    torch.manual_seed(123)
    ckpt.set_rng_state(loaded["rng"])
    assert torch.equal(torch.rand(3), next_draw), "the RNG continues from where the checkpoint was taken"
    assert not list(tmp_path.glob(".*.tmp")), "temporary files must not be left behind"


def test_latest_pointer_moves_and_old_checkpoints_are_pruned(tmp_path: Path) -> None:
    model = create_model(ModelConfig(name="tiny-rn")).model
    for epoch in (1, 2, 3):
        ckpt.save_checkpoint(tmp_path, epoch, model, {"step": epoch}, {"model_name": "tiny-rn"}, keep_last=2)
    assert json.loads((tmp_path / "latest.json").read_text())["epoch"] == 3
    assert sorted(p.name for p in tmp_path.glob("*.safetensors")) == [
        "epoch_002.safetensors",
        "epoch_003.safetensors",
    ]


def test_mismatched_weights_are_refused(tmp_path: Path) -> None:
    small = create_model(ModelConfig(name="tiny-rn")).model
    ckpt.save_checkpoint(tmp_path, 1, small, {}, {"model_name": "tiny-rn"})
    other = create_model(ModelConfig(name="tiny-vit")).model
    with pytest.raises(ValueError, match="does not fit the model"):
        ckpt.load_weights(other, tmp_path)


def test_state_file_with_pickled_code_is_refused(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.state.pt"
    torch.save({"step": 1, "payload": Evil()}, path)
    with pytest.raises(Exception, match="Weights only load failed"):
        ckpt.load_state(path)
