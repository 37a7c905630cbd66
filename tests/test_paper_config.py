"""The paper's configuration: mix-and-match towers, `profile: paper`, and its guards.

Towers are tiny and random, built from config objects and saved to temporary folders, then
read back with ``from_pretrained`` exactly as a hub id or a downloaded folder would be.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file
from test_encoders import TINY, tiny_clip  # noqa: F401  (tiny_clip: a CLIPModel folder)
from test_iier import tiny_config, tiny_encoder
from test_train import EVALUATE, run_evaluate, tiny_project  # noqa: F401  (a fixture)
from typer.testing import CliRunner

from stages import encoders as encoders_stage
from stages import train as train_stage
from vpmel.encoders.model import (
    MINILM_REF,
    ImageTextEncoder,
    TowersConfig,
    check_encoder_params,
    demo_encoder,
    resolve_encoder,
    resolve_reference,
    towers_config,
)
from vpmel.iier.model import IIER, IIERConfig
from vpmel.iier.training import resolve_config
from vpmel.params import apply_profile, load_params

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")
MODEL_KEYS = {f.name for f in dataclasses.fields(IIERConfig)}


@pytest.fixture(scope="module")
def towers(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(vision folder, text folder): a 12-layer CLIPVisionModel with its image processor and
    a 2-layer BertModel with its WordPiece tokenizer, each saved on its own."""
    root = tmp_path_factory.mktemp("towers")
    torch.manual_seed(0)
    enc = tiny_encoder(root / "tok")
    vision, text = root / "clip-vision", root / "bert"
    enc.vision_model.save_pretrained(vision)
    enc.image_processor.save_pretrained(vision)
    enc.text_model.save_pretrained(text)
    enc.tokenizer.save_pretrained(text)
    return vision, text


