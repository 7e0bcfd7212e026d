import torch
import torch.nn.functional as F
from PIL import Image

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
            F.normalize(
                FakeClip().encode_text(fake_tokenizer([t.format(c) for t in TEMPLATES])), dim=-1
            ).mean(0)
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
