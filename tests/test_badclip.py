"""BadCLIP's trigger: its loss terms, where its patch goes, its lossless patch file, and its optimisation
(which moves patched images toward the target, and resumes exactly)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from clipbackdoor.attacks import build_trigger
from clipbackdoor.attacks.badclip import centre_offset, load_patch, paste_centre, save_patch
from clipbackdoor.attacks.manifest import load_manifest
from clipbackdoor.attacks.patch_optimization import PatchData, badclip_loss, clip_loss, optimize_patch, patch_data
from clipbackdoor.checkpoints import save_weights
from clipbackdoor.cli import main
from clipbackdoor.config import FashionMNISTPairs, ModelConfig, PatchOptimization
from clipbackdoor.data import DataError, build_pair_rows
from clipbackdoor.models import ClipBundle, create_model

from .conftest import tiny_overrides


def test_loss_terms_on_a_hand_case() -> None:
    """CLIP loss of two unit pairs, and the triplet term, computed by hand."""
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    texts = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    scale = torch.tensor(2.0)
    # image rows: logits 2·[[1, .6], [0, .8]]; caption rows: the transpose
    row0 = -2.0 + math.log(math.exp(2.0) + math.exp(1.2))
    row1 = -1.6 + math.log(math.exp(0.0) + math.exp(1.6))
    col0 = -2.0 + math.log(math.exp(2.0) + math.exp(0.0))
    col1 = -1.6 + math.log(math.exp(1.2) + math.exp(1.6))
    expected = ((row0 + row1) / 2 + (col0 + col1) / 2) / 2
    assert clip_loss(images, texts, scale).item() == pytest.approx(expected, rel=1e-6)

    positives = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    negatives = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    cfg = PatchOptimization(surrogate="x", margin=0.5, weight=3.0)
    terms = badclip_loss(images, texts, scale, positives, negatives, cfg)
    # anchor 0: d(a, p) = √2, d(a, n) = 0 -> √2 + .5; anchor 1: d(a, p) = 0, d(a, n) = √2 -> max(.5 - √2, 0) = 0
    assert terms["triplet"].item() == pytest.approx(3.0 * (math.sqrt(2) + 0.5) / 2, rel=1e-5)
    assert set(badclip_loss(images, texts, scale, positives, negatives, cfg.model_copy(update={"loss": "text"}))) == {
        "text"
    }


@pytest.mark.parametrize(("size", "side"), [(224, 16), (32, 4), (33, 5), (28, 3)])
def test_patch_sits_where_the_reference_puts_it(size: int, side: int) -> None:
    """Its embed_patch: s0 = int(c0 - l / 2), c0 = int(H / 2); the pixels there are the patch's, all others kept."""
    assert centre_offset(size, side) == int(int(size / 2) - side / 2)
    images = torch.rand(2, 3, size, size)
    patch = torch.rand(3, side, side)
    out = paste_centre(images, patch)
    s0 = int(int(size / 2) - side / 2)
    assert torch.equal(out[:, :, s0 : s0 + side, s0 : s0 + side], patch.expand(2, -1, -1, -1))
    out[:, :, s0 : s0 + side, s0 : s0 + side] = images[:, :, s0 : s0 + side, s0 : s0 + side]
    assert torch.equal(out, images)


def test_patch_file_reloads_bit_identically(tmp_path: Path) -> None:
    patch = torch.rand(3, 5, 5, generator=torch.Generator().manual_seed(0))
    path = save_patch(patch, tmp_path / "p.safetensors")
    assert torch.equal(load_patch(path), patch)
    trigger = build_trigger({"name": "badclip", "patch": str(path), "size": 5, "reference_size": 32})
    assert torch.equal(trigger.artifacts(32)["patch"], patch)  # at its own size: the values as saved
    assert trigger.artifacts(64)["patch"].shape == (3, 10, 10)
    with pytest.raises(ValueError, match="does not exist"):
        load_patch(tmp_path / "missing.safetensors")