def _paper_params(root: Path, vision: Path, text: Path, **train: object) -> Path:
    """The repository's params.yaml with `profile: paper`; only the tower folders (tiny,
    offline), the batch (64 train mentions) and the run length differ from the paper."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["profile"] = "paper"
    paper = params["profiles"]["paper"]
    paper["encoders"]["towers"] |= {"vision": str(vision), "text": str(text)}
    small = {"batch_size": 32, "epochs": 1, "seeds": [0], "device": "cpu", "eval_batch": 8}
    paper["train"] |= small | {"eval_block_mb": 1, "save_every_steps": 0} | train
    params["evaluate"] = EVALUATE
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


# ---------------------------------------------------------------------------- towers


def test_vision_tower_beside_a_bert_text_tower(towers: tuple[Path, Path], tmp_path: Path) -> None:
    vision, text = towers
    torch.manual_seed(0)
    model = ImageTextEncoder.from_towers(TowersConfig(vision=str(vision), text=str(text)))
    assert model.text_pooling == "cls"  # BERT's own
    assert model.text_model.config.model_type == "bert"
    assert model.vision_model.config.num_hidden_layers == 12
    assert model.projection_dim == 512 and model.max_text_length == 40
    images = [Image.new("RGB", (30, 20), (200, 9, 9)), Image.new("RGB", (16, 40), (9, 9, 200))]
    texts = ["a red box", "blue things far away"]
    got_i, got_t = model.encode_images(images), model.encode_texts(texts)
    # the towers are the saved ones, weight for weight
    saved = load_file(text / "model.safetensors")
    state = model.text_model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in saved.items() if k in state)
    # the wrapper saves both towers (the text one is trained, so it is copied, not referenced)
    model.save(tmp_path / "enc")
    meta = json.loads((tmp_path / "enc/encoder.json").read_text())
    assert (meta["text_model"], meta["text_kind"], meta["text_pooling"]) == ("text", "bert", "cls")
    loaded = ImageTextEncoder.load(tmp_path / "enc")
    assert torch.allclose(loaded.encode_images(images), got_i, atol=1e-6)
    assert torch.allclose(loaded.encode_texts(texts), got_t, atol=1e-6)


def test_each_text_tower_brings_its_own_pooling(
    towers: tuple[Path, Path],
    tiny_clip: Path,  # noqa: F811
) -> None:
    vision, _ = towers
    minilm = resolve_reference(MINILM_REF)  # a sentence encoder: mean pooling
    clip_text = ImageTextEncoder.from_towers(TowersConfig(vision=str(vision), text=str(tiny_clip)))
    assert clip_text.text_pooling == "eos" and clip_text.text_model.config.model_type == (
        "clip_text_model"
    )
    assert clip_text.max_text_length == 40  # min(40, the tower's 64 positions)
    sentence = ImageTextEncoder.from_towers(TowersConfig(vision=str(vision), text=str(minilm)))
    assert sentence.text_pooling == "mean"
    # a full CLIP checkpoint serves as the vision tower too; the pooling can be set
    both = ImageTextEncoder.from_towers(
        TowersConfig(vision=str(tiny_clip), text=str(minilm), text_pooling="cls")
    )
    assert both.vision_model.config.num_hidden_layers == 3 and both.text_pooling == "cls"


def test_text_global_null_takes_the_towers_own_pooling(
    towers: tuple[Path, Path],
    tiny_clip: Path,  # noqa: F811
) -> None:
    vision, text = towers
    bert = ImageTextEncoder.from_towers(TowersConfig(vision=str(vision), text=str(text)))
    assert IIER(bert, tiny_config(text_global=None)).cfg.text_global == "cls"
    clip = ImageTextEncoder.from_hub(tiny_clip)
    assert IIER(clip, tiny_config(text_global=None, cls_layers=(1, 3))).cfg.text_global == "eos"


def test_resolve_encoder_builds_hub_towers_when_no_folder(
    towers: tuple[Path, Path], tmp_path: Path
) -> None:
    vision, text = towers
    params = {"backend": "hub", "towers": {"vision": str(vision), "text": str(text)}}
    model = resolve_encoder(params, tmp_path / "none")
    assert model.text_model.config.model_type == "bert"
    params["towers"]["text"] = str(tmp_path / "no-bert")
    with pytest.raises(FileNotFoundError, match=r"text tower .* set encoders\.towers\.text"):
        resolve_encoder(params, tmp_path / "none")


# ---------------------------------------------------------------------------- the profile


def test_paper_profile_sets_everything_appendix_a1_states() -> None:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    assert raw["profile"] == "demo"
    demo = apply_profile(raw)
    assert demo["train"] == raw["train"] and demo["encoders"] == raw["encoders"]
    paper = apply_profile(raw | {"profile": "paper"})
    towers = towers_config(paper["encoders"]["towers"])
    assert paper["encoders"]["backend"] == "hub"
    assert (towers.vision, towers.text) == ("openai/clip-vit-base-patch32", "bert-base-uncased")
    assert (towers.text_pooling, towers.max_text_length) == ("cls", 40)
    cfg = resolve_config(paper["train"])
    a1 = {
        "d_v": 96,
        "d_c": 96,
        "d_t": 512,
        "max_text_length": 40,
        "epochs": 20,
        "lr": 1e-5,
        "encoder_lr": 1e-5,
        "batch_size": 128,
        "train_vision": True,
        "train_text": True,
        "text_global": "cls",
        "cls_layers": (3, 10, 11, 12),
        "combination": "paper",
        "seeds": (0, 1, 2, 3, 4),
    }
    assert {k: getattr(cfg.model if k in MODEL_KEYS else cfg, k) for k in a1} == a1
    assert paper["lambda"] == 1.0
    check_encoder_params(paper["encoders"], paper["profile"])  # a consistent combination


def test_a_profile_merges_nested_keys_one_by_one() -> None:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["profiles"]["paper"]["train"] = {"model": {"d_t": 7}}
    merged = apply_profile(raw | {"profile": "paper"})["train"]
    assert merged["model"] == raw["train"]["model"] | {"d_t": 7}
    assert merged["epochs"] == raw["train"]["epochs"]
    raw["profiles"]["paper"]["train"] = {"d_t": 7}  # the old flat key: one line
    with pytest.raises(ValueError, match=r"^train.d_t moved to train.model.d_t: "):
        resolve_config(apply_profile(raw | {"profile": "paper"})["train"])


def test_paper_profile_trains_two_steps_and_evaluates(
    tiny_project: Path,  # noqa: F811
    towers: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    """`profile: paper` end to end on tiny towers: the encoders stage builds ViT + BERT, the
    train stage trains both towers and IIER for 2 steps (64 mentions / 32) with an exact dev
    evaluation, and the evaluate stage ranks dev and test against the whole KB."""
    root, (vision, text) = tiny_project, towers
    params = _paper_params(tmp_path, vision, text)
    runner = CliRunner()
    enc_dir = tmp_path / "models/encoder"
    args = ["--dataset", str(root / "data/dataset"), "--out", str(enc_dir)]
    args += ["--reports", str(tmp_path / "reports"), "--params", str(params)]
    result = runner.invoke(encoders_stage.app, args)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "reports/encoders.json").read_text())
    assert report["source"] == {"vision": str(vision), "text": str(text)}
    assert report["model"]["text_pooling"] == "cls"

    out = tmp_path / "models/iier"
    args = [
        "--vpwiki", str(root / "data/vpwiki"), "--dataset", str(root / "data/dataset"),
        "--answers", str(root / "data/answers/answers.parquet"), "--encoder-dir", str(enc_dir),
        "--out", str(out), "--state-dir", str(tmp_path / "state"),
        "--live-dir", str(tmp_path / "dvclive"), "--reports", str(tmp_path / "reports"),
        "--features", str(tmp_path / "no-features"), "--params", str(params),
    ]  # fmt: skip
    result = runner.invoke(train_stage.app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "reports/train.json").read_text())["per_seed"]["0"]
    assert summary["steps"] == 2 and summary["best_dev"]["n"] == 16
    meta = json.loads((out / "seed_0/iier.json").read_text())["config"]
    assert (meta["text_global"], meta["combination"], meta["d_t"]) == ("cls", "paper", 512)
    assert meta["train_vision"] and meta["train_text"]
    # both towers were trained (lr 1e-5, 2 steps: small but real changes)
    for tower in ("vision", "text"):
        before = load_file(enc_dir / tower / "model.safetensors")
        after = load_file(out / "seed_0/encoder" / tower / "model.safetensors")
        assert any(not torch.equal(before[k], after[k]) for k in before), tower

    run_evaluate(root, out, tmp_path / "eval", params)
    metrics = json.loads((tmp_path / "eval/reports/metrics.json").read_text())
    assert metrics["test"]["n"] == 16
    dev = {k: v for k, v in metrics["dev"].items() if k != "seeds"}
    assert dev == summary["best_dev"]  # the stage reproduces training's exact dev ranking


# ---------------------------------------------------------------------------- guards


def _one_line_error(result, stage: str) -> str:
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{stage}: error:"), result.output
    return lines[0]


def test_guard_cls_pooling_on_clip_text_tower(tiny_clip: Path) -> None:  # noqa: F811
    encoder = ImageTextEncoder.from_hub(tiny_clip)
    message = (
        "train.model.text_global: cls on CLIP's causal text tower gives a constant T^G; use eos"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        IIER(encoder, tiny_config(text_global="cls", cls_layers=(1, 3)))
    IIER(encoder, tiny_config(text_global="eos", cls_layers=(1, 3)))  # what the message says


def test_guard_through_the_train_stage_is_one_line(
    tiny_project: Path,  # noqa: F811
    tiny_clip: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The released code's CLIP text tower with the paper's [CLS] pooling: the stage stops
    at start (after loading the towers, before any data) with the one line."""
    root = tiny_project
    ImageTextEncoder.from_hub(tiny_clip).save(tmp_path / "clip")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["encoders"]["backend"] = "hub"
    params["train"]["model"] |= {"text_global": "cls", "cls_layers": [1, 3]}
    params["train"]["device"] = "cpu"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    args = [
        "--vpwiki", str(root / "data/vpwiki"), "--dataset", str(root / "data/dataset"),
        "--encoder-dir", str(tmp_path / "clip"), "--out", str(tmp_path / "iier"),
        "--state-dir", str(tmp_path / "state"), "--reports", str(tmp_path / "reports"),
        "--params", str(tmp_path / "params.yaml"),
    ]  # fmt: skip
    line = _one_line_error(CliRunner().invoke(train_stage.app, args), "train")
    assert "train.model.text_global: cls on CLIP's causal text tower gives a constant T^G" in line
    assert not (tmp_path / "state").exists()


