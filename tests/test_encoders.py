"""The image-text encoder: demo model, training, saving, and the paper-scale CLIP path.

Everything runs offline on tiny models: a 2-layer demo ViT with the packaged MiniLM text
tower, and a randomly initialised CLIPModel written to a temporary folder together with a
tokenizer and image processor built here.
"""

from __future__ import annotations

import copy
import json
import string
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image, ImageDraw
from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPTokenizer
from typer.testing import CliRunner

from stages.encoders import app
from vpmel.data.schema import KB_FILE
from vpmel.encoders.model import (
    MINILM_REF,
    DemoEncoderConfig,
    ImageTextEncoder,
    demo_encoder,
    resolve_encoder,
)
from vpmel.encoders.training import (
    EntityImages,
    PromptPhase,
    TrainConfig,
    ViewConfig,
    ViewSampler,
    contrastive_loss,
    cutout,
    entity_texts,
    prompt_following,
    prompt_probe,
    render_prompted,
    scene_loss,
    train_encoder,
)
from vpmel.prompts import PromptStyle

TINY = DemoEncoderConfig(
    image_size=32,
    patch_size=8,
    hidden_size=32,
    num_layers=2,
    num_heads=2,
    intermediate_size=64,
    projection_dim=16,
)


def _steps(n: int, seed: int = 0) -> TrainConfig:
    return TrainConfig(
        seed=seed,
        steps=n,
        batch_size=6,  # the shapes KB (conftest.kb_root)
        lr=3e-3,
        warmup_steps=2,
        background_bank=8,
        probe_scenes=12,
        views=ViewConfig(prompted_rate=0.3),
    )


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def kb(kb_root: Path) -> pd.DataFrame:
    return pd.read_parquet(kb_root / KB_FILE)


@pytest.fixture(scope="module")
def trained(kb: pd.DataFrame, kb_root: Path):
    return train_encoder(kb, kb_root, TINY, _steps(40), progress=False, log=lambda _: None)


# ---------------------------------------------------------------------------- training


def test_training_reduces_the_loss(trained) -> None:
    losses = trained.losses
    assert len(losses) == 40
    assert np.mean(losses[-8:]) < 0.8 * np.mean(losses[:8])
    retrieval = trained.metrics["retrieval"]
    assert set(retrieval) == {"trained", "random_init"}
    assert set(retrieval["trained"]) == {"views", "entity_images"}
    # the plain entity images are told apart after training, not before
    trained_top1 = retrieval["trained"]["entity_images"]["top1"]
    assert trained_top1 > retrieval["random_init"]["entity_images"]["top1"] + 0.3


def red_pixels(image: Image.Image) -> int:
    rgb = np.asarray(image.convert("RGB")).astype(int)
    return int(((rgb[..., 0] > 200) & (rgb[..., 1] < 60) & (rgb[..., 2] < 60)).sum())


def test_prompted_views_box_one_entity_among_others(kb: pd.DataFrame, kb_root: Path) -> None:
    images = EntityImages.from_kb(kb, kb_root)
    pool = np.arange(len(kb))
    cfg = ViewConfig(prompted_objects=(3, 3), prompt_jitter=0.0)
    views = [
        render_prompted(np.random.default_rng(5), images, pool, 2, cfg)[0][0] for _ in range(2)
    ]
    assert views[0].size == cfg.scene_size
    assert np.array_equal(np.asarray(views[0]), np.asarray(views[1]))  # same seed, same view
    # the red box is drawn: far more pure-red pixels than the red circle's outline-free fill
    blank = ViewConfig(
        prompted_objects=(3, 3), prompt_jitter=0.0, prompt=PromptStyle("box", "blue")
    )
    unmarked = render_prompted(np.random.default_rng(5), images, pool, 2, blank)[0][0]
    assert red_pixels(views[0]) > red_pixels(unmarked) + 50


