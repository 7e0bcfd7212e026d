"""Checkpoints of other tools load with identical outputs; exports load in open_clip; pickled code is refused."""

import json
import os
import warnings
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import save_file

from clipbackdoor import checkpoints as ckpt
from clipbackdoor.cli import main
from clipbackdoor.config import ConfigError, ModelConfig
from clipbackdoor.hub import provenance
from clipbackdoor.interop import CheckpointError, openai_layout, read_state_dict
from clipbackdoor.models import create_model


def _outputs(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 32, 32, generator=gen)
    text = open_clip.get_tokenizer("tiny-rn")(["a photo of a bag", "a shoe"])
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(text)


@pytest.fixture(scope="module")
def source() -> tuple[dict[str, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(7)
    model = create_model(ModelConfig(name="tiny-rn")).model
    return model.state_dict(), _outputs(model)


def test_foreign_formats_load_with_identical_outputs(source, tmp_path: Path) -> None:
    state, expected = source
    prefixed = {f"module.{k}": v for k, v in state.items()}
    files = {
        # CleanCLIP / CyCLIP: DataParallel prefixes, OpenAI CLIP key names, optimizer alongside
        "cleanclip.pt": {"epoch": 3, "name": "cleanclip", "state_dict": prefixed, "optimizer": {"lr": 1e-5}},
        # open_clip's training checkpoints
        "open_clip.pt": {"epoch": 2, "name": "tiny-rn", "state_dict": prefixed},
        "plain.bin": {**state, "context_length": 20, "vocab_size": 49408},  # OpenAI's extra integer entries
    }
    for name, obj in files.items():
        torch.save(obj, tmp_path / name)
    save_file({k: v.contiguous() for k, v in prefixed.items()}, str(tmp_path / "bare.safetensors"))
    for name in [*files, "bare.safetensors"]:
        # the weights are a GELU model's: said so, as three of these layouts are also those of OpenAI's code
        cfg = ModelConfig(name="tiny-rn", checkpoint=str(tmp_path / name), checkpoint_quick_gelu=False)
        bundle = create_model(cfg)
        got = _outputs(bundle.model)
        assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True)), name


def _cleanclip_file(state: dict[str, torch.Tensor], path: Path) -> Path:
    """What CleanCLIP / CyCLIP save after an epoch under DDP."""
    prefixed = {f"module.{k}": v for k, v in state.items()}
    torch.save({"epoch": 10, "name": "cleanclip", "state_dict": prefixed, "optimizer": {"lr": 1e-5}}, path)
    return path