def test_guard_cls_text_pooling_on_clip_text_tower(
    towers: tuple[Path, Path],
    tiny_clip: Path,  # noqa: F811
) -> None:
    cfg = TowersConfig(vision=str(towers[0]), text=str(tiny_clip), text_pooling="cls")
    with pytest.raises(ValueError, match="encoders.towers.text_pooling: cls on CLIP's causal"):
        ImageTextEncoder.from_towers(cfg)


def test_guard_cls_layers_the_tower_does_not_have(tiny_clip: Path) -> None:  # noqa: F811
    encoder = ImageTextEncoder.from_hub(tiny_clip)  # 3 vision layers
    message = (
        r"train.model.cls_layers \[3, 10, 11, 12\]: the vision tower has 3 layers, "
        r"so \[10, 11, 12\] do not exist; pick layers in 0..3"
    )
    with pytest.raises(ValueError, match=message):
        IIER(encoder, tiny_config(text_global="eos"))


def test_guard_paper_profile_on_the_demo_encoder(towers: tuple[Path, Path], tmp_path: Path) -> None:
    params = _paper_params(tmp_path, *towers)
    raw = yaml.safe_load(params.read_text())
    raw["profiles"]["paper"]["encoders"]["backend"] = "demo"
    raw["profiles"]["paper"]["encoders"]["towers"] = None
    params.write_text(yaml.safe_dump(raw))
    args = ["--dataset", str(tmp_path), "--out", str(tmp_path / "enc"), "--params", str(params)]
    result = CliRunner().invoke(encoders_stage.app, args + ["--reports", str(tmp_path / "r")])
    line = _one_line_error(result, "encoders")
    assert "profile: paper with encoders.backend: demo trains the paper IIER on the demo " in line
    assert "set profiles.paper.encoders.backend: hub (or profile: demo)" in line
    assert not (tmp_path / "enc").exists()


