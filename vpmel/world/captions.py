"""Captions: varied templates that name some of a scene's objects.

A caption is built from *phrases* (an article or lead-in plus the mention words, e.g.
"the flag of " + "Germany") put into a template. The character span of each phrase's
mention words is recorded while the text is assembled, so spans are exact by construction.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

SETTINGS: tuple[str, ...] = (
    "at the fair",
    "in the market",
    "on the poster",
    "at the museum",
    "in the sticker album",
    "on the shelf",
    "at the festival",
    "in the shop window",
    "on the noticeboard",
    "at the station",
    "in the park",
    "on the kitchen table",
    "on a postcard",
    "in the classroom",
)

# Templates by number of named objects; {0}.. are phrases, {setting} a place from SETTINGS,
# {rel} the true spatial relation of {0} to {1} in the image.
TEMPLATES: dict[int, tuple[str, ...]] = {
    0: (
        "A cluttered picture {setting}.",
        "So many things {setting}!",
        "What a mess of colours and shapes.",
        "Another busy scene {setting}.",
        "Nothing special, just a snapshot {setting}.",
        "Everything at once, {setting}.",
    ),
    1: (
        "{0} {setting}.",
        "A picture of {0} {setting}.",
        "Spotted: {0} {setting}!",
        "Somebody left {0} {setting}.",
        "There is {0} somewhere in this picture.",
        "Can you find {0}?",
        "A close look at {0} {setting}.",
        "Among all the clutter, {0}.",
    ),
    2: (
        "{0} beside {1} {setting}.",
        "{0} and {1} {setting}.",
        "A photo of {0} next to {1}.",
        "Both {0} and {1} turned up {setting}.",
        "Not just {0}: there is also {1}.",
        "{0} with {1} in the background.",
    ),
    3: (
        "{0}, {1} and {2} {setting}.",
        "{0} with {1} and {2}.",
        "A mix of {0}, {1} and {2} {setting}.",
        "Look: {0}, {1}, {2}.",
    ),
}
RELATION_TEMPLATES: tuple[str, ...] = (
    "{0} {rel} {1}.",
    "{0} {rel} {1} {setting}.",
    "Here {0} is {rel} {1}.",
)
MAX_NAMED = max(TEMPLATES)

# lead-ins that are not "a"/"an"
PREFIX_OVERRIDES: dict[str, str] = {
    "Santa Claus": "",
    "Mrs. Claus": "",
    "Mx Claus": "",
    "Statue of Liberty": "the ",
    "Tokyo tower": "the ",
    "mount fuji": "",
}
SUBGROUP_PREFIX: dict[str, str] = {
    "country-flag": "the flag of ",
    "subdivision-flag": "the flag of ",
    "zodiac": "the sign of ",
}
_NOT_PLURAL = ("ss", "us", "is", "os")
_NOT_PLURAL_WORDS = frozenset({"gas", "Aries", "Pisces", "canvas", "atlas"})
_PLURAL_WORDS = frozenset({"people", "men", "women", "children"})
_QUALIFIERS = frozenset({"in", "with", "of", "on", "for", "and", "from", "at", "under"})
_A_BEFORE_VOWEL = ("uni", "use", "eu", "one", "ufo", "ukulele")
_AN_LETTERS = "AEFHILMNORSX"  # initialisms read with a leading vowel sound: "an ATM sign"


@dataclass(frozen=True)
class Phrase:
    prefix: str  # "a ", "the flag of ", ...
    words: str  # the mention words, as they appear in the caption


@dataclass(frozen=True)
class Caption:
    text: str
    spans: tuple[tuple[int, int], ...]  # (start, end) of each phrase's words in ``text``


def _head(words: str) -> str:
    """The head noun, roughly: the last word before a qualifier ("woman lifting weights"
    -> "woman", "face in clouds" -> "face", "card index dividers" -> "dividers")."""
    kept: list[str] = []
    for k, word in enumerate(words.split(":")[0].split()):
        if k and (word in _QUALIFIERS or word.endswith("ing")):
            break
        kept.append(word)
    return kept[-1] if kept else words


def lead_in(words: str, subgroup: str = "") -> str:
    """The article or lead-in that goes before ``words`` ("a ", "an ", "some ", ...)."""
    if words in PREFIX_OVERRIDES:
        return PREFIX_OVERRIDES[words]
    if subgroup in SUBGROUP_PREFIX:
        return SUBGROUP_PREFIX[subgroup]
    head = _head(words)
    if head in _PLURAL_WORDS or (
        head.endswith("s") and not head.endswith(_NOT_PLURAL) and head not in _NOT_PLURAL_WORDS
    ):
        return "some "
    first = words.split()[0]
    if len(first) > 1 and first.isupper():
        return "an " if first[0] in _AN_LETTERS else "a "
    if " " not in words and words[0].isupper():  # a proper name ("Claus")
        return ""
    lower = words.lower()
    vowel = lower[0] in "aeiou" and not lower.startswith(_A_BEFORE_VOWEL)
    return "an " if vowel or lower.startswith("hour") else "a "


def phrase(words: str, subgroup: str = "") -> Phrase:
    return Phrase(lead_in(words, subgroup), words)


_FIELD = re.compile(r"\{(\w+)\}")


def fill(template: str, phrases: list[Phrase], setting: str, rel: str = "") -> Caption:
    """Fill ``template``; records the span of each phrase's words. The first letter is
    capitalised unless it belongs to mention words."""
    text = ""
    spans: dict[int, tuple[int, int]] = {}
    pos = 0
    for m in _FIELD.finditer(template):
        text += template[pos : m.start()]
        key = m.group(1)
        if key.isdigit():
            p = phrases[int(key)]
            text += p.prefix
            spans[int(key)] = (len(text), len(text) + len(p.words))
            text += p.words
        else:
            text += {"setting": setting, "rel": rel}[key]
        pos = m.end()
    text += template[pos:]
    if text and text[0].islower() and all(start > 0 for start, _ in spans.values()):
        text = text[0].upper() + text[1:]
    return Caption(text, tuple(spans[i] for i in range(len(phrases))))


def compose_caption(rng: np.random.Generator, phrases: list[Phrase], rel: str = "") -> Caption:
    """A caption naming ``phrases`` in order (0 to MAX_NAMED of them).

    ``rel`` is the true relation of the first to the second object ("to the left of", ...);
    when given, relation templates join the pool for two phrases.
    """
    if len(phrases) > MAX_NAMED:
        raise ValueError(f"at most {MAX_NAMED} named objects per caption, got {len(phrases)}")
    pool = TEMPLATES[len(phrases)]
    if len(phrases) == 2 and rel:
        pool = pool + RELATION_TEMPLATES
    template = pool[int(rng.integers(len(pool)))]
    setting = SETTINGS[int(rng.integers(len(SETTINGS)))]
    return fill(template, phrases, setting, rel)
