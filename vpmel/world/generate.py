"""The whole demo world: plan (pure, cheap), render (images) and write (files).

``plan_world`` turns a ``WorldConfig`` into records — which entities each scene shows,
where, the caption and its mentions, deliberate defects — without drawing anything.
``generate_world`` renders the glyphs once per entity, draws every scene and writes a
WikiDiverse-shaped raw dataset::

    out/demo.json            [[text, "images/000123.png", "demo",
                               [[words, type, start, end, "https://www.wikidata.org/wiki/Q..",
                                 [x1, y1, x2, y2] | null], ...]], ...]
    out/images/*.png         scenes (scene_width x scene_height, RGB)
    out/kb_entity.json       MIMIC-format KB: [{id, type, entity_name, attr, image_list,
                             entity_type}, ...]
    out/qid2id.json          {qid: row} on one line
    out/kb_image/<qid>.png   entity images (the glyph on white)
    out/truth.parquet        hidden ground truth per mention, id "demo-{i}-{j}"
    out/truth_scenes.parquet per scene: every object with its box, the caption's objects
    out/world.json, WORLD.md config, sizes, credits (OpenMoji CC BY-SA 4.0, Unicode)

Every mention has a target object in its scene (reference box = tight box of the glyph's
alpha as placed, before occlusion) except in *unrelated* pairs, whose caption and mentions
were written for another, never drawn, set of objects: there the box is null and the
image does not show the target. Mention words of targets the caption does not name are
the entity name with start = end = -1.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from rich.progress import track

from vpmel.data.schema import ENTITY_TYPES
from vpmel.scenes import Box, Square, compose_scene, place_squares, relation
from vpmel.world.captions import MAX_NAMED, compose_caption, phrase
from vpmel.world.emoji import (
    OPENMOJI_ATTRIBUTION,
    OPENMOJI_LICENSE_URL,
    UNICODE_CREDIT,
    Emoji,
    load_catalogue,
    select_kb,
)
from vpmel.world.glyphs import kb_image, render_glyph
from vpmel.world.sheet import world_contact_sheet

WIKIDATA = "https://www.wikidata.org/wiki/"
TOPIC = "demo"
FLAG_SUBGROUPS = frozenset({"country-flag", "subdivision-flag"})
# defect kinds, in the order they are handed out (an unreadable image only once)
DEFECT_FIRST = ("nil_answer", "qid_not_in_kb", "missing_image", "unreadable_image")
DEFECT_CYCLE = ("nil_answer", "qid_not_in_kb", "missing_image")
IMAGE_DEFECTS = frozenset({"missing_image", "unreadable_image"})


@dataclass
class WorldConfig:
    """Every size and rate of the demo world (the ``world`` section of params.yaml)."""

    seed: int = 0
    kb_size: int = 1200  # entities (at most the ~1,900 OpenMoji emoji)
    n_scenes: int = 2600  # image-caption pairs; ~1.2 mentions each
    scene_width: int = 160
    scene_height: int = 120
    min_objects: int = 2
    max_objects: int = 5
    object_scale_min: float = 0.3  # object size (longer side) / shorter image side
    object_scale_max: float = 0.6
    max_rotation: float = 15.0  # degrees, uniform in [-max, max]
    occlusion_max: float = 0.35  # at most this fraction of an object's square hidden
    lookalike_rate: float = 0.35  # P(a distractor comes from the target's subgroup)
    two_mention_rate: float = 0.2  # P(a scene has two mentions instead of one)
    unnamed_rate: float = 0.33  # P(a target is not named in the caption)
    alias_rate: float = 0.15  # P(a named object is called by its short alias)
    generic_caption_rate: float = 0.3  # P(no object named | no target named)
    unrelated_rate: float = 0.10  # P(caption and mentions belong to another scene)
    defect_rate: float = 0.005  # deliberately messy pairs (NIL, unknown QID, bad images)
    entity_image_size: int = 72

    def __post_init__(self) -> None:
        if not 2 <= self.min_objects <= self.max_objects:
            raise ValueError("need 2 <= min_objects <= max_objects")
        if not 0 < self.object_scale_min <= self.object_scale_max <= 1:
            raise ValueError("need 0 < object_scale_min <= object_scale_max <= 1")
        if self.kb_size < 2 * self.max_objects + 1:
            raise ValueError(f"kb_size must be at least {2 * self.max_objects + 1}")
        if self.n_scenes < 1 or min(self.scene_width, self.scene_height) < 16:
            raise ValueError("need n_scenes >= 1 and scenes of at least 16 x 16 pixels")
        rates = ("lookalike_rate", "two_mention_rate", "unnamed_rate", "alias_rate")
        rates += ("generic_caption_rate", "unrelated_rate", "defect_rate")
        for name in rates:
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1]")


@dataclass(frozen=True)
class ObjectPlan:
    qid: str
    square: Square


@dataclass(frozen=True)
class MentionPlan:
    qid: str  # the true entity (also for defective records)
    words: str
    start: int  # -1 when the caption does not name the target
    end: int
    named: bool
    alias: bool
    object: int | None  # index into the record's objects; None in unrelated pairs


@dataclass(frozen=True)
class RecordPlan:
    index: int
    caption: str
    objects: tuple[ObjectPlan, ...]  # what the image shows, in draw order
    caption_objects: tuple[str, ...]  # QIDs the caption was written about
    mentions: tuple[MentionPlan, ...]
    related: bool
    defect: str | None = None

    @property
    def image(self) -> str:
        return f"images/{self.index:06d}.png"


@dataclass
class WorldSummary:
    n_entities: int
    entities_per_type: dict[str, int]
    n_subgroups: int
    n_scenes: int
    n_images_written: int
    n_mentions: int
    n_named: int
    n_unnamed: int
    n_alias: int
    n_unrelated_pairs: int
    n_unrelated_mentions: int
    n_two_mention_pairs: int
    n_lookalike_mentions: int
    objects_per_scene: dict[str, int]
    defects: dict[str, int] = field(default_factory=dict)  # kind -> pairs


@dataclass
class WorldPlan:
    config: WorldConfig
    kb: list[Emoji]
    records: list[RecordPlan]

    def entity(self, qid: str) -> Emoji:
        return self._by_qid[qid]

    def __post_init__(self) -> None:
        self._by_qid = {e.qid: e for e in self.kb}

    def lookalike(self, record: RecordPlan, mention: MentionPlan) -> bool:
        """Whether the image shows another object of the target's subgroup."""
        sub = self.entity(mention.qid).subgroup
        return any(
            self.entity(o.qid).subgroup == sub and o.qid != mention.qid for o in record.objects
        )

    def summary(self) -> WorldSummary:
        mentions = [(r, m) for r in self.records for m in r.mentions]
        defects = Counter(r.defect for r in self.records if r.defect)
        return WorldSummary(
            n_entities=len(self.kb),
            entities_per_type={t: sum(e.type == t for e in self.kb) for t in ENTITY_TYPES},
            n_subgroups=len({e.subgroup for e in self.kb}),
            n_scenes=len(self.records),
            n_images_written=len(self.records) - defects["missing_image"],
            n_mentions=len(mentions),
            n_named=sum(m.named for _, m in mentions),
            n_unnamed=sum(not m.named for _, m in mentions),
            n_alias=sum(m.alias for _, m in mentions),
            n_unrelated_pairs=sum(not r.related for r in self.records),
            n_unrelated_mentions=sum(not r.related for r, _ in mentions),
            n_two_mention_pairs=sum(len(r.mentions) == 2 for r in self.records),
            n_lookalike_mentions=sum(self.lookalike(r, m) for r, m in mentions),
            objects_per_scene={
                str(k): v for k, v in sorted(Counter(len(r.objects) for r in self.records).items())
            },
            defects={k: defects[k] for k in DEFECT_FIRST if defects[k]},
        )