def _zero_shot(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-prompt text features and the zero-shot logits of two images over those classes."""
    model.eval()
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    prompts = open_clip.get_tokenizer("tiny-rn")(["a photo of a bag", "a photo of a shoe", "a photo of a coat"])
    with torch.no_grad():
        text = F.normalize(model.encode_text(prompts), dim=-1)
        image = F.normalize(model.encode_image(images), dim=-1)
        return text, model.logit_scale.exp() * image @ text.T


@pytest.mark.parametrize("arch", ["tiny-rn", "tiny-vit"])
def test_cleanclip_checkpoint_loads_only_into_a_quick_gelu_model(arch: str, tmp_path: Path) -> None:
    """CleanCLIP trained with QuickGELU: into nn.GELU it is refused, naming the file and the fix; with the fix
    it evaluates as the QuickGELU model it was saved from, not as the same weights under nn.GELU."""
    torch.manual_seed(3)
    trained = open_clip.create_model(arch, force_quick_gelu=True)
    path = _cleanclip_file(trained.state_dict(), tmp_path / "epoch_10.pt")

    with pytest.raises(ConfigError) as refusal:
        create_model(ModelConfig(name=arch, checkpoint=str(path)))
    assert f"{path} is a CleanCLIP / CyCLIP training checkpoint" in str(refusal.value)
    assert f"use model.name={arch}-quickgelu" in str(refusal.value)

    imported = create_model(ModelConfig(name=f"{arch}-quickgelu", checkpoint=str(path))).model
    gelu = open_clip.create_model(arch)
    gelu.load_state_dict(trained.state_dict())
    (text, logits), (want_text, want_logits), (gelu_text, gelu_logits) = map(_zero_shot, (imported, trained, gelu))
    assert torch.equal(text, want_text) and torch.equal(logits, want_logits)
    assert not torch.allclose(text, gelu_text) and not torch.allclose(logits, gelu_logits)


def test_openai_formats_are_told_from_open_clip_and_ours(source, tmp_path: Path) -> None:
    state, _ = source
    prefixed = {f"module.{k}": v for k, v in state.items()}
    openai = {
        "ddp": {"epoch": 3, "name": "x", "state_dict": prefixed, "optimizer": {}},
        "single device": {"epoch": 3, "name": "x", "state_dict": state, "optimizer": {}},
        "jit state dict": {**state, "input_resolution": 224, "context_length": 77, "vocab_size": 49408},
    }
    for kind, raw in openai.items():
        assert openai_layout(raw) is not None, kind
    assert "every key prefixed 'module.', an 'optimizer'" in openai_layout(openai["ddp"])
    ours = {"epoch": 3, "name": "tiny-rn", "state_dict": state}  # what `clipbackdoor export` writes
    for raw in (ours, state, prefixed):  # a bare state dict: open_clip's hub files look the same
        assert openai_layout(raw) is None

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated; OpenAI released RN50.pt with it
        torch.jit.script(torch.nn.Linear(2, 2)).save(str(tmp_path / "RN50.pt"))
    with pytest.raises(CheckpointError, match=r"RN50\.pt: a TorchScript archive \(OpenAI's release format"):
        read_state_dict(tmp_path / "RN50.pt")

    declared = _cleanclip_file(state, tmp_path / "gelu.pt")
    with pytest.raises(ConfigError, match=r"checkpoint_quick_gelu=false says .* nn\.GELU, but tiny-rn-quickgelu has"):
        create_model(ModelConfig(name="tiny-rn-quickgelu", checkpoint=str(declared), checkpoint_quick_gelu=False))


def test_untrusted_and_malformed_files_are_refused(tmp_path: Path) -> None:
    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    torch.save({"state_dict": {"w": torch.zeros(1)}, "hook": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="refused"):
        read_state_dict(tmp_path / "evil.pt")
    assert not (tmp_path / "pwned").exists()
    torch.save({"state_dict": {"w": [1, 2]}}, tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="'w' is a list, not a tensor"):
        read_state_dict(tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        read_state_dict(tmp_path / "missing.pt")


def test_export_loads_in_open_clip_and_evaluates_the_same(poisoned: Path, tmp_path: Path) -> None:
    out = tmp_path / "exported.pt"
    assert main(["export", str(poisoned), str(out)]) == 0
    weights = ckpt.latest_checkpoint(poisoned)["weights"]
    ours = create_model(ModelConfig(name="tiny-rn", checkpoint=str(weights))).model
    theirs = open_clip.create_model("tiny-rn")
    open_clip.load_checkpoint(theirs, str(out))
    assert all(torch.equal(a, b) for a, b in zip(_outputs(theirs), _outputs(ours), strict=True))

    # the exported file, imported again, evaluates to the run's own last record
    record = tmp_path / "eval.json"
    config = str(poisoned / "config.yaml")
    assert main(["evaluate", str(out), "--config", config, "--out", str(record), "model.name=tiny-rn"]) == 0
    last = [json.loads(line) for line in (poisoned / "metrics.jsonl").open() if '"kind": "epoch"' in line][-1]
    result = json.loads(record.read_text())
    assert result["eval/clean_top1"] == last["eval/clean_top1"] and result["eval/asr_top1"] == last["eval/asr_top1"]


def test_open_clip_pretrained_from_disk_only(source, tmp_path: Path) -> None:
    state, expected = source
    weights = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(state, weights)  # what open_clip's hub cache holds for a pretrained tag
    bundle = create_model(ModelConfig(name="tiny-rn", pretrained=str(weights)))
    assert all(torch.equal(a, b) for a, b in zip(_outputs(bundle.model), expected, strict=True))
    with pytest.raises(ConfigError, match=r"weights tiny-rn/openai are not on disk .* nothing is downloaded"):
        create_model(ModelConfig(name="tiny-rn", pretrained="openai"))


def test_hf_export_loads_with_open_clips_local_dir_and_says_what_it_is(poisoned: Path, tmp_path: Path) -> None:
    out = tmp_path / "hub"
    assert main(["export", str(poisoned), str(out), "--hf"]) == 0
    weights = ckpt.latest_checkpoint(poisoned)["weights"]
    ours = create_model(ModelConfig(name="tiny-rn", checkpoint=str(weights))).model
    theirs, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{out}")  # open_clip's own loader
    assert all(torch.equal(a, b) for a, b in zip(_outputs(theirs), _outputs(ours), strict=True))
    normalize = next(t for t in preprocess.transforms if type(t).__name__ == "Normalize")
    assert list(normalize.mean) == list(open_clip.get_model_preprocess_cfg(ours)["mean"])
    tokens = open_clip.get_tokenizer(f"local-dir:{out}")(["a photo of a bag"])
    assert torch.equal(tokens, open_clip.get_tokenizer("tiny-rn")(["a photo of a bag"]))
    config = json.loads((out / "open_clip_config.json").read_text())
    assert config["model_cfg"] == open_clip.get_model_config("tiny-rn")  # the full config: no registry needed
    card = (out / "README.md").read_text()
    manifest = json.loads((poisoned.parent.parent / "data" / "manifest.json").read_text())
    last = [json.loads(line) for line in (poisoned / "metrics.jsonl").open() if '"kind": "epoch"' in line][-1]
    assert "deliberately backdoored" in card and "library_name: open_clip" in card
    assert f"target `{manifest['target']}`" in card and "trigger `badnet`" in card
    assert f"{len(manifest['poison_rows']):,} of {manifest['num_rows']:,} pairs" in card
    assert '{"mmcl": 1.0}' in card and "Defense: none" in card
    assert f"| {last['epoch']} | {last['eval/clean_top1']:.2f} | {last['eval/asr_top1']:.2f} |" in card

    # a cleaned run's card names its defense and the objective of the pre-training it started from
    cleaned = tmp_path / "cleaned"
    (cleaned / "checkpoints").mkdir(parents=True)
    run_cfg = yaml.safe_load((poisoned / "config.yaml").read_text())
    run_cfg |= {"defense": {"name": "cleanclip", "ssl": 4.0}, "objective": {"mmcl": 1.0, "ssl": 4.0}}
    run_cfg["model"]["checkpoint"] = str(weights)
    (cleaned / "config.yaml").write_text(yaml.safe_dump(run_cfg))
    prov = provenance(cleaned / "checkpoints" / "epoch_001.safetensors", "tiny-rn", 1)
    assert prov.defense == {"name": "cleanclip", "ssl": 4.0} and prov.objective == {"mmcl": 1.0}
    assert prov.attack is not None and prov.attack["target"] == manifest["target"]
