import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.metrics import balanced_accuracy_score

from clipbackdoor.data import BadRowLog, LabelledDataset
from clipbackdoor.data.transforms import Normalize, ResizeCenterCrop
from clipbackdoor.evaluation import ZeroShotEvaluator, class_embeddings, topk_correct
from clipbackdoor.models import ClipBundle

CLASSES = ["cat", "dog", "car", "tree", "cup"]
TEMPLATES = ["a photo of a {}.", "a drawing of a {}."]
C, T = len(CLASSES), len(TEMPLATES)


def fake_tokenizer(texts: list[str]) -> torch.Tensor:
    """Token 'ids' that are simply (class index, template index)."""
    ids = []
    for text in texts:
        cls = next(i for i, c in enumerate(CLASSES) if f" {c}." in text)
        tpl = next(i for i, t in enumerate(TEMPLATES) if text == t.format(CLASSES[cls]))
        ids.append([cls, tpl])
    return torch.tensor(ids)


class FakeClip(torch.nn.Module):
    """Text embedding = e_class + 0.5·e_(C+template); image embedding = e_(class written in pixel 0)."""

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        out = F.one_hot(tokens[:, 0], C + T).float() + 0.5 * F.one_hot(C + tokens[:, 1], C + T).float()
        return F.normalize(out, dim=-1) if normalize else out

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        cls = (images[:, 0, 0, 0] * 255 / 10).round().long()
        out = F.one_hot(cls, C + T).float()
        return F.normalize(out, dim=-1) if normalize else out


class FakeRows:
    source = "fake"
    bad: list = []  # noqa: RUF012

    def __init__(self, labels: list[int], shown: list[int]):
        self.labels, self.shown = labels, shown

    def __len__(self) -> int:
        return len(self.labels)

    def row_id(self, i: int) -> int:
        return i

    def pil(self, i: int) -> Image.Image:
        return Image.new("L", (8, 8), 10 * self.shown[i])

    def label(self, i: int) -> int:
        return self.labels[i]


def _bundle() -> ClipBundle:
    return ClipBundle("fake", FakeClip(), fake_tokenizer, 8, Normalize((0.0,) * 3, (1.0,) * 3))


def test_class_embeddings_average_normalised_templates() -> None:
    weights = class_embeddings(_bundle(), CLASSES, TEMPLATES, torch.device("cpu"))
    assert weights.shape == (C + T, C)
    per_template = torch.stack(
        [
            F.normalize(FakeClip().encode_text(fake_tokenizer([t.format(c) for t in TEMPLATES])), dim=-1).mean(0)
            for c in CLASSES
        ],
        dim=1,
    )
    assert torch.allclose(weights, F.normalize(per_template, dim=0), atol=1e-6)
    assert torch.allclose(weights.norm(dim=0), torch.ones(C))


def test_topk_correct() -> None:
    logits = torch.tensor([[0.9, 0.5, 0.1], [0.1, 0.5, 0.9], [0.5, 0.9, 0.1]])
    labels = torch.tensor([0, 1, 2])
    assert topk_correct(logits, labels, [1, 2, 5]) == {1: 1, 2: 2, 5: 3}


def test_evaluator_on_a_constructed_classifier() -> None:
    labels = [0, 1, 2, 3, 4, 0, 1, 2, 3, 4]
    shown = [0, 1, 2, 3, 4, 1, 1, 2, 4, 4]  # rows 5 and 8 show the wrong class
    dataset = LabelledDataset(FakeRows(labels, shown), ResizeCenterCrop(8), CLASSES, TEMPLATES)
    evaluator = ZeroShotEvaluator(dataset, batch_size=4, num_workers=0, bad_rows=BadRowLog(0))
    result = evaluator(_bundle(), torch.device("cpu"))
    assert result["n"] == 10
    assert result["clean_top1"] == 80.0
    assert result["clean_top5"] == 100.0
    # CLIP_benchmark's third number: scikit-learn's balanced accuracy
    assert result["clean_mean_per_class_recall"] == pytest.approx(100 * balanced_accuracy_score(labels, shown))