# ---------------------------------------------------------------------------- planning


def _target_stream(rng: np.random.Generator, kb: Sequence[Emoji]) -> Iterator[Emoji]:
    """Targets cycle through seeded permutations of the KB: every entity gets mentions."""
    while True:
        for i in rng.permutation(len(kb)):
            yield kb[i]


def _pick_objects(
    rng: np.random.Generator,
    anchor: Emoji,
    n: int,
    kb: Sequence[Emoji],
    by_subgroup: dict[str, list[Emoji]],
    lookalike_rate: float,
    exclude: frozenset[str] = frozenset(),
) -> list[Emoji]:
    """``anchor`` plus ``n - 1`` distinct distractors, each from the anchor's subgroup with
    probability ``lookalike_rate`` (when one is left), else from the whole KB."""
    chosen = [anchor]
    used = set(exclude) | {anchor.qid}
    while len(chosen) < n:
        pick = None
        if rng.random() < lookalike_rate:
            siblings = [e for e in by_subgroup[anchor.subgroup] if e.qid not in used]
            if siblings:
                pick = siblings[int(rng.integers(len(siblings)))]
        for _ in range(50):
            if pick is not None:
                break
            cand = kb[int(rng.integers(len(kb)))]
            pick = None if cand.qid in used else cand
        if pick is None:  # tiny KBs only
            pick = next(e for e in kb if e.qid not in used)
        chosen.append(pick)
        used.add(pick.qid)
    return chosen


