"""EDA in forked DataLoader workers: WordNet is read safely in every process, and a worker's captions equal
the single-process ones for the same seed (the MMCL+SSL crash with 2+ workers: the WordNet reader's data
files, opened in the parent, were shared through fork and the workers' seeks and reads interleaved).

Each check looks up words no earlier lookup in this process has cached (disjoint slices of WordNet's own
lemma lists), and computes the single-process reference only after the workers ran: synonyms the parent
has cached before the fork would be inherited and hide the race.
"""

from __future__ import annotations

import csv
import multiprocessing
from functools import cache
from itertools import chain
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from clipbackdoor.augment import ViewMaker
from clipbackdoor.augment.wordnet import SYSTEM_WORDNET, synonyms, wordnet
from clipbackdoor.config import AugmentConfig, CsvPairs, ModelConfig, WebDatasetPairs
from clipbackdoor.data import build_pair_dataset, collate_skipping_bad
from clipbackdoor.data.batching import BatchLayout
from clipbackdoor.data.webdataset_source import png_bytes, write_shards
from clipbackdoor.models import create_model

pytestmark = [
    pytest.mark.skipif(not (SYSTEM_WORDNET / "data.adj").is_file(), reason="WordNet not installed"),
    pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning"),  # 4 workers on 2 cores
]

TOKENIZER = create_model(ModelConfig(name="tiny-rn")).tokenizer
LAYOUT = BatchLayout(global_batch=8, world_size=1, per_process=8, micro_batch=8, accum_steps=1)
_SLICES = 8  # disjoint word slices, one per check: no check sees words an earlier one cached


@pytest.fixture(scope="module", autouse=True)
def _wordnet_loaded() -> None:
    wordnet()  # once, in the parent: as ViewMaker does before the workers fork


@cache
def _lemmas(pos: str) -> list[str]:
    return sorted(w for w in wordnet().all_lemma_names(pos) if w.isalpha())