def test_paired_prompted_views_differ_only_by_the_box(kb: pd.DataFrame, kb_root: Path) -> None:
    images = EntityImages.from_kb(kb, kb_root)
    cfg = ViewConfig(prompted_objects=(2, 4), prompt_jitter=0.0)
    (first, second), _ = render_prompted(
        np.random.default_rng(3), images, np.arange(len(kb)), 1, cfg, 4
    )
    a, b = np.asarray(first).astype(int), np.asarray(second).astype(int)
    assert a.shape == b.shape and not np.array_equal(a, b)
    # one scene: outside both boxes' red outlines every pixel is the same
    differ = np.abs(a - b).sum(-1) > 0
    assert differ.mean() < 0.25
    assert red_pixels(first) > 50 and red_pixels(second) > 50
    # a sampler with pairs always on boxes batch mates in one scene, two views each
    sampler = ViewSampler(images, replace(cfg, prompted_rate=1.0, prompt_pair_rate=1.0), 0, 4)
    views = sampler.views([0, 1, 2, 3])
    assert all(v is not None for v in views)
    for i in (0, 2):
        pair = np.abs(np.asarray(views[i]).astype(int) - np.asarray(views[i + 1]).astype(int))
        assert 0 < (pair.sum(-1) > 0).mean() < 0.25


def test_prompt_probe_moves_the_box_to_another_object(kb: pd.DataFrame, kb_root: Path) -> None:
    images = EntityImages.from_kb(kb, kb_root)
    probe = prompt_probe(images, _steps(1), scenes=5)
    assert len(probe.prompted) == len(probe.moved) == len(probe.unprompted) == 5
    assert all(t != o for t, o in zip(probe.target, probe.other, strict=True))
    assert all(2 <= n <= 5 for n in probe.n_objects)
    for prompted, moved, plain in zip(probe.prompted, probe.moved, probe.unprompted, strict=True):
        assert red_pixels(prompted) > red_pixels(plain) and red_pixels(moved) > red_pixels(plain)
        assert not np.array_equal(np.asarray(prompted), np.asarray(moved))


def test_training_reports_prompt_following(trained) -> None:
    following = trained.metrics["prompt_following"]
    for run in ("trained", "random_init"):
        assert following[run]["scenes"] == 12
        for key in ("prompted_top1", "unprompted_top1", "moved_follows", "moved_changes",
                    "in_scene_prompted", "in_scene_unprompted", "in_scene_moved"):  # fmt: skip
            assert 0.0 <= following[run][key] <= 1.0
        assert 0.2 <= following[run]["in_scene_chance"] <= 0.5  # 2-5 objects


def test_prompt_following_counts_against_the_names(trained, kb, kb_root) -> None:
    images = EntityImages.from_kb(kb, kb_root)
    probe = prompt_probe(images, _steps(1), scenes=4)
    out = prompt_following(trained.model, probe, list(kb["name"]))
    text = trained.model.encode_texts(list(kb["name"]))
    top = (trained.model.encode_images(probe.moved) @ text.T).argmax(1)
    assert out["moved_follows"] == round(
        float((top == torch.tensor(probe.other)).float().mean()), 4
    )
    # in-scene: the pick among the scene's own names only
    image = trained.model.encode_images(probe.prompted)
    picks = [
        objects[int((image[i] @ text[objects].T).argmax())] == probe.target[i]
        for i, objects in enumerate(probe.objects)
    ]
    assert out["in_scene_prompted"] == round(sum(picks) / len(picks), 4)
    assert all(probe.target[i] in o and probe.other[i] in o for i, o in enumerate(probe.objects))


def test_prompt_phase_continues_training_on_prompted_scenes(kb, kb_root) -> None:
    base = _steps(2, 5)
    phased = replace(base, prompt_phase=PromptPhase(steps=2, prompted_rate=1.0))
    one = train_encoder(kb, kb_root, TINY, base, progress=False, log=lambda _: None)
    two = train_encoder(kb, kb_root, TINY, phased, progress=False, log=lambda _: None)
    assert two.losses[:2] == one.losses  # the first phase is the plain run
    assert len(two.losses) == 4 and two.metrics["prompt_phase_steps"] == 2
    a, b = one.model.state_dict(), two.model.state_dict()
    assert not all(torch.equal(a[k], b[k]) for k in a)


