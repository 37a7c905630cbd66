"""The demo Detective-VLM's pretraining corpus and its stage (`detective_base`).

Runs offline on the six-shape KB of conftest and a tiny encoder built from config.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from test_encoders import TINY
from typer.testing import CliRunner

from stages.detective_base import app
from vpmel.data.schema import KB_FILE
from vpmel.detective.model import (
    build_demo_tokenizer,
    format_prompt,
    load_pretrained,
    render_instruction,
)
from vpmel.detective.pretraining import (
    KINDS,
    REGION_TEXTS,
    SCENE_TEXTS,
    VIEW_TEXTS,
    CorpusConfig,
    PretrainingCorpus,
    caption_collisions,
    corpus_vocabulary,
    names_region,
)
from vpmel.encoders.model import demo_encoder
from vpmel.encoders.training import EntityImages
from vpmel.world.captioned import CaptionedScenes
from vpmel.world.generate import WorldConfig, plan_world

WORLD = WorldConfig(n_scenes=60)  # the world whose captions the captioned kind never writes

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def kb(kb_root: Path) -> pd.DataFrame:
    return pd.read_parquet(kb_root / KB_FILE)


@pytest.fixture(scope="module")
def corpus(kb: pd.DataFrame, kb_root: Path) -> PretrainingCorpus:
    images = EntityImages.from_kb(kb, kb_root)
    cfg = CorpusConfig(seed=0, examples=60, kind_rates=(0.4, 0.1, 0.2, 0.3))
    return PretrainingCorpus(kb, images, cfg, "<image>", _captions(kb, images, 0))


def _captions(kb: pd.DataFrame, images: EntityImages, seed: int) -> CaptionedScenes:
    return CaptionedScenes(kb, np.flatnonzero(images.has_image()), WORLD, seed)


def _template_pattern(template: str) -> re.Pattern[str]:
    parts = re.split(r"(\{\w+\})", template)
    return re.compile("".join(".+" if p.startswith("{") else re.escape(p) for p in parts))


def test_corpus_is_seeded_and_rendered_on_demand(corpus: PretrainingCorpus) -> None:
    kind, image, text, subject = corpus.example(7)
    again = PretrainingCorpus(
        corpus.kb, corpus.images, corpus.cfg, "<image>", _captions(corpus.kb, corpus.images, 0)
    ).example(7)
    assert (kind, text, subject) == again[:1] + again[2:]
    assert image.tobytes() == again[1].tobytes()
    other_cfg = CorpusConfig(1, 60, corpus.cfg.kind_rates)
    other = PretrainingCorpus(
        corpus.kb, corpus.images, other_cfg, "x", _captions(corpus.kb, corpus.images, 1)
    )
    assert [other.example(i)[2] for i in range(20)] != [corpus.example(i)[2] for i in range(20)]
    assert corpus[7] == {"image": corpus[7]["image"], "prompt": "<image>", "answer": text}
    with pytest.raises(IndexError):
        corpus.example(len(corpus))


def test_texts_are_the_templates_never_the_instruction(corpus: PretrainingCorpus) -> None:
    patterns = {
        "region": [_template_pattern(t) for t in REGION_TEXTS],
        "scene": [_template_pattern(t) for t in SCENE_TEXTS],
        "view": [_template_pattern(t) for t in VIEW_TEXTS],
        # the world generator's caption (or none), then a region sentence
        "captioned": [re.compile(r"(?:.+ )?" + _template_pattern(t).pattern) for t in REGION_TEXTS],
    }
    kinds: Counter[str] = Counter()
    for i in range(len(corpus)):
        kind, image, text, subject = corpus.example(i)
        kinds[kind] += 1
        assert any(p.fullmatch(text) for p in patterns[kind]), (kind, text)
        assert not re.search(r"\b(?:Background|Text|Question|Answer)\s*:", text)
        assert str(corpus.kb.at[subject, "name"]) in text
        if kind in ("region", "captioned"):  # the marker is drawn (pure red, as `prompt` says)
            red = np.all(np.asarray(image) == (255, 0, 0), axis=-1).sum()
            assert red > 20, f"example {i}: no red box"
    assert set(kinds) == set(KINDS)
    # every entity is the subject equally often
    counts = Counter(corpus.subjects[: len(corpus)].tolist())
    assert max(counts.values()) - min(counts.values()) <= 1


def test_captioned_kind_is_a_world_caption_then_the_marked_name(
    corpus: PretrainingCorpus,
) -> None:
    """Scenes and captions from the world generator at another seed: the caption is about
    the scene shown, names the marked object where the plan says so, and is never one of the
    world's own captions."""
    world_captions = {r.caption for r in plan_world(WORLD).records}
    assert corpus.captioned is not None and corpus.captioned.forbidden == world_captions
    assert isinstance(corpus.captioned, CaptionedScenes)
    assert corpus.captioned.world.seed != WORLD.seed
    at = [i for i in range(len(corpus)) if corpus.example(i)[0] == "captioned"]
    named = 0
    for i in at:
        image, caption, region, subject, is_named = corpus.captioned_parts(i)
        name = str(corpus.kb.at[subject, "name"])
        assert caption not in world_captions and name in region
        assert corpus.example(i)[2] == " ".join(f"{caption} {region}".split())
        if is_named and caption:
            named += 1
            assert (
                name.lower() in caption.lower()
                or str(corpus.captioned.entities[subject].alias).lower() in caption.lower()
            ), (caption, name)
        record = corpus.captioned.record(i, subject)
        assert {corpus.captioned.index_of[o.qid] for o in record.objects} >= {subject}
    assert at and named, (len(at), named)


