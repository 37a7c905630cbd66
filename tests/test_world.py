"""The demo world: determinism, sizes, invariants of boxes, spans and unrelated pairs,
KB files, deliberate defects, the catalogue and the contact sheet."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from vpmel.data.schema import ENTITY_TYPES
from vpmel.report.contact_sheet import Tile, draw_contact_sheet, wrap
from vpmel.world import WorldConfig, generate_world, plan_world, world_contact_sheet, world_digest
from vpmel.world.captions import compose_caption, fill, lead_in, phrase
from vpmel.world.emoji import load_catalogue, select_kb, short_alias
from vpmel.world.generate import vocabulary_sentences

TINY = dict(kb_size=60, n_scenes=30, scene_width=96, scene_height=72, defect_rate=0.15)
DEFECTS = {"nil_answer", "qid_not_in_kb", "missing_image", "unreadable_image"}


@pytest.fixture(scope="module")
def worlds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        path = tmp_path_factory.mktemp(f"world_{name}")
        generate_world(path, WorldConfig(seed=seed, **TINY), progress=False)
        out[name] = path
    return out


@pytest.fixture(scope="module")
def world(worlds: dict[str, Path]) -> Path:
    return worlds["a"]


def _demo(world: Path) -> list:
    return json.loads((world / "demo.json").read_text(encoding="utf-8"))


def _kb(world: Path) -> list[dict]:
    return json.loads((world / "kb_entity.json").read_text(encoding="utf-8"))


def _truth(world: Path, name: str = "truth.parquet") -> list[dict]:
    return pq.read_table(world / name).to_pylist()


def _qid(url: str | None) -> str | None:
    return url.rsplit("/", 1)[-1] if url else None


# ---------------------------------------------------------------- determinism


def test_same_seed_gives_identical_files(worlds: dict[str, Path]) -> None:
    a, b = world_digest(worlds["a"]), world_digest(worlds["b"])
    assert a == b
    assert {"demo.json", "kb_entity.json", "qid2id.json", "truth.parquet"} <= set(a)
    assert sum(k.startswith("images/") for k in a) >= 25  # image bytes compared too


def test_other_seed_gives_other_world(worlds: dict[str, Path]) -> None:
    a, c = world_digest(worlds["a"]), world_digest(worlds["c"])
    assert a["demo.json"] != c["demo.json"]
    shared = [k for k in a if k.startswith("images/") and k in c]
    assert sum(a[k] != c[k] for k in shared) == len(shared)


# ---------------------------------------------------------------- sizes and files


def test_sizes_and_files(world: Path) -> None:
    demo, kb = _demo(world), _kb(world)
    meta = json.loads((world / "world.json").read_text())
    summary = meta["summary"]
    assert len(demo) == TINY["n_scenes"] == summary["n_scenes"]
    assert len(kb) == TINY["kb_size"] == summary["n_entities"]
    assert sum(len(r[3]) for r in demo) == summary["n_mentions"] == len(_truth(world))
    assert len(list((world / "kb_image").glob("*.png"))) == TINY["kb_size"]
    written = len(list((world / "images").glob("*.png")))
    assert (
        written
        == summary["n_images_written"]
        == TINY["n_scenes"] - summary["defects"].get("missing_image", 0)
    )
    assert "CC BY-SA 4.0" in meta["credits"]["openmoji"]
    assert "OpenMoji" in (world / "WORLD.md").read_text()
    assert meta["config"]["kb_size"] == TINY["kb_size"]


def test_scene_records_are_wikidiverse_shaped(world: Path) -> None:
    for text, image, topic, mentions in _demo(world):
        assert isinstance(text, str) and text
        assert image.startswith("images/") and image.endswith(".png")
        assert topic == "demo"
        assert 1 <= len(mentions) <= 2
        for words, etype, start, end, url, box in mentions:
            assert isinstance(words, str) and words
            assert etype in ENTITY_TYPES
            assert isinstance(start, int) and isinstance(end, int)
            assert url is None or url.startswith("https://www.wikidata.org/wiki/Q")
            assert box is None or len(box) == 4


def test_scenes_hold_two_to_five_objects_with_boxes_inside(world: Path) -> None:
    w, h = TINY["scene_width"], TINY["scene_height"]
    for scene in _truth(world, "truth_scenes.parquet"):
        assert 2 <= len(scene["objects"]) <= 5
        qids = [o["qid"] for o in scene["objects"]]
        assert len(set(qids)) == len(qids)
        for o in scene["objects"]:
            x1, y1, x2, y2 = o["box"]
            assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
        path = world / scene["image"]
        if scene["defect"] is None:
            with Image.open(path) as im:
                assert im.size == (w, h) and im.mode == "RGB"


def test_reference_box_is_the_target_objects_box(world: Path) -> None:
    scenes = {s["scene"]: s for s in _truth(world, "truth_scenes.parquet")}
    truth = {t["id"]: t for t in _truth(world)}
    for i, (_text, _image, _topic, mentions) in enumerate(_demo(world)):
        for j, m in enumerate(mentions):
            t = truth[f"demo-{i}-{j}"]
            if not t["related"]:
                continue
            obj = scenes[i]["objects"][t["object"]]
            assert obj["qid"] == t["qid"]
            assert m[5] == obj["box"] == t["box"]


def test_named_spans_slice_the_caption_unnamed_are_minus_one(world: Path) -> None:
    truth = {t["id"]: t for t in _truth(world)}
    names = {row["id"]: row["entity_name"] for row in _kb(world)}
    for i, (text, _image, _topic, mentions) in enumerate(_demo(world)):
        for j, (words, _etype, start, end, _url, _box) in enumerate(mentions):
            t = truth[f"demo-{i}-{j}"]
            if t["named_in_caption"]:
                assert text[start:end] == words
            else:
                assert (start, end) == (-1, -1)
                assert words == names[t["qid"]]


def test_unrelated_pairs_have_no_box_and_do_not_show_the_target(world: Path) -> None:
    plan = plan_world(WorldConfig(**TINY))
    scenes = {s["scene"]: s for s in _truth(world, "truth_scenes.parquet")}
    unrelated = [t for t in _truth(world) if not t["related"]]
    assert unrelated, "tiny world should still contain an unrelated pair"
    assert len(unrelated) == plan.summary().n_unrelated_mentions
    demo = _demo(world)
    for t in unrelated:
        i, j = (int(x) for x in t["id"].split("-")[1:])
        assert demo[i][3][j][5] is None
        assert t["qid"] not in {o["qid"] for o in scenes[i]["objects"]}
        assert t["qid"] in scenes[i]["caption_objects"]


def test_lookalike_flag_matches_the_scene(world: Path) -> None:
    scenes = {s["scene"]: s for s in _truth(world, "truth_scenes.parquet")}
    for t in _truth(world):
        others = [o for o in scenes[t["scene"]]["objects"] if o["qid"] != t["qid"]]
        assert t["lookalike"] == any(o["subgroup"] == t["subgroup"] for o in others)


# ---------------------------------------------------------------- KB


def test_kb_files_are_consistent(world: Path) -> None:
    kb = _kb(world)
    raw = (world / "qid2id.json").read_text()
    assert raw.count("\n") == 1 and raw.endswith("\n")  # one line
    qid2id = json.loads(raw)
    assert qid2id == {row["id"]: k for k, row in enumerate(kb)}
    for row in kb:
        assert set(row) == {"id", "type", "entity_name", "attr", "image_list", "entity_type"}
        assert row["type"] == "entity" and row["entity_type"] in ENTITY_TYPES
        assert row["entity_name"] and row["attr"]
        assert row["image_list"] == [f"{row['id']}.png"]
        with Image.open(world / "kb_image" / row["image_list"][0]) as im:
            assert im.size == (72, 72) and im.mode == "RGB"
            assert im.getpixel((0, 0)) == (255, 255, 255)
    assert set(ENTITY_TYPES) == {row["entity_type"] for row in kb}


def test_mentions_point_into_the_kb_unless_defective(world: Path) -> None:
    qid2id = json.loads((world / "qid2id.json").read_text())
    truth = {t["id"]: t for t in _truth(world)}
    for i, (_text, _image, _topic, mentions) in enumerate(_demo(world)):
        for j, m in enumerate(mentions):
            t = truth[f"demo-{i}-{j}"]
            assert t["qid"] in qid2id
            if t["defect"] not in ("nil_answer", "qid_not_in_kb"):
                assert _qid(m[4]) == t["qid"]


# ---------------------------------------------------------------- defects


def test_defects_are_deliberate_and_recorded(world: Path) -> None:
    qid2id = json.loads((world / "qid2id.json").read_text())
    demo = _demo(world)
    defects = [t for t in _truth(world) if t["defect"]]
    assert {t["defect"] for t in defects} == DEFECTS
    for t in defects:
        i, j = (int(x) for x in t["id"].split("-")[1:])
        mention, path = demo[i][3][j], world / demo[i][1]
        if t["defect"] == "nil_answer":
            assert mention[4] is None
        elif t["defect"] == "qid_not_in_kb":
            assert _qid(mention[4]) not in qid2id
        elif t["defect"] == "missing_image":
            assert not path.exists()
        else:
            with pytest.raises(OSError), Image.open(path) as im:
                im.load()
    clean = [t for t in _truth(world) if not t["defect"]]
    for t in clean:
        assert (world / t["image"]).exists()


# ---------------------------------------------------------------- catalogue and plan


def test_catalogue_covers_all_types_with_stable_qids() -> None:
    catalogue = load_catalogue()
    assert len(catalogue) >= 1500
    assert {e.type for e in catalogue} == set(ENTITY_TYPES)
    assert [e.qid for e in catalogue] == [f"Q{100001 + k}" for k in range(len(catalogue))]
    order = [tuple(int(c, 16) for c in e.codepoints) for e in catalogue]
    assert order == sorted(order)
    by_name = {e.cldr_name: e for e in catalogue}
    assert by_name["flag: Germany"].name == "Germany"
    assert by_name["flag: Germany"].type == "Country"
    assert by_name["flag: England"].type == "Location"
    assert by_name["bank"].type == "Organization"
    assert by_name["health worker"].type == "Person"
    assert by_name["trophy"].type == "Event"
    assert by_name["open book"].type == "Works"
    assert by_name["dog"].type == "Misc"
    assert "mammal" in by_name["dog"].description


@pytest.mark.parametrize("size", [7, 60, 1200])
def test_kb_selection_keeps_all_types_and_subgroups_together(size: int) -> None:
    kb = select_kb(load_catalogue(), size, seed=0)
    assert len(kb) == size == len({e.qid for e in kb})
    assert {e.type for e in kb} == set(ENTITY_TYPES)
    if size >= 60:
        subgroups = [e.subgroup for e in kb]
        assert len(set(subgroups)) < size / 3  # look-alikes come in groups
    assert select_kb(load_catalogue(), size, seed=0) == kb


def test_default_world_plan_is_big_enough() -> None:
    plan = plan_world(WorldConfig())
    s = plan.summary()
    assert s.n_entities >= 1000 and s.n_mentions >= 3000
    assert set(s.entities_per_type) == set(ENTITY_TYPES) and min(s.entities_per_type.values()) > 0
    assert 0.25 < s.n_unnamed / s.n_mentions < 0.42
    assert 0.06 < s.n_unrelated_pairs / s.n_scenes < 0.14
    assert 1.1 < s.n_mentions / s.n_scenes < 1.3
    assert s.n_lookalike_mentions > s.n_mentions / 3
    assert set(s.defects) == DEFECTS
    assert set(s.objects_per_scene) == {"2", "3", "4", "5"}


# ---------------------------------------------------------------- captions


def test_caption_spans_are_exact() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        k = int(rng.integers(0, 4))
        phrases = [
            phrase(w, sg)
            for w, sg in [
                ("Germany", "country-flag"),
                ("dog", ""),
                ("avocado", ""),
                ("Santa Claus", ""),
            ][:k]
        ]
        caption = compose_caption(rng, phrases, rel="to the left of" if k == 2 else "")
        assert caption.text[0].isupper()
        for p, (start, end) in zip(phrases, caption.spans, strict=True):
            assert caption.text[start:end] == p.words


def test_lead_ins_and_aliases() -> None:
    assert lead_in("avocado") == "an "
    assert lead_in("dog") == "a "
    assert lead_in("unicorn") == "a "
    assert lead_in("books") == "some "
    assert lead_in("bus") == "a "
    assert lead_in("ATM sign") == "an "
    assert lead_in("Germany", "country-flag") == "the flag of "
    assert fill("{0} {setting}.", [phrase("dog")], "at the fair").text == "A dog at the fair."
    assert fill("{0}!", [phrase("Santa Claus")], "").spans == ((0, 11),)
    assert short_alias("grinning cat with smiling eyes") == "cat"
    assert short_alias("kiss: woman, man") == "kiss"
    assert short_alias("dog") is None


def test_config_is_validated() -> None:
    with pytest.raises(ValueError):
        WorldConfig(min_objects=1)
    with pytest.raises(ValueError):
        WorldConfig(unnamed_rate=1.5)
    with pytest.raises(ValueError):
        WorldConfig(kb_size=5)


# ---------------------------------------------------------------- contact sheets


def test_world_contact_sheet(world: Path, tmp_path: Path) -> None:
    png = world_contact_sheet(world, tmp_path / "sheet.png", n=8, seed=0)
    with Image.open(png) as im:
        assert im.width == 4 * (320 + 16) and im.height > 2 * 240


def test_contact_sheet_survives_bad_images(tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    good = Image.new("RGB", (40, 30), (0, 0, 128))
    tiles = [
        (good, [([5, 5, 20, 20], "red", "a label")], "a caption " * 30),
        (tmp_path / "missing.png", [], "missing"),
        Tile(bad, (), "unreadable", title="bad"),
    ]
    png = draw_contact_sheet(tiles, tmp_path / "s.png", columns=2, tile_width=120)
    with Image.open(png) as im:
        assert im.size[0] == 2 * (120 + 16)
        top = 8 + 17  # padding + title line
        assert im.getpixel((8 + 100, top + 80)) == (0, 0, 128)  # the picture, scaled 3x
        assert im.getpixel((136 + 8 + 110, top + 85)) == (200, 200, 200)  # placeholder


def test_wrap_limits_lines() -> None:
    from PIL import ImageFont

    font = ImageFont.load_default(size=12)
    lines = wrap("word " * 200, font, 100, 3)
    assert len(lines) == 3 and lines[-1].endswith("…")
    assert all(font.getlength(line) <= 100 for line in lines)


def test_world_stage_writes_sizes_and_its_wall_time_apart(tmp_path: Path) -> None:
    import yaml
    from typer.testing import CliRunner

    from stages.world import app

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"world": dict(seed=0, **TINY)}))
    reports = tmp_path / "reports"
    args = ["--out", str(tmp_path / "world"), "--reports", str(reports), "--params", str(params)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    sizes = json.loads((reports / "world.json").read_text())
    assert sizes["n_entities"] == TINY["kb_size"]
    assert not [k for k in sizes if "second" in k or k.endswith("_s")]  # a metric: no times
    timing = json.loads((reports / "timings" / "world.json").read_text())
    assert timing["stage"] == "world" and timing["wall_s"] >= timing["work_s"] >= 0


def test_vocabulary_sentences_come_from_another_world() -> None:
    """The demo VLM's tokenizer takes words from a world planned from another seed (and the
    whole catalogue), never from the records the world stage writes."""
    cfg = WorldConfig(seed=3, kb_size=60, n_scenes=40)
    words = vocabulary_sentences(cfg, n_scenes=40)
    own = [record.caption for record in plan_world(cfg).records]
    assert len(words) > 40 and words[:40] != own
    assert {e.name for e in load_catalogue()} <= set(words)