def test_training_can_continue_from_a_given_encoder(trained, kb, kb_root) -> None:
    start = copy.deepcopy(trained.model)
    again = train_encoder(kb, kb_root, TINY, _steps(1), progress=False, log=lambda _: None,
                          init=start)  # fmt: skip
    assert again.model is start  # trained further in place, not rebuilt from the config
    # its "random_init" figures are the given encoder's, not a fresh model's
    assert again.metrics["retrieval"]["random_init"] == trained.metrics["retrieval"]["trained"]


def test_same_seed_gives_identical_weights(kb: pd.DataFrame, kb_root: Path) -> None:
    runs = [
        train_encoder(kb, kb_root, TINY, _steps(3, seed), progress=False, log=lambda _: None)
        for seed in (5, 5, 6)
    ]
    same, other = runs[0].model.state_dict(), runs[1].model.state_dict()
    assert all(torch.equal(same[k], other[k]) for k in same)
    assert runs[0].losses == runs[1].losses
    different = runs[2].model.state_dict()
    assert not all(torch.equal(same[k], different[k]) for k in same)


def test_contrastive_loss_does_not_use_duplicates_as_negatives() -> None:
    torch.manual_seed(0)
    images, texts = torch.randn(3, 8), torch.randn(3, 8)
    scale = torch.tensor(0.0)
    ids = torch.tensor([4, 4, 9])
    # reference: each row's softmax over its own positive and the other entity's entries
    img, txt = F.normalize(images, dim=-1), F.normalize(texts, dim=-1)
    logits = img @ txt.T
    keep = [[0, 2], [1, 2], [0, 1, 2]]  # row 0 (entity 4) never sees column 1 (entity 4)

    def side(lg: torch.Tensor) -> torch.Tensor:
        return torch.stack(
            [-torch.log_softmax(lg[i, keep[i]], 0)[keep[i].index(i)] for i in range(3)]
        ).mean()

    expected = (side(logits) + side(logits.T)) / 2
    assert torch.allclose(contrastive_loss(images, texts, scale, ids), expected, atol=1e-6)
    unmasked = contrastive_loss(images, texts, scale)
    assert not torch.allclose(unmasked, expected, atol=1e-4)


def test_scene_loss_ranks_the_boxed_name_among_its_own_scene() -> None:
    torch.manual_seed(1)
    image, target = torch.randn(2, 8), torch.randn(2, 8)
    mates = torch.randn(2, 3, 8)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    scale = torch.tensor(0.0)
    # reference: row r's softmax over its target and its real mates only
    img = F.normalize(image, dim=-1)
    expected = []
    for r, n in enumerate((2, 1)):
        cands = F.normalize(torch.cat([target[r : r + 1], mates[r, :n]]), dim=-1)
        expected.append(-torch.log_softmax(cands @ img[r], 0)[0])
    got = scene_loss(image, target, mates, mask, scale)
    assert torch.allclose(got, torch.stack(expected).mean(), atol=1e-6)
    # an image that is its boxed entity's text scores lower than one that is a mate's
    right = scene_loss(target, target, mates, mask, torch.tensor(3.0))
    wrong = scene_loss(mates[:, 0], target, mates, mask, torch.tensor(3.0))
    assert right < wrong


def test_sampler_names_the_other_objects_of_each_prompted_scene(
    kb: pd.DataFrame, kb_root: Path
) -> None:
    images = EntityImages.from_kb(kb, kb_root)
    cfg = ViewConfig(prompted_rate=0.5, prompted_objects=(2, 4))
    sampler = ViewSampler(images, cfg, 0, 4)
    entities, views, _, mates = sampler.batch(8)
    assert len(views) == len(mates) == len(entities)
    prompted = [k for k, m in enumerate(mates) if m]
    assert prompted and len(prompted) < len(entities)  # some scenes, some crops
    for k in prompted:
        assert entities[k] not in mates[k] and 1 <= len(mates[k]) <= 3
        assert views[k].size == cfg.scene_size  # a whole scene, not a crop
    # the mates ride along without changing the draws: same views as `views()` gives
    again = ViewSampler(images, cfg, 0, 4)
    first = again._next_entities(len(entities))
    assert first == entities
    redo = again.views(first)
    assert all(
        np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(views, redo, strict=True)
    )


