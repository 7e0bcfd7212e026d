import importlib
import os
import random
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clipbackdoor.augment import ViewMaker, view_seed
from clipbackdoor.augment.text import EDA, clean_words, delete_words, swap_words
from clipbackdoor.augment.wordnet import SYSTEM_WORDNET, lexnames_from_man_page
from clipbackdoor.config import AugmentConfig

FAKE_SYNONYMS = {"photo": ("picture", "snapshot"), "bag": ("handbag", "tote bag"), "dark": ("black",)}
eda = EDA(synonyms=lambda w: FAKE_SYNONYMS.get(w, ()))


def test_eda_on_empty_one_word_and_punctuation() -> None:
    assert eda("", random.Random(0)) == ""
    assert eda("   ", random.Random(0)) == "   "
    assert eda("!!!", random.Random(0)) == "!!!"  # nothing to edit: the caption is left as it was
    for seed in range(20):
        out = eda("Bag.", random.Random(seed)).split()
        assert out in (["bag"], ["handbag"], ["tote", "bag"], ["bag", "handbag"], ["handbag", "bag"],
                       ["bag", "tote", "bag"], ["tote", "bag", "bag"])  # fmt: skip
    assert clean_words("A photo, of a T-shirt's 'tee'!") == ["a", "photo", "of", "a", "t", "shirts", "tee"]


def test_eda_edits_change_few_words_and_keep_stop_words() -> None:
    caption = "a photo of a bag on a dark background"
    words = caption.split()
    rng = random.Random(1)
    replaced = eda.replace_synonyms(words, 1, rng)
    assert sum(a != b for a, b in zip(replaced, words, strict=False)) >= 1
    assert all(w in replaced for w in ("a", "of", "on"))
    inserted = eda.insert_synonyms(words, 1, random.Random(2))
    assert len(inserted) in (len(words) + 1, len(words) + 2)  # "tote bag" is two words
    assert sorted(swap_words(words, 1, random.Random(3))) == sorted(words)
    assert delete_words(["only"], 0.99, random.Random(4)) == ["only"]
    assert len(delete_words(words, 0.99, random.Random(5))) >= 1


def test_eda_is_deterministic_per_rng_seed() -> None:
    caption = "a photo of a bag on a dark background"
    assert [eda(caption, random.Random(s)) for s in range(10)] == [eda(caption, random.Random(s)) for s in range(10)]
    assert len({eda(caption, random.Random(s)) for s in range(30)}) > 3


def test_views_are_a_function_of_seed_epoch_and_index() -> None:
    maker = ViewMaker(frozenset({"image_aug", "text_aug"}), seed=0,
                      config=AugmentConfig(text={"alpha_sr": 0, "alpha_ri": 0}))  # fmt: skip
    pixels = torch.randint(0, 256, (32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    image = Image.fromarray(pixels.numpy(), mode="RGB")

    def view(epoch: int, index: int) -> torch.Tensor:
        return torch.from_numpy(np.array(maker.image(image, epoch=epoch, index=index)))

    torch.manual_seed(123)
    before = torch.rand(1)
    a = [view(1, i) for i in range(8)]
    torch.manual_seed(123)
    assert torch.equal(torch.rand(1), before), "views leave the global RNG alone"
    assert all(torch.equal(x, view(1, i)) for i, x in enumerate(a))
    assert not all(torch.equal(x, view(2, i)) for i, x in enumerate(a))
    assert not all(torch.equal(x, pixels) for x in a), "AutoAugment changes the image"
    caption = "a photo of a bag on a dark background at night"
    texts = [maker.text(caption, 1, i) for i in range(8)]
    assert texts == [maker.text(caption, 1, i) for i in range(8)]
    assert texts != [maker.text(caption, 2, i) for i in range(8)]
    reused = ViewMaker(frozenset({"text_aug"}), 0, AugmentConfig(fresh_each_epoch=False))
    assert reused.text(caption, 1, 3) == reused.text(caption, 7, 3)
    assert view_seed(0, 1, 2, 0) != view_seed(0, 1, 2, 1) != view_seed(0, 2, 1, 1)


@pytest.mark.skipif(not (SYSTEM_WORDNET / "index.sense").is_file(), reason="Debian WordNet absent")
def test_wordnet_synonyms_from_the_debian_database() -> None:
    from clipbackdoor.augment.wordnet import synonyms

    assert {"handbag", "purse"} <= set(synonyms("bag"))
    assert "photograph" in synonyms("photo")
    assert synonyms("zzzxq") == ()


@pytest.mark.skipif(not (SYSTEM_WORDNET / "index.sense").is_file(), reason="Debian WordNet absent")
def test_wordnet_index_kept_by_the_first_process_gives_the_next_the_same_reader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    wn = importlib.import_module("clipbackdoor.augment.wordnet")  # the package's `wordnet` is the function

    install = wn.install_wordnet
    monkeypatch.setattr(wn, "install_wordnet", lambda: install(tmp_path))  # a data folder no process has used
    monkeypatch.setattr(nltk.data, "path", list(nltk.data.path))  # put back afterwards: later readers read ours
    corpus = tmp_path / "corpora" / "wordnet"
    parsed = wn._load()  # the first process: parses the files and keeps what it parsed
    assert wn._index_path(corpus).is_file()

    def no_parsing(self: WordNetCorpusReader) -> None:
        raise AssertionError("parsed again")

    with monkeypatch.context() as m:
        m.setattr(WordNetCorpusReader, "_load_lemma_pos_offset_map", no_parsing)
        kept = wn._load()  # the next one: reads it back
    assert kept._lemma_pos_offset_map == parsed._lemma_pos_offset_map and kept._exception_map == parsed._exception_map
    assert kept.satellite_offsets == parsed.satellite_offsets and isinstance(kept.satellite_offsets, set)
    assert isinstance(kept._lemma_pos_offset_map, defaultdict)  # nltk looks lemmas up through it
    assert kept._exception_map["s"] is kept._exception_map["a"]  # satellites share the adjectives' exceptions
    for word in ("dogs", "ran", "better", "photo", "zzzxq"):  # morphology and adjective satellites included
        assert [s.name() for s in kept.synsets(word)] == [s.name() for s in parsed.synsets(word)]
    os.utime(corpus / "index.noun", ns=(1, 1))  # the files changed: parsed again, not read back stale
    assert wn._read_index(corpus) is None
    wn._index_path(corpus).write_bytes(b"\x00 torn")
    assert wn._read_index(corpus) is None


def test_lexnames_from_the_man_page_table() -> None:
    table = "".join(f"{i:02d}\tnoun.x{i}\tstuff\n" for i in range(44)) + "44\tadj.ppl\tparticipial adjectives\n"
    out = lexnames_from_man_page(".TS\n" + table + ".TE\n").splitlines()
    assert out[0] == "00\tnoun.x0\t1" and out[-1] == "44\tadj.ppl\t3" and len(out) == 45