def _words(pos: str, part: int, n: int) -> list[str]:
    """``n`` one-word lemmas of WordNet's ``pos``, from slice ``part`` of ``_SLICES`` (spread over the alphabet)."""
    mine = _lemmas(pos)[part::_SLICES]
    return mine[:: max(1, len(mine) // n)][:n]


def _open_every_data_file() -> None:
    """Read one synset of each part of speech in this (parent) process, so all four data files are open."""
    for word in ("good", "dog", "run", "quickly"):
        synonyms(word)


class SynonymLists(Dataset):
    """Item ``i``: the synonyms of word ``i``, looked up in whichever process loads it."""

    def __init__(self, words: list[str]):
        self.words = words

    def __len__(self) -> int:
        return len(self.words)

    def __getitem__(self, index: int) -> tuple[str, ...]:
        return synonyms(self.words[index])


def _as_is(batch: list[Any]) -> list[Any]:
    return batch


def _loaded(dataset: Dataset, workers: int, **kwargs: Any) -> list[Any]:
    loader = DataLoader(dataset, num_workers=workers, multiprocessing_context="fork" if workers else None, **kwargs)
    return list(loader)


def test_forked_workers_read_wordnet_through_their_own_handles() -> None:
    words = _words("a", 0, 300) + _words("n", 0, 200) + _words("v", 0, 100)  # "a": the crash's part of speech
    _open_every_data_file()
    got = {w: list(chain(*_loaded(SynonymLists(words), w, batch_size=10, collate_fn=_as_is))) for w in (2, 4)}
    expected = [synonyms(w) for w in words]  # after the workers: nothing was cached before they forked
    assert sum(map(bool, expected)) > len(words) // 2
    assert got[2] == expected
    assert got[4] == expected


def _captions(part: int, n: int) -> list[str]:
    """``n`` captions of real words, nearly every content word distinct."""
    adjectives, nouns, verbs = _words("a", part, 2 * n), _words("n", part, 2 * n), _words("v", part, n)
    return [
        f"a {adjectives[2 * i]} {nouns[2 * i]} {verbs[i]} beside the {adjectives[2 * i + 1]} {nouns[2 * i + 1]}"
        for i in range(n)
    ]


def _text_views(dataset: Any, workers: int, keys: list[tuple[int, int]] | None) -> dict[int, list[int]]:
    """``index -> text_aug token ids`` over one pass of ``dataset`` (map-style: over ``keys``)."""
    kwargs: dict[str, Any] = {"batch_size": 8, "collate_fn": collate_skipping_bad}
    if keys is not None:
        kwargs["sampler"] = keys
    out: dict[int, list[int]] = {}
    for batch in _loaded(dataset, workers, **kwargs):
        assert not batch["bad_rows"]
        for index, tokens in zip(batch["index"].tolist(), batch["text_aug"], strict=True):
            out[index] = tokens.tolist()
    return out


def _view_maker() -> ViewMaker:
    """Image and text views, as MMCL+SSL makes them; high EDA rates: many synonym lookups per caption."""
    config = AugmentConfig(text={"alpha_sr": 0.5, "alpha_ri": 0.5})
    return ViewMaker(frozenset({"image_aug", "text_aug"}), seed=3, config=config)  # loads WordNet here, in the parent


def _image(i: int) -> Image.Image:
    return Image.new("RGB", (12, 10), (i % 256, 255 - i % 256, (7 * i) % 256))


def test_csv_pairs_text_views_equal_across_worker_counts(tmp_path: Path) -> None:
    captions = _captions(part=1, n=96)
    (tmp_path / "images").mkdir()
    with (tmp_path / "pairs.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "caption"])
        for i, caption in enumerate(captions):
            _image(i).save(tmp_path / "images" / f"{i}.png")
            writer.writerow([f"images/{i}.png", caption])
    cfg = CsvPairs(path=str(tmp_path / "pairs.csv"))
    dataset = build_pair_dataset(cfg, 32, seed=3, tokenizer=TOKENIZER, view_maker=_view_maker())
    _open_every_data_file()
    keys = [(1, i) for i in range(len(captions))]
    got = {w: _text_views(dataset, w, keys) for w in (2, 4)}
    expected = _text_views(dataset, 0, keys)  # last: the single-process pass fills the parent's caches
    assert len(expected) == len(captions)
    assert got[2] == expected
    assert got[4] == expected


def test_shard_pairs_text_views_equal_across_worker_counts(tmp_path: Path) -> None:
    captions = _captions(part=2, n=96)
    pairs = ((f"{i:06d}", png_bytes(_image(i)), "png", caption) for i, caption in enumerate(captions))
    files = write_shards(pairs, str(tmp_path / "s-%03d.tar"), per_shard=12)
    assert len(files) == 8  # splits evenly over 2 and 4 workers: every worker reads whole shards once
    cfg = WebDatasetPairs(urls=str(tmp_path / "s-{000..007}.tar"), epoch_samples=96, resampled=False, shuffle_buffer=1)
    maker = _view_maker()

    def views(workers: int) -> dict[int, list[int]]:
        dataset = build_pair_dataset(cfg, 32, 3, TOKENIZER, maker, layout=LAYOUT, num_workers=workers)
        dataset.set_epoch(1)
        return _text_views(dataset, workers, None)

    _open_every_data_file()
    got = {w: views(w) for w in (2, 4)}
    expected = views(0)
    assert len(expected) == len(captions)
    assert got[2] == expected
    assert got[4] == expected


def test_a_forked_child_keeps_the_tables_but_opens_its_own_data_files() -> None:
    """No reload per worker: the child uses the reader fork copied, with data files of its own."""
    _open_every_data_file()
    reader = wordnet()
    reader.loaded_in_parent = True  # markers that fork copies
    for handle in reader._data_file_map.values():
        handle.opened_in_parent = True
    word = _words("a", 3, 1)[0]

    def child(queue: Any) -> None:
        own = wordnet()
        found = synonyms(word)  # not cached: reads data.adj
        queue.put(
            (
                getattr(own, "loaded_in_parent", False),
                [hasattr(h, "opened_in_parent") for h in own._data_file_map.values()],
                found,
            )
        )

    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    process = ctx.Process(target=child, args=(queue,))
    process.start()
    same_reader, inherited, found = queue.get(timeout=60)
    process.join(timeout=60)
    assert process.exitcode == 0
    assert same_reader
    assert inherited and not any(inherited)
    assert found == synonyms(word)