def test_cutout_removes_the_white_background_only() -> None:
    image = Image.new("RGB", (30, 30), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    draw.rectangle([5, 5, 24, 24], fill=(200, 0, 0))
    draw.rectangle([12, 12, 17, 17], fill=(255, 255, 255))  # a white hole inside the object
    obj = cutout(image)
    assert obj.size == (20, 20)
    alpha = np.asarray(obj.getchannel("A"))
    assert alpha.min() == 255  # the inner white stays opaque; the outer white is cut away


def test_entity_texts_variants(kb: pd.DataFrame) -> None:
    name, typed, described = entity_texts(kb)[0]
    assert (name, typed) == ("red circle", "red circle Misc")
    assert described == "red circle. a red circle drawn on white"


# ---------------------------------------------------------------------------- the model


def test_vision_tower_gives_every_layer(trained) -> None:
    model = trained.model
    pixels = model.pixel_values([Image.new("RGB", (50, 40), (0, 90, 200))])
    assert pixels.shape == (1, 3, 32, 32)
    out = model.vision_model(pixel_values=pixels, output_hidden_states=True)
    assert len(out.hidden_states) == 1 + TINY.num_layers
    tokens = (TINY.image_size // TINY.patch_size) ** 2 + 1
    assert all(h.shape == (1, tokens, TINY.hidden_size) for h in out.hidden_states)


def test_padding_does_not_change_a_text_embedding(trained) -> None:
    model = trained.model
    short = "red circle"
    long = "a much longer text about a great many things " * 5
    alone = model.encode_texts([short])
    batched = model.encode_texts([long, short])
    assert model.tokenize([long, short])["attention_mask"][1].sum() < 10  # really padded
    assert torch.allclose(alone[0], batched[1], atol=1e-5)
    assert torch.allclose(alone.norm(dim=-1), torch.ones(1))


def test_save_load_round_trip(trained, tmp_path: Path) -> None:
    model = trained.model
    model.save(tmp_path / "enc")
    meta = json.loads((tmp_path / "enc" / "encoder.json").read_text())
    assert meta["text_model"] == MINILM_REF  # the frozen MiniLM is referenced, not copied
    assert not (tmp_path / "enc" / "text").exists()
    loaded = ImageTextEncoder.load(tmp_path / "enc")
    images = [Image.new("RGB", (40, 30), (200, 30, 30)), Image.new("RGB", (20, 60), (9, 9, 9))]
    texts = ["red circle", "a much longer description of a black circle"]
    assert torch.equal(model.encode_images(images), loaded.encode_images(images))
    assert torch.equal(model.encode_texts(texts), loaded.encode_texts(texts))
    assert loaded.text_frozen and loaded.image_size == TINY.image_size


def test_demo_encoder_has_twelve_layers_by_default() -> None:
    torch.manual_seed(0)
    model = demo_encoder()
    assert model.vision_model.config.num_hidden_layers == 12
    assert model.text_frozen and model.text_pooling == "mean"
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"vision_model", "visual_projection", "text_projection", "logit_scale"}


# ---------------------------------------------------------------------------- paper scale


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised CLIPModel folder with its own tokenizer and image processor."""
    folder = tmp_path_factory.mktemp("tiny-clip")
    chars = list(string.ascii_lowercase + string.digits + ".,")
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    config = CLIPConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 64,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 3,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=24,
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    CLIPImageProcessorPil(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    ).save_pretrained(folder)
    return folder


def test_from_hub_matches_the_clip_model(tiny_clip: Path, tmp_path: Path) -> None:
    model = ImageTextEncoder.from_hub(tiny_clip)
    clip = CLIPModel.from_pretrained(tiny_clip).eval()
    images = [Image.new("RGB", (48, 40), (200, 30, 30)), Image.new("RGB", (30, 64), (9, 9, 90))]
    texts = ["a red box", "two blue things, far away and much longer"]
    got_images, got_texts = model.encode_images(images), model.encode_texts(texts)
    assert got_images.shape == (2, 24) and got_texts.shape == (2, 24)
    with torch.no_grad():
        pixels = model.pixel_values(images)
        ref_images = _features(clip.get_image_features(pixel_values=pixels))
        ref_texts = _features(clip.get_text_features(**model.tokenize(texts)))
    assert torch.allclose(got_images, F.normalize(ref_images, dim=-1), atol=1e-5)
    assert torch.allclose(got_texts, F.normalize(ref_texts, dim=-1), atol=1e-5)
    assert torch.allclose(model.logit_scale, clip.logit_scale)
    hidden = model.vision_model(pixel_values=pixels, output_hidden_states=True).hidden_states
    assert len(hidden) == 1 + 3
    # padding: a text alone equals the same text next to a longer one (EOS pooling)
    assert torch.allclose(model.encode_texts(texts[:1])[0], got_texts[0], atol=1e-5)
    # and the wrapper saves and loads the CLIP text tower itself
    model.save(tmp_path / "hub")
    loaded = ImageTextEncoder.load(tmp_path / "hub")
    assert (tmp_path / "hub" / "text" / "model.safetensors").is_file()
    assert torch.equal(loaded.encode_texts(texts), got_texts)
    assert torch.equal(loaded.encode_images(images), got_images)


def _features(out) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def test_resolve_encoder(tiny_clip: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="dvc repro encoders"):
        resolve_encoder({"backend": "demo"}, tmp_path / "missing")
    hub = resolve_encoder({"backend": "hub", "hub_model": str(tiny_clip)}, tmp_path / "none")
    assert hub.text_pooling == "eos"
    with pytest.raises(FileNotFoundError, match="hub_model"):
        resolve_encoder({"backend": "hub", "hub_model": str(tmp_path / "nope")}, tmp_path)


# ---------------------------------------------------------------------------- the stage


def _params(tmp_path: Path, section: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"world": {"seed": 0}, "encoders": section}))
    return path


def _model_params() -> dict:
    return {k: getattr(TINY, k) for k in ("image_size", "patch_size", "hidden_size")} | {
        "num_layers": 2,
        "num_heads": 2,
        "intermediate_size": 64,
        "projection_dim": 16,
    }


def test_stage_trains_and_reports(kb_root: Path, tmp_path: Path) -> None:
    section = {
        "backend": "demo",
        "hub_model": "openai/clip-vit-base-patch32",
        "threads": 1,
        "model": _model_params(),
        "train": {"seed": 0, "steps": 2, "batch_size": 6, "warmup_steps": 1, "background_bank": 4},
    }
    args = ["--dataset", str(kb_root), "--out", str(tmp_path / "enc")]
    args += ["--reports", str(tmp_path / "reports"), "--params", str(_params(tmp_path, section))]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "reports" / "encoders.json").read_text())
    assert report["backend"] == "demo" and report["steps"] == 2
    assert {"final_loss", "model_folder_mb"} <= set(report)
    assert not {"train_seconds", "images_per_second"} & set(report)  # quality only
    timing = json.loads((tmp_path / "reports/timings/encoders.json").read_text())
    assert timing["train_seconds"] >= 0 and timing["wall_s"] > 0
    assert set(report["retrieval"]["random_init"]["views"]) == {"top1", "top5"}
    assert ImageTextEncoder.load(tmp_path / "enc").image_size == TINY.image_size


def test_stage_hub_failure_is_one_clear_line(kb_root: Path, tmp_path: Path) -> None:
    section = {"backend": "hub", "hub_model": str(tmp_path / "no-such-clip")}
    args = ["--dataset", str(kb_root), "--out", str(tmp_path / "enc")]
    args += ["--reports", str(tmp_path / "reports"), "--params", str(_params(tmp_path, section))]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    assert "encoders: error:" in result.output and "encoders.hub_model" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "enc").exists()