def _squares(rng: np.random.Generator, cfg: WorldConfig, n: int) -> list[Square]:
    return place_squares(
        rng,
        n,
        cfg.scene_width,
        cfg.scene_height,
        (cfg.object_scale_min, cfg.object_scale_max),
        cfg.occlusion_max,
        cfg.max_rotation,
    )


def _words(rng: np.random.Generator, e: Emoji, alias_rate: float) -> tuple[str, bool]:
    """How the caption calls ``e``: its name, or sometimes its short alias."""
    if e.alias and e.subgroup not in FLAG_SUBGROUPS and rng.random() < alias_rate:
        return e.alias, True
    return e.name, False


def _caption(
    rng: np.random.Generator,
    cfg: WorldConfig,
    objects: list[Emoji],
    squares: list[Square],
    targets: list[int],
) -> tuple[str, list[MentionPlan]]:
    """Caption for a scene and the mentions of its ``targets`` (indices into objects)."""
    named = [bool(rng.random() >= cfg.unnamed_rate) for _ in targets]
    others = [k for k in range(len(objects)) if k not in targets]
    n_named = sum(named)
    room = min(len(others), MAX_NAMED - n_named, 2)
    if n_named == 0 and (room == 0 or rng.random() < cfg.generic_caption_rate):
        k_other = 0
    else:
        k_other = int(rng.integers(0 if n_named else 1, room + 1))
    extra = [int(k) for k in rng.choice(others, size=k_other, replace=False)] if k_other else []
    in_caption = [t for t, nm in zip(targets, named, strict=True) if nm] + extra
    in_caption = [in_caption[i] for i in rng.permutation(len(in_caption))]
    words = {k: _words(rng, objects[k], cfg.alias_rate) for k in in_caption}
    said = Counter(w for w, _ in words.values())
    words = {k: (objects[k].name, False) if said[w] > 1 else (w, a) for k, (w, a) in words.items()}
    phrases = [phrase(words[k][0], objects[k].subgroup) for k in in_caption]
    rel = relation(squares[in_caption[0]], squares[in_caption[1]]) if len(in_caption) == 2 else ""
    caption = compose_caption(rng, phrases, rel)
    mentions = []
    for t in targets:
        e = objects[t]
        if t in in_caption:
            start, end = caption.spans[in_caption.index(t)]
            w, alias = words[t]
            mentions.append(MentionPlan(e.qid, w, start, end, True, alias, t))
        else:
            mentions.append(MentionPlan(e.qid, e.name, -1, -1, False, False, t))
    return caption.text, mentions


def _scene_objects(
    rng: np.random.Generator,
    cfg: WorldConfig,
    anchor: Emoji,
    kb: Sequence[Emoji],
    by_subgroup: dict[str, list[Emoji]],
    exclude: frozenset[str] = frozenset(),
) -> tuple[list[Emoji], list[Square]]:
    """Objects of one scene in (shuffled) draw order, with their squares."""
    n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    objects = _pick_objects(rng, anchor, n, kb, by_subgroup, cfg.lookalike_rate, exclude)
    objects = [objects[i] for i in rng.permutation(n)]
    return objects, _squares(rng, cfg, n)


def plan_record(
    index: int,
    target: Emoji,
    cfg: WorldConfig,
    kb: Sequence[Emoji],
    by_subgroup: dict[str, list[Emoji]],
) -> RecordPlan:
    """One image-caption pair whose first mention is ``target``."""
    rng = np.random.default_rng([cfg.seed, 1, index])
    related = bool(rng.random() >= cfg.unrelated_rate)
    objects, squares = _scene_objects(rng, cfg, target, kb, by_subgroup)
    targets = [objects.index(target)]
    if rng.random() < cfg.two_mention_rate:
        targets.append(int(rng.choice([k for k in range(len(objects)) if k != targets[0]])))
    text, mentions = _caption(rng, cfg, objects, squares, targets)
    caption_objects = tuple(e.qid for e in objects)
    if not related:  # the image shows other things: a scene drawn from objects not mentioned
        exclude = frozenset(caption_objects)
        anchor = _pick_objects(rng, target, 2, kb, by_subgroup, 0.0, exclude)[1]
        objects, squares = _scene_objects(rng, cfg, anchor, kb, by_subgroup, exclude)
        mentions = [replace(m, object=None) for m in mentions]
    return RecordPlan(
        index=index,
        caption=text,
        objects=tuple(ObjectPlan(e.qid, sq) for e, sq in zip(objects, squares, strict=True)),
        caption_objects=caption_objects,
        mentions=tuple(mentions),
        related=related,
    )