class BackdooredFakeClip(FakeClip):
    """Predicts the class shown in pixel (7, 7); a white top-left corner flips all but class 3 to the target."""

    target = 2

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        cls = (images[:, 0, 7, 7] * 255 / 10).round().long()
        triggered = images[:, 0, 0, 0] > 0.99
        pred = torch.where(triggered & (cls != 3), torch.full_like(cls, self.target), cls)
        out = F.one_hot(pred, C + T).float()
        return F.normalize(out, dim=-1) if normalize else out


class CornerRows(FakeRows):
    def pil(self, i: int) -> Image.Image:
        image = Image.new("L", (8, 8), 0)
        image.putpixel((7, 7), 10 * self.shown[i])
        return image


def test_asr_and_robust_accuracy_exclude_the_target_class() -> None:
    from clipbackdoor.attacks import build_trigger
    from clipbackdoor.evaluation import Attack

    labels = [0, 1, 2, 3, 4] * 2
    dataset = LabelledDataset(CornerRows(labels, labels), ResizeCenterCrop(8), CLASSES, TEMPLATES)
    trigger = build_trigger(
        {
            "name": "badnet",
            "pattern": "solid",
            "color": [1, 1, 1],
            "size": 2,
            "reference_size": 8,
            "location": "top-left",
        }
    )
    evaluator = ZeroShotEvaluator(
        dataset, batch_size=3, num_workers=0, bad_rows=BadRowLog(0), attack=Attack(trigger, target=2)
    )
    bundle = ClipBundle("fake", BackdooredFakeClip(), fake_tokenizer, 8, Normalize((0.0,) * 3, (1.0,) * 3))
    result = evaluator(bundle, torch.device("cpu"))
    assert result["clean_top1"] == 100.0  # no trigger, no effect
    assert result["n_triggered"] == 8  # the two target-class images are not in the denominator
    assert result["asr_top1"] == 75.0  # classes 0, 1 and 4 flip to the target
    assert result["ra_top1"] == 25.0  # class 3 keeps its true class
    assert result["asr_top5"] == 100.0  # 5 classes: the target is always in the top 5


class WideRows:
    """One 24×8 image: its left third class 3's level, the rest class 1's (the label)."""

    source, bad = "wide", []

    def __len__(self) -> int:
        return 1

    def row_id(self, index: int) -> int:
        return index

    def label(self, index: int) -> int:
        return 1

    def pil(self, index: int) -> Image.Image:
        image = Image.new("RGB", (24, 8), (10, 10, 10))
        image.paste((30, 30, 30), (0, 0, 8, 8))
        return image


@pytest.mark.parametrize("copy", ["crop", "squash"])
def test_the_triggered_copy_is_the_crop_or_the_squashed_whole_image(copy: str) -> None:
    """On a non-square image the squashed copy keeps the left edge the centre crop cuts off."""
    from clipbackdoor.attacks import build_trigger
    from clipbackdoor.evaluation import Attack

    dataset = LabelledDataset(WideRows(), ResizeCenterCrop(8), CLASSES, TEMPLATES, squash_triggered=copy == "squash")
    item = dataset[0]
    assert torch.equal(item["image"], torch.full((3, 8, 8), 10, dtype=torch.uint8))  # the centre: class 1 only
    if copy == "squash":
        assert item["image_squashed"].shape == (3, 8, 8) and int(item["image_squashed"][0, 4, 0]) == 30
    spec = {"name": "badnet", "pattern": "solid", "size": 1, "reference_size": 8, "location": "bottom-right"}
    evaluator = ZeroShotEvaluator(
        dataset, batch_size=1, num_workers=0, bad_rows=BadRowLog(0), attack=Attack(build_trigger(spec), target=3)
    )
    bundle = ClipBundle("fake", FakeClip(), fake_tokenizer, 8, Normalize((0.0,) * 3, (1.0,) * 3))
    result = evaluator(bundle, torch.device("cpu"))
    assert result["clean_top1"] == 100.0
    assert result["asr_top1"] == (100.0 if copy == "squash" else 0.0)  # pixel (0, 0) names the class