def test_guard_hub_params_on_a_demo_encoder_folder(tmp_path: Path) -> None:
    """`profile: paper` (backend hub) with models/encoder still the demo's: one line."""
    demo_encoder(TINY).save(tmp_path / "enc")
    with pytest.raises(ValueError, match="holds the demo encoder but encoders.backend is hub; run"):
        resolve_encoder({"backend": "hub", "towers": {"text": "bert"}}, tmp_path / "enc")
    assert resolve_encoder({"backend": "demo"}, tmp_path / "enc").text_source == MINILM_REF


def test_guard_hub_towers_under_the_demo_backend() -> None:
    params = {"backend": "demo", "towers": {"text": "bert-base-uncased"}}
    with pytest.raises(ValueError, match="encoders.towers is read by backend: hub only; set"):
        check_encoder_params(params)


def test_guard_the_old_train_profile_paper() -> None:
    section = yaml.safe_load((REPO / "params.yaml").read_text())["train"]
    with pytest.raises(ValueError, match="train.profile: paper is now the top-level `profile:"):
        resolve_config(section | {"profile": "paper"})


def test_guard_unknown_keys(tmp_path: Path) -> None:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    with pytest.raises(ValueError, match=r"profile 'papr' is not in profiles \['paper'\]"):
        apply_profile(raw | {"profile": "papr"})
    bad = raw | {"profile": "paper"}
    bad["profiles"] = {"paper": raw["profiles"]["paper"] | {"detective": {"mode": "lora"}}}
    with pytest.raises(ValueError, match=r"profiles.paper sets unknown sections \['detective'\]"):
        apply_profile(bad)
    with pytest.raises(ValueError, match=r"unknown encoders.towers params \['txt'\]"):
        towers_config({"vision": "v", "txt": "bert-base-uncased"})
    with pytest.raises(ValueError, match="encoders.towers.text_pooling must be null"):
        towers_config({"text_pooling": "max"})
    paper = apply_profile(raw | {"profile": "paper"})
    with pytest.raises(ValueError, match=r"unknown train params \['epoch'\]"):
        resolve_config(paper["train"] | {"epoch": 3})
    # and through a stage: one line, before anything is loaded
    raw["profile"] = "paper"
    raw["profiles"]["paper"]["encoders"]["towers"]["txt"] = "x"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    assert load_params("profile", tmp_path / "params.yaml") == "paper"
    args = ["--dataset", str(tmp_path), "--out", str(tmp_path / "enc")]
    args += ["--reports", str(tmp_path / "r"), "--params", str(tmp_path / "params.yaml")]
    line = _one_line_error(CliRunner().invoke(encoders_stage.app, args), "encoders")
    assert "unknown encoders.towers params ['txt']" in line