def _assign_defects(cfg: WorldConfig, records: list[RecordPlan]) -> list[RecordPlan]:
    """Mark ``round(defect_rate * n)`` related pairs as deliberately defective."""
    n = round(cfg.defect_rate * len(records))
    candidates = [r.index for r in records if r.related]
    n = min(n, len(candidates))
    if n == 0:
        return records
    rng = np.random.default_rng([cfg.seed, 3])
    chosen = sorted(int(i) for i in rng.choice(candidates, size=n, replace=False))
    kinds = list(DEFECT_FIRST[:n]) + [DEFECT_CYCLE[k % 3] for k in range(n - len(DEFECT_FIRST))]
    out = list(records)
    for i, kind in zip(chosen, kinds, strict=True):
        out[i] = replace(out[i], defect=kind)
    return out


def plan_world(cfg: WorldConfig, progress: bool = False) -> WorldPlan:
    """Every record of the world, without rendering anything (a pure function of ``cfg``)."""
    kb = select_kb(load_catalogue(), cfg.kb_size, cfg.seed)
    by_subgroup: dict[str, list[Emoji]] = {}
    for e in kb:
        by_subgroup.setdefault(e.subgroup, []).append(e)
    targets = _target_stream(np.random.default_rng([cfg.seed, 0]), kb)
    steps = range(cfg.n_scenes)
    if progress:
        steps = track(steps, description="world: planning scenes")
    records = [plan_record(i, next(targets), cfg, kb, by_subgroup) for i in steps]
    return WorldPlan(cfg, kb, _assign_defects(cfg, records))


VOCABULARY_SEED_OFFSET = 1_000_003  # another world's records: never one of the demo world's


def vocabulary_sentences(cfg: WorldConfig, n_scenes: int = 4000) -> list[str]:
    """Words for a tokenizer, never a record of the world ``cfg`` makes: the captions of a
    world planned from another seed (``cfg.seed + VOCABULARY_SEED_OFFSET``), and every
    catalogue name and alias. Only their words are used (the demo VLM's vocabulary), no model
    is trained on these texts."""
    other = replace(cfg, seed=cfg.seed + VOCABULARY_SEED_OFFSET, n_scenes=n_scenes)
    captions = [record.caption for record in plan_world(other).records]
    catalogue = load_catalogue()
    return [*captions, *(e.name for e in catalogue), *(e.alias for e in catalogue if e.alias)]


# ---------------------------------------------------------------------------- writing


def _write_json_lines(path: Path, rows: Sequence[object]) -> None:
    """A JSON list with one element per line (valid JSON, readable diffs)."""
    body = ",\n".join(json.dumps(r, ensure_ascii=False) for r in rows)
    path.write_text("[\n" + body + "\n]\n" if rows else "[]\n", encoding="utf-8")


def _save_png(image: Image.Image, path: Path, compress_level: int = 6) -> None:
    image.save(path, format="PNG", compress_level=compress_level)


def write_kb(out: Path, plan: WorldPlan, glyphs: dict[str, Image.Image]) -> None:
    """``kb_entity.json``, ``qid2id.json`` (one line) and ``kb_image/<qid>.png``."""
    (out / "kb_image").mkdir(parents=True, exist_ok=True)
    rows = []
    for e in plan.kb:
        _save_png(
            kb_image(glyphs[e.qid], plan.config.entity_image_size),
            out / "kb_image" / f"{e.qid}.png",
        )
        rows.append(
            {
                "id": e.qid,
                "type": "entity",
                "entity_name": e.name,
                "attr": e.description,
                "image_list": [f"{e.qid}.png"],
                "entity_type": e.type,
            }
        )
    _write_json_lines(out / "kb_entity.json", rows)
    qid2id = {e.qid: row for row, e in enumerate(plan.kb)}
    (out / "qid2id.json").write_text(json.dumps(qid2id, separators=(",", ":")) + "\n")


