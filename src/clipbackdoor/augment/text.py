"""EDA text augmentation (Wei & Zou 2019), the caption view of CleanCLIP's in-modal loss.

Four candidate edits are made — synonym replacement (WordNet, stop words excluded), random insertion of a
synonym, random swap, random deletion — each touching max(1, ⌊α·words⌋) words (deletion drops each word
with probability p); one of the four candidates is kept at random. Like the reference EDA, the caption is
lower-cased and reduced to letters and spaces first. Every draw comes from the ``random.Random`` passed
in, so a caption's augmentation is a function of (seed, epoch, index).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass

from clipbackdoor.augment.wordnet import synonyms as wordnet_synonyms

# The stop-word list of the reference EDA implementation's spirit: function words never replaced.
STOP_WORDS = frozenset(
    """
    i me my myself we our ours ourselves you your yours yourself yourselves he him his himself she her
    hers herself it its itself they them their theirs themselves what which who whom this that these
    those am is are was were be been being have has had having do does did doing a an the and but if or
    because as until while of at by for with about against between into through during before after
    above below to from up down in out on off over under again further then once here there when where
    why how all any both each few more most other some such no nor not only own same so than too very s
    t can will just don should now
    """.split()  # noqa: SIM905
)


@dataclass(frozen=True)
class EDA:
    """Rates: ``alpha_*`` = share of words each edit touches; ``p_rd`` = per-word deletion probability."""

    alpha_sr: float = 0.1
    alpha_ri: float = 0.1
    alpha_rs: float = 0.1
    p_rd: float = 0.1
    synonyms: Callable[[str], tuple[str, ...]] = wordnet_synonyms

    def __call__(self, caption: str, rng: random.Random) -> str:
        words = clean_words(caption)
        if not words:
            return caption
        candidates = []
        if self.alpha_sr > 0:
            candidates.append(self.replace_synonyms(words, _count(self.alpha_sr, words), rng))
        if self.alpha_ri > 0:
            candidates.append(self.insert_synonyms(words, _count(self.alpha_ri, words), rng))
        if self.alpha_rs > 0:
            candidates.append(swap_words(words, _count(self.alpha_rs, words), rng))
        if self.p_rd > 0:
            candidates.append(delete_words(words, self.p_rd, rng))
        if not candidates:
            return " ".join(words)
        return " ".join(rng.choice(candidates))

    def replace_synonyms(self, words: list[str], n: int, rng: random.Random) -> list[str]:
        out = list(words)
        candidates = sorted({w for w in words if w not in STOP_WORDS})
        rng.shuffle(candidates)
        replaced = 0
        for word in candidates:
            options = self.synonyms(word)
            if options:
                choice = rng.choice(options)
                out = [choice if w == word else w for w in out]
                replaced += 1
            if replaced >= n:
                break
        return " ".join(out).split()  # multi-word synonyms become several words

    def insert_synonyms(self, words: list[str], n: int, rng: random.Random) -> list[str]:
        out = list(words)
        for _ in range(n):
            for _attempt in range(10):
                options = self.synonyms(rng.choice(out))
                if options:
                    out.insert(rng.randint(0, len(out)), rng.choice(options))
                    break
        return " ".join(out).split()


def clean_words(caption: str) -> list[str]:
    """Lower-case words of letters only, as the reference EDA sees them."""
    text = caption.replace("’", "").replace("'", "").replace("-", " ").replace("\t", " ").replace("\n", " ")
    return re.sub(r"[^a-z ]", " ", text.lower()).split()


def _count(alpha: float, words: list[str]) -> int:
    return max(1, int(alpha * len(words)))


def swap_words(words: list[str], n: int, rng: random.Random) -> list[str]:
    """n swaps of two distinct positions: the reference EDA retries until its two indices differ, so a swap
    always changes the order (drawing i and j independently would leave 5 words unchanged 20 % of the time)."""
    out = list(words)
    if len(out) < 2:
        return out
    for _ in range(n):
        i = rng.randrange(len(out))
        j = rng.randrange(len(out) - 1)
        j += j >= i  # uniform over the other positions
        out[i], out[j] = out[j], out[i]
    return out


def delete_words(words: list[str], p: float, rng: random.Random) -> list[str]:
    if len(words) == 1:
        return list(words)
    kept = [w for w in words if rng.random() > p]
    return kept or [rng.choice(words)]