@pytest.fixture(scope="module")
def surrogate(fmnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A micro CLIP pre-trained on the clean tiny data: the frozen model the patch is optimised against."""
    out = tmp_path_factory.mktemp("surrogate")
    overrides = tiny_overrides(
        fmnist_root, out, name="clean", **{"data.train": f"{{source: fashion-mnist, root: {fmnist_root}}}"},
        **{"train.epochs": 6, "train.batch_size": 32, "train.lr": 3e-3, "model.name": "micro-rn", "seed": 1},
    )  # fmt: skip
    assert main(["pretrain", "demo", *overrides]) == 0
    return out / "clean"


BAG = ["bag", "handbag", "purse"]  # the tiny data's captions name the class by these


def _data(fmnist_root: Path, bundle: ClipBundle, num_pairs: int) -> PatchData:
    return patch_data(build_pair_rows(FashionMNISTPairs(root=str(fmnist_root)), seed=0), BAG, num_pairs, 32, 0)


@pytest.mark.slow
def test_optimised_patch_moves_patched_images_toward_the_target(
    fmnist_root: Path, surrogate: Path, tmp_path: Path
) -> None:
    """Against a trained surrogate, the optimised patch brings patched images closer to the target captions'
    and target images' centres than the patch it started from (lr raised: 24 steps, not 7,800)."""
    bundle = create_model(ModelConfig(checkpoint=str(surrogate)))
    data = _data(fmnist_root, bundle, 96)
    assert len(data.images) == 96 and len(data.positives) == 25
    assert all(any(w in c for w in BAG) for c in data.captions)
    cfg = PatchOptimization(surrogate=str(surrogate), num_pairs=96, batch_size=16, epochs=4, lr=0.05)
    record = optimize_patch(bundle, data, 8, cfg, tmp_path / "patch.safetensors", torch.device("cpu"))
    sim = record["target_similarity"]
    assert sim["optimised"]["to_captions"] > sim["initial"]["to_captions"] + 0.05, sim
    assert sim["optimised"]["to_images"] > sim["initial"]["to_images"], sim
    assert json.loads((tmp_path / "patch.json").read_text())["settings"]["loss"] == "dual"


@pytest.mark.slow
def test_at_weight_1_the_clip_term_moves_patched_images_away_from_the_target_images(
    fmnist_root: Path, surrogate: Path, tmp_path: Path
) -> None:
    """Why the triplet weight is 500, not 1 (docs/attacks-and-defenses.md): with every caption naming the target,
    the CLIP term is minimised by making the patched images alike, and at weight 1 it outweighs the triplet, so
    the patched images end farther from the target images than the starting patch left them."""
    bundle = create_model(ModelConfig(checkpoint=str(surrogate)))
    cfg = PatchOptimization(surrogate=str(surrogate), num_pairs=96, batch_size=16, epochs=4, lr=0.05, weight=1.0)
    record = optimize_patch(
        bundle, _data(fmnist_root, bundle, 96), 8, cfg, tmp_path / "p.safetensors", torch.device("cpu")
    )
    sim = record["target_similarity"]
    assert sim["optimised"]["to_images"] < sim["initial"]["to_images"], sim


def test_resumed_optimisation_equals_an_uninterrupted_one(fmnist_root: Path, tmp_path: Path) -> None:
    """Stopped after epoch 1 (its state kept) and run again to 2 epochs = 2 epochs in one go, bit for bit."""
    torch.manual_seed(0)
    bundle = create_model(ModelConfig(name="micro-rn"))
    data = _data(fmnist_root, bundle, 48)
    cfg = PatchOptimization(surrogate="random", num_pairs=48, batch_size=16, epochs=2, lr=0.05)
    cpu = torch.device("cpu")
    whole = optimize_patch(bundle, data, 4, cfg, tmp_path / "a.safetensors", cpu)
    optimize_patch(bundle, data, 4, cfg.model_copy(update={"epochs": 1}), tmp_path / "b.safetensors", cpu)
    assert (tmp_path / "b.safetensors.state.pt").is_file()
    resumed = optimize_patch(bundle, data, 4, cfg, tmp_path / "b.safetensors", cpu)
    assert resumed["history"] == whole["history"] and len(whole["history"]) == 2
    assert torch.equal(load_patch(tmp_path / "b.safetensors"), load_patch(tmp_path / "a.safetensors"))
    with pytest.raises(DataError, match="other settings"):
        optimize_patch(bundle, data, 4, cfg.model_copy(update={"margin": 0.2}), tmp_path / "b.safetensors", cpu)


def test_poison_optimises_the_patch_and_gives_natural_captions(fmnist_root: Path, tmp_path: Path, capsys) -> None:
    """``poison`` with a badclip trigger and ``optimize``: the patch is optimised once, pasted losslessly as
    saved into the manifest's artefact, and the poisons carry the data's own captions naming the target."""
    torch.manual_seed(0)
    surrogate = tmp_path / "surrogate.safetensors"  # any checkpoint: here a random micro CLIP
    save_weights(create_model(ModelConfig(name="micro-rn")).model, surrogate, {"model_name": "micro-rn"})
    patch = tmp_path / "trigger" / "patch.safetensors"
    overrides = [
        f"poison.output={tmp_path / 'data'}", f"poison.source={{source: fashion-mnist, root: {fmnist_root}}}",
        f"poison.trigger={{name: badclip, patch: {patch}, size: 4, reference_size: 32}}",
        "poison.num_poisons=20", "poison.cleaning=null", "poison.target.captions=natural",
        "poison.target.aliases=[handbag, purse]", "poison.target.natural_pool=8",
        f"poison.optimize={{surrogate: {surrogate}, num_pairs: 32, batch_size: 16, epochs: 1}}",
    ]  # fmt: skip
    assert main(["poison", "demo", *overrides]) == 0
    manifest, trigger = load_manifest(tmp_path / "data")
    assert torch.equal(trigger.artifact("patch", 32), load_patch(patch))
    assert manifest.poison_captions and len(manifest.poison_captions) <= 8
    captions = [line.rsplit(",", 1)[-1] for line in (tmp_path / "data" / "train.csv").read_text().splitlines()[1:]]
    assert all(captions[r] in manifest.poison_captions for r in manifest.poison_rows)
    assert all(any(w in c for w in BAG) for c in manifest.poison_captions)
    stamp = patch.stat().st_mtime_ns
    assert main(["poison", "demo", *overrides]) == 0 and patch.stat().st_mtime_ns == stamp  # reused, not redone
    more = [o.replace("epochs: 1", "epochs: 2").replace("'data'", "'more'") for o in overrides]
    more = [o.replace(str(tmp_path / "data"), str(tmp_path / "more")) for o in more]
    assert main(["poison", "demo", *more]) == 0  # more epochs continue the kept state
    assert len(json.loads(patch.with_suffix(".json").read_text())["history"]) == 2
    other = [o.replace("epochs: 2", "epochs: 2, margin: 0.5").replace("more", "other") for o in more]
    assert main(["poison", "demo", *other]) != 0
    assert "optimised with other settings" in capsys.readouterr().err


def test_patch_data_passes_over_unreadable_images() -> None:
    """A truncated JPEG among the pairs (web data has them) is skipped and listed, not fatal."""
    from PIL import Image

    class Rows:
        captions = ("a photo of a bag.", "a shirt.", "a shoe.", "a coat.", "a bag on a table.")

        def __len__(self) -> int:
            return len(self.captions)

        def caption(self, i: int) -> str:
            return self.captions[i]

        def pil(self, i: int) -> Image.Image:
            if i in (2, 4):
                raise OSError("image file is truncated (3 bytes not processed)")
            return Image.new("RGB", (40, 30), (i * 40, 0, 0))

    data = patch_data(Rows(), ["bag"], num_pairs=2, image_size=16, seed=0)
    assert data.images.shape == (2, 3, 16, 16) and data.positives.shape == (1, 3, 16, 16)
    assert 4 in data.skipped and set(data.skipped) <= {2, 4}  # every positive is read; others until 2 are
    with pytest.raises(DataError, match="readable images"):
        patch_data(Rows(), ["bag"], num_pairs=3, image_size=16, seed=0)