def _entity_url(record: RecordPlan, j: int, qid: str) -> str | None:
    if j == 0 and record.defect == "nil_answer":
        return None
    if j == 0 and record.defect == "qid_not_in_kb":
        return f"{WIKIDATA}Q{9_000_000 + record.index}"
    return WIKIDATA + qid


def _mention_defect(record: RecordPlan, j: int) -> str | None:
    if record.defect in IMAGE_DEFECTS or (record.defect and j == 0):
        return record.defect
    return None


def demo_rows(plan: WorldPlan, boxes: list[list[Box]]) -> list[list[object]]:
    """The WikiDiverse-shaped records of ``demo.json``."""
    rows = []
    for r in plan.records:
        mentions = []
        for j, m in enumerate(r.mentions):
            box = list(boxes[r.index][m.object]) if m.object is not None else None
            etype = plan.entity(m.qid).type
            mentions.append([m.words, etype, m.start, m.end, _entity_url(r, j, m.qid), box])
        rows.append([r.caption, r.image, TOPIC, mentions])
    return rows


TRUTH_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("scene", pa.int32()),
        ("image", pa.string()),
        ("qid", pa.string()),
        ("name", pa.string()),
        ("type", pa.string()),
        ("subgroup", pa.string()),
        ("mention", pa.string()),
        ("start", pa.int32()),
        ("end", pa.int32()),
        ("named_in_caption", pa.bool_()),
        ("alias", pa.bool_()),
        ("related", pa.bool_()),
        ("n_objects", pa.int32()),
        ("lookalike", pa.bool_()),
        ("object", pa.int32()),
        ("box", pa.list_(pa.int32(), 4)),
        ("occluded", pa.float32()),
        ("defect", pa.string()),
    ]
)
OBJECT_TYPE = pa.struct(
    [
        ("qid", pa.string()),
        ("name", pa.string()),
        ("subgroup", pa.string()),
        ("box", pa.list_(pa.int32(), 4)),
        ("square", pa.list_(pa.int32(), 3)),
        ("angle", pa.float32()),
        ("occluded", pa.float32()),
    ]
)
SCENES_SCHEMA = pa.schema(
    [
        ("scene", pa.int32()),
        ("image", pa.string()),
        ("caption", pa.string()),
        ("related", pa.bool_()),
        ("defect", pa.string()),
        ("objects", pa.list_(OBJECT_TYPE)),
        ("caption_objects", pa.list_(pa.string())),
    ]
)


def truth_rows(plan: WorldPlan, boxes: list[list[Box]]) -> list[dict[str, object]]:
    rows = []
    for r in plan.records:
        for j, m in enumerate(r.mentions):
            e = plan.entity(m.qid)
            obj = r.objects[m.object] if m.object is not None else None
            rows.append(
                {
                    "id": f"{TOPIC}-{r.index}-{j}",
                    "scene": r.index,
                    "image": r.image,
                    "qid": m.qid,
                    "name": e.name,
                    "type": e.type,
                    "subgroup": e.subgroup,
                    "mention": m.words,
                    "start": m.start,
                    "end": m.end,
                    "named_in_caption": m.named,
                    "alias": m.alias,
                    "related": r.related,
                    "n_objects": len(r.objects),
                    "lookalike": plan.lookalike(r, m),
                    "object": m.object,
                    "box": list(boxes[r.index][m.object]) if m.object is not None else None,
                    "occluded": obj.square.occluded if obj else None,
                    "defect": _mention_defect(r, j),
                }
            )
    return rows


def scene_rows(plan: WorldPlan, boxes: list[list[Box]]) -> list[dict[str, object]]:
    rows = []
    for r in plan.records:
        objects = [
            {
                "qid": o.qid,
                "name": plan.entity(o.qid).name,
                "subgroup": plan.entity(o.qid).subgroup,
                "box": list(box),
                "square": [o.square.x, o.square.y, o.square.size],
                "angle": o.square.angle,
                "occluded": o.square.occluded,
            }
            for o, box in zip(r.objects, boxes[r.index], strict=True)
        ]
        rows.append(
            {
                "scene": r.index,
                "image": r.image,
                "caption": r.caption,
                "related": r.related,
                "defect": r.defect,
                "objects": objects,
                "caption_objects": list(r.caption_objects),
            }
        )
    return rows


