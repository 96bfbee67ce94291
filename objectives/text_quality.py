"""Text quality of generated text: the share of dictionary-like words, markup stripped first.

A scorer reads words; a steered model can learn to emit what a scorer likes without writing
text. VADER scores `<strong> </strong>` positive (its lexicon has "strong"), so markup spam could
win a sentiment study while perplexity and distinct-2 look fine. This measure strips markup
(HTML/XML tags and entities, each counted as one non-word) and asks what share of what is left
reads like words: letter runs that look like dictionary words (a vowel, no letter three times in
a row, no six consonants in a row, at most 20 letters; single letters and short acronyms pass)
and numbers.
Punctuation alone counts neither way, so Markdown (`**bold**`, `#`) and arithmetic (`3 + 4 = 7`)
are not penalised.

The measure is a heuristic on purpose (no word list to ship or download): it catches markup,
symbol soup and letter noise; invented words that look like words ("Laviojo") are the
perplexity rule's job, repetition ("The The The") the distinct-2 rule's.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

# An HTML/XML tag (`<strong>`, `</p>`, `<br/>`, `<a href=...>`) or an entity (`&nbsp;`, `&#39;`).
MARKUP = re.compile(r"<\s*/?\s*[A-Za-z][^<>]{0,200}?/?\s*>|&#?[A-Za-z0-9]{1,10};")
# Letter runs (apostrophes and hyphens inside a word) and numbers (`3.5`, `1,000`, `12:30`).
TOKEN = re.compile(r"(?P<word>[^\W\d_]+(?:['’-][^\W\d_]+)*)|(?P<number>\d+(?:[.,:/]\d+)*)")
VOWELS = set("aeiouy")
MAX_WORD = 20


def _part_is_wordlike(part: str) -> bool:
    """One piece of a word (between apostrophes / hyphens) looks like a dictionary word."""
    if len(part) > MAX_WORD:
        return False
    if re.search(r"(.)\1\1", part.lower()):
        return False  # "aaa", "zzzz": letter noise
    if not part.isascii():
        return True  # non-English words: only the length and repetition checks apply
    lower = part.lower()
    if len(part) == 1 or (part.isupper() and len(part) <= 5):
        return True  # "a", "I", variables ("x"), acronyms ("TV", "HTML", "NASA")
    return bool(VOWELS & set(lower)) and not re.search(r"[^aeiouy]{6}", lower)


def is_wordlike(word: str) -> bool:
    """Whether a letter run (apostrophes / hyphens allowed inside) reads like a dictionary word."""
    # contractions and possessives: "I'm", "don't", "river's", "we'll"
    stem = re.sub(r"['’](?:[a-z]{1,2})$", "", word, flags=re.IGNORECASE)
    parts = [p for p in re.split(r"['’-]", stem) if p]
    return bool(parts) and all(_part_is_wordlike(p) for p in parts)


def text_quality(text: str) -> float:
    """Share of dictionary-like words and numbers among a text's words, numbers and markup.

    Markup (tags, entities) is stripped before the words are read and counted as non-words.
    A text with nothing to read (empty, or punctuation only) scores 1.0: it is the other
    fluency rules' job (distinct-2, perplexity).
    """
    markup = len(MARKUP.findall(text))
    stripped = MARKUP.sub(" ", text)
    good = bad = 0
    for match in TOKEN.finditer(stripped):
        word = match.group("word")
        if word is None or is_wordlike(word):
            good += 1
        else:
            bad += 1
    total = good + bad + markup
    return good / total if total else 1.0


def mean_text_quality(texts: Sequence[str]) -> float:
    """Mean `text_quality` over texts (1.0 for none)."""
    return sum(text_quality(t) for t in texts) / len(texts) if texts else 1.0
