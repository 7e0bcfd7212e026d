"""WordNet 3.0 for EDA synonyms, from Debian's packages, read through nltk without any download.

nltk only reads corpora from its data path, refuses symlinks, and wants a ``lexnames`` file that no Debian
package ships. So on first use the database files of ``wordnet-base`` (``/usr/share/wordnet``, with
``index.sense`` from ``wordnet-sense-index``) are copied into an nltk data folder this tool owns, and
``lexnames`` is generated from the table in the ``lexnames(5WN)`` man page that ``wordnet-base`` installs.
"""

from __future__ import annotations

import contextlib
import gzip
import marshal
import os
import re
import shutil
import socket
import warnings
from collections import defaultdict
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

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

    Loaded once per program (~0.4 s from the kept index, ~1.5 s the first time) and kept. A forked child (a
    DataLoader worker) keeps the in-memory indices it inherited but must not read through the inherited data
    files: a descriptor copied by fork shares its file offset with the parent and every sibling, so their
    seek-then-read pairs interleave and nltk warns "No WordNet synset found" and returns None, or parses the
    wrong line. So the first call in a new process gives the reader files of its own (see
    :func:`_reopen_in_this_process`).
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
    """A new reader: its in-memory indices from :func:`_read_index` (~0.4 s) or, the first time, parsed from
    the index and exception files (~1.5 s) and kept beside them."""
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    data_dir = str(install_wordnet())
    if data_dir not in nltk.data.path:
        nltk.data.path.insert(0, data_dir)  # nltk reads only from its data path
    root = nltk.data.find("corpora/wordnet")
    corpus = Path(root.path)  # the copy nltk reads: its index must come from the same files
    index = _read_index(corpus)

    class EnglishWordNet(WordNetCorpusReader):
        def map_wn(self, version: str = "wordnet") -> None:
            """No version map. nltk builds one at load time for its multilingual (OMW) data, which we do not
            load, by reading index.sense twice, even for WordNet 3.0 mapped onto itself: two thirds of the
            load time of every process that uses EDA (each cleaning trial, each rank)."""
            return None

        # nltk's __init__ fills its indices through these three; with the index kept, they only hand it over
        def _scan_satellites(self) -> None:
            if index is None:
                return super()._scan_satellites()
            self.satellite_offsets = index["satellites"]

        def _load_lemma_pos_offset_map(self) -> None:
            if index is None:
                return super()._load_lemma_pos_offset_map()
            self._lemma_pos_offset_map = defaultdict(dict, index.pop("lemmas"))  # not held twice

        def _load_exception_map(self) -> None:
            if index is None:
                return super()._load_exception_map()
            self._exception_map = index["exceptions"]

    with warnings.catch_warnings():  # "multilingual functions are not available": we need none
        warnings.simplefilter("ignore", UserWarning)
        reader = EnglishWordNet(root, None)
    if index is None:
        _keep_index(corpus, reader)
    return reader


INDEX_FORMAT = 1  # the kept index's layout (its keys): a new layout is a new file, never a misread old one


def _index_path(corpus: Path) -> Path:
    """Where the parsed indices are kept: per layout, nltk version (it parses them) and marshal format."""
    import nltk

    return corpus / f"index-v{INDEX_FORMAT}-nltk{nltk.__version__}-marshal{marshal.version}.bin"


def _fingerprint(corpus: Path) -> list[tuple[str, int, int]]:
    """The files the indices are parsed from, by name, size and modification time."""
    names = [f"index.{pos}" for pos in _CATEGORY] + [f"{pos}.exc" for pos in _CATEGORY] + ["data.adj"]
    return [(name, (st := (corpus / name).stat()).st_size, st.st_mtime_ns) for name in names]


def _read_index(corpus: Path) -> dict[str, Any] | None:
    """The indices a reader parsed earlier from these very files, or None (none kept, stale, or unreadable)."""
    try:
        index = marshal.loads(_index_path(corpus).read_bytes())
        return index if index["files"] == _fingerprint(corpus) else None
    except (OSError, EOFError, ValueError, TypeError, KeyError):
        return None


def _keep_index(corpus: Path, reader: WordNetCorpusReader) -> None:
    """Keep a freshly parsed reader's indices for the next process (each rank, cleaning trial and test)."""
    index = {
        "files": _fingerprint(corpus),
        "satellites": set(reader.satellite_offsets),
        "lemmas": dict(reader._lemma_pos_offset_map),
        "exceptions": reader._exception_map,
    }
    path = _index_path(corpus)
    tmp = path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")  # hosts may share the folder
    try:
        tmp.write_bytes(marshal.dumps(index))
        tmp.replace(path)  # atomic: a concurrent reader sees the whole file or none
    except (OSError, ValueError) as err:  # a read-only data folder: parse again next time
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        warnings.warn(f"{path}: WordNet's parsed index not kept ({err}); each process parses it", stacklevel=2)


def _reopen_in_this_process(reader: WordNetCorpusReader) -> WordNetCorpusReader:
    """``reader`` (inherited through fork) with its open files forgotten: nltk reopens each lazily, here.

    The inherited handles are dropped, not used: closing them in the child leaves the parent's offset alone.
    An nltk that keeps its handles elsewhere than these attributes gets a fresh reader (safe, ~0.4 s).
    """
    if not hasattr(reader, "_data_file_map"):
        return _load()
    reader._data_file_map = {}  # data.{noun,verb,adj,adv}: seek + readline per synset, opened on first use
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