def _write_parquet(rows: list[dict[str, object]], schema: pa.Schema, path: Path) -> None:
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)


def _credits() -> dict[str, str]:
    return {
        "openmoji": f"{OPENMOJI_ATTRIBUTION} ({OPENMOJI_LICENSE_URL})",
        "openmoji_license": "CC BY-SA 4.0",
        "unicode": UNICODE_CREDIT,
    }


def write_metadata(out: Path, cfg: WorldConfig, summary: WorldSummary) -> None:
    """``world.json`` (machine-readable) and ``WORLD.md`` (for people): config, sizes, credits."""
    meta = {"config": asdict(cfg), "summary": asdict(summary), "credits": _credits()}
    (out / "world.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n")
    credits = _credits()
    lines = [
        "# vpmel demo world",
        "",
        "A generated, WikiDiverse-shaped MEL dataset: a KB of emoji entities and captioned",
        "scenes (`demo.json`, `images/`), with hidden ground truth in `truth.parquet`.",
        "",
        "## Credits",
        "",
        f"- Artwork: {credits['openmoji']}. The scene and entity images are adaptations of",
        "  OpenMoji artwork and are shared under the same license, CC BY-SA 4.0.",
        f"- {credits['unicode']}",
        "",
        "## Sizes",
        "",
        *[f"- {k}: {v}" for k, v in asdict(summary).items()],
        "",
        "## Config",
        "",
        *[f"- {k}: {v}" for k, v in asdict(cfg).items()],
        "",
    ]
    (out / "WORLD.md").write_text("\n".join(lines), encoding="utf-8")


# ---------------------------------------------------------------------------- rendering


def render_glyphs(plan: WorldPlan, progress: bool) -> dict[str, Image.Image]:
    kb = plan.kb
    if progress:
        kb = track(kb, description="world: rendering glyphs")
    return {e.qid: render_glyph(e.chars) for e in kb}


def render_record(
    plan: WorldPlan, record: RecordPlan, glyphs: dict[str, Image.Image]
) -> tuple[Image.Image, list[Box]]:
    """Draw one scene; its own RNG stream makes it independent of every other scene."""
    cfg = plan.config
    rng = np.random.default_rng([cfg.seed, 2, record.index])
    return compose_scene(
        rng,
        cfg.scene_width,
        cfg.scene_height,
        [glyphs[o.qid] for o in record.objects],
        [o.square for o in record.objects],
    )


def _write_scene(image: Image.Image, record: RecordPlan, out: Path) -> None:
    path = out / record.image
    if record.defect == "missing_image":
        return
    if record.defect == "unreadable_image":  # a truncated download: header, then nothing
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        path.write_bytes(buffer.getvalue()[:64])
        return
    _save_png(image, path, compress_level=1)  # noisy scenes: level 1 is as small, 2x faster


def generate_world(
    out: Path, cfg: WorldConfig | None = None, progress: bool = True
) -> WorldSummary:
    """Plan, render and write the demo world into ``out`` (see the module docstring)."""
    cfg = cfg or WorldConfig()
    out = Path(out)
    plan = plan_world(cfg, progress=progress)
    for sub in ("images", "kb_image"):
        if (out / sub).exists():
            shutil.rmtree(out / sub)
    (out / "images").mkdir(parents=True)
    glyphs = render_glyphs(plan, progress)
    write_kb(out, plan, glyphs)
    records = plan.records
    if progress:
        records = track(records, description="world: drawing scenes")
    boxes: list[list[Box]] = []
    for r in records:
        image, scene_boxes = render_record(plan, r, glyphs)
        _write_scene(image, r, out)
        boxes.append(scene_boxes)
    _write_json_lines(out / "demo.json", demo_rows(plan, boxes))
    _write_parquet(truth_rows(plan, boxes), TRUTH_SCHEMA, out / "truth.parquet")
    _write_parquet(scene_rows(plan, boxes), SCENES_SCHEMA, out / "truth_scenes.parquet")
    summary = plan.summary()
    write_metadata(out, cfg, summary)
    return summary


def world_digest(out: Path) -> dict[str, str]:
    """sha256 of every file under ``out`` (relative path -> hex), for determinism checks."""
    out = Path(out)
    return {
        str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.rglob("*"))
        if p.is_file()
    }


__all__ = [
    "WorldConfig",
    "WorldPlan",
    "WorldSummary",
    "generate_world",
    "plan_world",
    "world_contact_sheet",
    "world_digest",
]