def test_a_caption_equal_to_the_worlds_is_never_written(corpus: PretrainingCorpus) -> None:
    at = next(i for i in range(len(corpus)) if corpus.example(i)[0] == "captioned")
    caption = corpus.captioned_parts(at)[1]
    assert caption
    captions = _captions(corpus.kb, corpus.images, 0)
    clone = PretrainingCorpus(corpus.kb, corpus.images, corpus.cfg, "<image>", captions)
    assert clone.captioned is not None and caption_collisions(clone) == 0
    captions.forbidden = frozenset({caption})
    _, again, region, _, _ = clone.captioned_parts(at)
    assert again == "" and clone.example(at)[2] == region
    assert caption_collisions(clone) >= 1


def test_corpus_config_reads_three_shares_and_captions_need_a_source(
    corpus: PretrainingCorpus,
) -> None:
    assert CorpusConfig(0, 10, (0.6, 0.1, 0.3)).kind_rates == (0.6, 0.1, 0.3, 0.0)
    with pytest.raises(ValueError):
        CorpusConfig(0, 10, (0.5, 0.5))
    with pytest.raises(ValueError, match="caption source"):
        PretrainingCorpus(corpus.kb, corpus.images, CorpusConfig(0, 10, (0.5, 0, 0, 0.5)), "x")
    plain = PretrainingCorpus(corpus.kb, corpus.images, CorpusConfig(0, 10, (0.6, 0.1, 0.3)), "x")
    assert plain.captioned is None and caption_collisions(plain) == 0


def test_vocabulary_covers_names_templates_and_instruction(kb: pd.DataFrame) -> None:
    tokenizer = build_demo_tokenizer(corpus_vocabulary(kb))
    unk = tokenizer.unk_token_id
    texts = [
        t.format(name=n, type="Misc", description="") for n in kb["name"] for t in REGION_TEXTS
    ]
    texts.extend(format_prompt(None, render_instruction(n, "")) for n in kb["name"])
    for text in texts:
        assert unk not in tokenizer(text)["input_ids"], text


def test_names_region_matches_whole_names_only() -> None:
    assert names_region("the red box shows Red Circle, a Misc.", "red circle")
    assert names_region("red circle", "red circle")
    assert not names_region("a red circles", "red circle")
    assert not names_region("anything", "")


def test_stage_pretrains_a_loadable_base_and_reports(kb_root: Path, tmp_path: Path) -> None:
    encoder = tmp_path / "encoder"
    demo_encoder(TINY).save(encoder)
    params = {
        "prompt": {"shape": "box", "color": "red", "thickness": None},
        "detective": {
            "model": "demo",
            "threads": 1,
            "demo": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64},
            "pretrain": {
                "examples": 48,
                "epochs": 2,
                "batch_size": 8,
                "heldout": 6,
                "kind_rates": [0.4, 0.1, 0.2, 0.3],
            },
        },
        "world": {"n_scenes": 60},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    args = ["--dataset", str(kb_root), "--encoder-dir", str(encoder)]
    args += ["--out", str(tmp_path / "base"), "--reports", str(tmp_path / "reports")]
    result = CliRunner().invoke(app, [*args, "--params", str(tmp_path / "params.yaml")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "reports/detective_base.json").read_text())
    assert report["examples"] == 48 and len(report["train_loss"]) == 2
    assert report["train_loss"][1] < report["train_loss"][0]
    naming = report["heldout_region_naming"]
    assert naming["pretrained"]["n"] == 6 and 0 <= naming["pretrained"]["names_marked_entity"] <= 1
    captioned = report["heldout_captioned_naming"]["pretrained"]
    split = captioned["caption_names_it"]["n"] + captioned["caption_does_not"]["n"]
    assert captioned["n"] == 6 and split == 6
    assert sum(report["kinds"].values()) == 48 and report["captions_equal_to_the_worlds"] >= 0
    assert json.loads((tmp_path / "reports/timings/detective_base.json").read_text())["wall_s"] > 0
    model, processor = load_pretrained(tmp_path / "base")
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert processor.tokenizer.convert_tokens_to_ids("▁circle") != processor.tokenizer.unk_token_id


def test_stage_with_a_hub_vlm_only_notes_it(kb_root: Path, tmp_path: Path) -> None:
    params = {"detective": {"model": "llava-hf/llava-1.5-7b-hf", "pretrain": {}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    args = ["--dataset", str(kb_root), "--out", str(tmp_path / "base")]
    args += ["--reports", str(tmp_path / "reports"), "--params", str(tmp_path / "params.yaml")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    note = json.loads((tmp_path / "base/NOTE.json").read_text())
    assert note["model"] == "llava-hf/llava-1.5-7b-hf"
