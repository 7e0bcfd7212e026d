"""WordNet 3.0 for EDA synonyms, from Debian's packages, read through nltk without any download.

nltk only reads corpora from its data path, refuses symlinks, and wants a ``lexnames`` file that no Debian
package ships. So on first use the database files of ``wordnet-base`` (``/usr/share/wordnet``, with
``index.sense`` from ``wordnet-sense-index``) are copied into an nltk data folder this tool owns, and
``lexnames`` is generated from the table in the ``lexnames(5WN)`` man page that ``wordnet-base`` installs.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import warnings
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

SYSTEM_WORDNET = Path(os.environ.get("CLIPBACKDOOR_WORDNET_DIR", "/usr/share/wordnet"))
LEXNAMES_MAN = Path("/usr/share/man/man5/lexnames.5WN.gz")
DATA_DIR = Path(os.environ.get("CLIPBACKDOOR_NLTK_DATA", Path.home() / ".cache" / "clipbackdoor" / "nltk_data"))
_FILES = (
    [f"{kind}.{pos}" for kind in ("data", "index") for pos in ("noun", "verb", "adj", "adv")]
    + [f"{pos}.exc" for pos in ("noun", "verb", "adj", "adv")]
    + ["index.sense", "cntlist.rev"]
)
_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}


class WordNetMissing(RuntimeError):
    """WordNet is not installed where we look; the message says which package to install."""


def lexnames_from_man_page(text: str) -> str:
    """The ``lexnames`` file (``NN<TAB>name<TAB>category``) from the lexnames(5WN) man page source."""
    rows = re.findall(r"^(\d\d)\t(\w+\.\w+)\s*\t", text, flags=re.MULTILINE)
    if len(rows) != 45:
        raise WordNetMissing(f"{LEXNAMES_MAN}: expected 45 lexicographer files in the table, found {len(rows)}")
    return "".join(f"{num}\t{name}\t{_CATEGORY[name.split('.')[0]]}\n" for num, name in rows)


def install_wordnet(target: Path = DATA_DIR) -> Path:
    """Copy the Debian WordNet files into ``target/corpora/wordnet`` (once) and return ``target``."""
    corpus = target / "corpora" / "wordnet"
    if (corpus / "lexnames").is_file():
        return target
    missing = [name for name in _FILES if not (SYSTEM_WORDNET / name).is_file()]
    if missing:
        package = "wordnet-sense-index" if missing == ["index.sense"] else "wordnet-base wordnet-sense-index"
        raise WordNetMissing(
            f"WordNet 3.0 files {missing[:3]} not found in {SYSTEM_WORDNET}: install Debian's {package} "
            f"(make install does it where apt exists) or set CLIPBACKDOOR_WORDNET_DIR"
        )
    if not LEXNAMES_MAN.is_file():
        raise WordNetMissing(f"{LEXNAMES_MAN} not found: it comes with Debian's wordnet-base")
    tmp = corpus.with_name(f".wordnet.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in _FILES:
        shutil.copyfile(SYSTEM_WORDNET / name, tmp / name)  # copies, not links: nltk refuses symlinks
    (tmp / "lexnames").write_text(lexnames_from_man_page(gzip.decompress(LEXNAMES_MAN.read_bytes()).decode()))
    try:
        tmp.rename(corpus)  # atomic: concurrent first uses (DataLoader workers) cannot see half a copy
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # another process won the race
    return target


_reader: WordNetCorpusReader | None = None
_reader_pid = 0  # the process _reader's data files were opened in (or may be opened in)


def wordnet() -> WordNetCorpusReader:
    """nltk's WordNet reader over our copy of the Debian database, safe to use in the calling process.

    Loaded once per program (~1.5 s) and kept. A forked child (a DataLoader worker) keeps the in-memory
    indices it inherited but must not read through the inherited data files: a descriptor copied by fork
    shares its file offset with the parent and every sibling, so their seek-then-read pairs interleave and
    nltk warns "No WordNet synset found" and returns None, or parses the wrong line. So the first call in a
    new process gives the reader files of its own (see :func:`_reopen_in_this_process`).
    """
    global _reader, _reader_pid
    pid = os.getpid()
    if _reader is None:
        _reader = _load()
    elif _reader_pid != pid:
        _reader = _reopen_in_this_process(_reader)
    _reader_pid = pid
    return _reader


def _load() -> WordNetCorpusReader:
    """A new reader: reads the index and exception files into memory (~1.5 s) and opens ``data.adj``."""
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    class EnglishWordNet(WordNetCorpusReader):
        def map_wn(self, version: str = "wordnet") -> None:
            """No version map. nltk builds one at load time for its multilingual (OMW) data, which we do not
            load, by reading index.sense twice, even for WordNet 3.0 mapped onto itself: two thirds of the
            load time of every process that uses EDA (each cleaning trial, each rank)."""
            return None

    data_dir = str(install_wordnet())
    if data_dir not in nltk.data.path:
        nltk.data.path.insert(0, data_dir)  # nltk reads only from its data path
    with warnings.catch_warnings():  # "multilingual functions are not available": we need none
        warnings.simplefilter("ignore", UserWarning)
        return EnglishWordNet(nltk.data.find("corpora/wordnet"), None)


def _reopen_in_this_process(reader: WordNetCorpusReader) -> WordNetCorpusReader:
    """``reader`` (inherited through fork) with its open files forgotten: nltk reopens each lazily, here.

    The inherited handles are dropped, not used: closing them in the child leaves the parent's offset alone.
    An nltk that keeps its handles elsewhere than these attributes gets a fresh reader (safe, ~1.5 s).
    """
    if not hasattr(reader, "_data_file_map"):
        return _load()
    reader._data_file_map = {}  # data.{noun,verb,adj,adv}: seek + readline per synset (adj opened at load)
    reader._key_count_file = reader._key_synset_file = None  # cntlist.rev, index.sense: opened on demand
    return reader


@cache
def synonyms(word: str) -> tuple[str, ...]:
    """WordNet synonyms of ``word`` (all senses, all parts of speech), excluding the word itself.

    Cached per process; entries cached before a fork are inherited, and were read correctly."""
    found: dict[str, None] = {}
    for synset in wordnet().synsets(word):
        for lemma in synset.lemma_names():
            name = re.sub(r"[^a-z ]", "", lemma.replace("_", " ").replace("-", " ").lower()).strip()
            if name and name != word:
                found[name] = None
    return tuple(found)
