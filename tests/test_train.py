"""The train and evaluate stages on a tiny dataset: resume, 2 processes, outputs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file
from test_iier import tiny_encoder

from stages import evaluate as evaluate_stage
from vpmel.data.schema import KB_SCHEMA, write_table
from vpmel.iier import training as train_stage

REPO = Path(__file__).resolve().parents[1]
WORDS = "red blue cat dog car tree house river moon star apple bread lamp chair boat".split()

TRAIN = {
    "seed": 0,
    "epochs": 2,
    "batch_size": 8,
    "lr": 1e-3,
    "encoder_lr": 1e-4,
    "warmup_steps": 1,
    "save_every_steps": 2,
    "eval_batch": 8,
    "eval_block_mb": 1,
    "device": "cpu",
    "model": {
        "d_v": 12,
        "d_t": 20,
        "d_c": 10,
        "text_global": "mean",
        "train_vision": True,
        "train_text": False,
    },
}
QUICK = {"lr": 1e-5, "batch_size": 128, "epochs": 20, "model": {"d_t": 512}}
ABLATIONS = {"quick": {"table": "loss", "label": "quick", "answers": "a.parquet", "train": QUICK}}
FROZEN = {"model": TRAIN["model"] | {"train_vision": False, "train_text": False}}
EVALUATE = {"mention_batch": 8, "entity_batch": 8, "block_mb": 1, "top_k": 20, "device": "cpu"}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A KB of 48 entities, 96 mentions (64 train / 16 dev / 16 test), a tiny encoder."""
    root = tmp_path_factory.mktemp("project")
    g = np.random.default_rng(0)
    dataset, vpwiki = root / "data/dataset", root / "data/vpwiki"
    colours = g.integers(0, 255, (48, 3))
    kb_rows = []
    for i in range(48):
        rel = f"images/kb/Q{i}.png"
        (dataset / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (24, 24), tuple(int(c) for c in colours[i])).save(dataset / rel)
        kb_rows.append(
            {
                "qid": f"Q{i}",
                "name": f"{WORDS[i % 15]} {WORDS[(i * 7) % 15]}",
                "type": "Misc",
                "description": " ".join(g.choice(WORDS, 6)),
                "images": [rel],
            }
        )
    write_table(pd.DataFrame(kb_rows), KB_SCHEMA, dataset / "kb.parquet")
    mentions = []
    for j in range(96):
        gold = j % 48
        split = "train" if j < 64 else ("dev" if j < 80 else "test")
        src, prompted = f"images/mentions/m{j}.png", f"{split}_img/mention_m{j}.png"
        canvas = Image.new("RGB", (32, 32), tuple(int(c) for c in g.integers(0, 255, 3)))
        canvas.paste(Image.open(dataset / kb_rows[gold]["images"][0]).resize((14, 14)), (9, 9))
        for folder, rel in ((dataset, src), (vpwiki, prompted)):
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            canvas.save(folder / rel)
        mentions.append(
            {
                "id": f"m{j}",
                "pair_id": f"p{j}",
                "sentence": f"a photo of {kb_rows[gold]['name']} near the {WORDS[j % 15]}",
                "mention": "",
                "qid": f"Q{gold}",
                "source_image": src,
                "prompted_image": prompted,
                "type": "Misc",
                "split": split,
            }
        )
    pd.DataFrame(mentions).to_parquet(vpwiki / "mentions.parquet", index=False)
    answers = pd.DataFrame(
        [
            {"id": f"m{j}", "raw": "x", "name": WORDS[j % 15], "type": "Misc"}
            for j in range(0, 96, 2)
        ]
        + [{"id": "m1", "raw": "", "name": None, "type": None}]  # a NIL answer
    )
    (root / "data/answers").mkdir(parents=True)
    answers.to_parquet(root / "data/answers/answers.parquet", index=False)
    torch.manual_seed(0)
    tiny_encoder(root / "tok", text_frozen=True).save(root / "models/encoder")
    write_params(root, TRAIN)
    return root


def write_params(root: Path, train: dict, lam: float = 1.0) -> Path:
    params = {
        "lambda": lam,
        "encoders": {"backend": "demo"},
        "train": train,
        "evaluate": EVALUATE,
    }
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def paths_in(root: Path, run: str) -> train_stage.Paths:
    base = root / run
    return train_stage.Paths(
        vpwiki=root / "data/vpwiki",
        dataset=root / "data/dataset",
        answers=root / "data/answers/answers.parquet",
        encoder=root / "models/encoder",
        out=base / "models/iier",
        state=base / "models/iier_state",
        live=base / "dvclive",
        reports=base / "reports",
        features=base / "no-features",
    )


def run_train(root: Path, run: str, on_step=None, **overrides) -> dict:
    cfg = train_stage.resolve_config(TRAIN | overrides)
    return train_stage.train(cfg, 1.0, {"backend": "demo"}, paths_in(root, run), on_step)


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "iier.safetensors") | load_file(
        folder / "encoder/vision/model.safetensors"
    )


def test_profiles_and_unknown_params() -> None:
    quick = train_stage.resolve_config(TRAIN | {"profile": "quick"}, None, ABLATIONS)
    assert (quick.lr, quick.batch_size, quick.epochs, quick.model.d_t) == (1e-5, 128, 20, 512)
    assert train_stage.resolve_config(TRAIN, "quick", ABLATIONS).batch_size == 128
    assert train_stage.resolve_config(TRAIN, None, ABLATIONS).batch_size == 8
    with pytest.raises(ValueError, match="unknown train params"):
        train_stage.resolve_config(TRAIN | {"bacth_size": 3})
    with pytest.raises(ValueError, match=r"profile 'huge' is demo or one of ablations \['quick'"):
        train_stage.resolve_config(TRAIN | {"profile": "huge"}, None, ABLATIONS)
    # an ablation's model keys are merged into train.model key by key
    l12 = ABLATIONS["quick"] | {"train": {"model": {"cls_layers": [12]}}}
    model = train_stage.resolve_config(TRAIN, "l12", {"l12": l12}).model
    assert (model.cls_layers, model.d_t, model.text_global) == ((12,), 20, "mean")
    with pytest.raises(ValueError, match=r"^train.profiles moved to the top-level ablations"):
        train_stage.resolve_config(TRAIN | {"profiles": {}})
    with pytest.raises(ValueError, match=r"unknown train.model params \['dt'\]"):
        train_stage.resolve_config(TRAIN | {"model": {"dt": 3}})
    # the old flat keys: one line saying where the key moved
    with pytest.raises(ValueError, match=r"^train.d_t moved to train.model.d_t: "):
        train_stage.resolve_config(TRAIN | {"d_t": 3})
    old = {"l12": l12 | {"train": {"cls_layers": [12]}}}
    with pytest.raises(ValueError, match=r"^ablations.l12.train.cls_layers moved to "):
        train_stage.resolve_config(TRAIN, None, old)


class Crash(RuntimeError):
    """A run dying after an optimizer step (the state saved so far stays)."""


def crash_at_5(step: int) -> None:
    if step == 5:
        raise Crash


def test_resume_after_crash_ends_like_an_uninterrupted_run(tiny_project: Path) -> None:
    root = tiny_project
    full = run_train(root, "full")
    assert full["steps"] == 16  # 2 epochs x 64 / 8
    assert full["mentions_with_answer"] == 48  # m1's NIL answer gives m_w = ""

    with pytest.raises(Crash):
        run_train(root, "crashed", on_step=crash_at_5)
    state = json.loads((root / "crashed/models/iier_state/state.json").read_text())
    assert (state["global_step"], state["epoch"], state["batch_in_epoch"]) == (4, 0, 4)
    seen: list[int] = []
    resumed = run_train(root, "crashed", on_step=seen.append)
    assert seen[0] == 5 and seen[-1] == 16  # continued from the saved step
    assert resumed["best_dev"] == full["best_dev"]
    for key in ("full", "crashed"):
        assert (root / key / "models/iier/iier.safetensors").is_file()
    a, b = weights(root / "full/models/iier"), weights(root / "crashed/models/iier")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    live_a = (root / "full/dvclive/plots/metrics/seed_0/train/L.tsv").read_text()
    assert live_a == (root / "crashed/dvclive/plots/metrics/seed_0/train/L.tsv").read_text()
    assert len(live_a.strip().splitlines()) == 3  # header + 2 epochs

    # stop_after_steps saves and exits; the run without it (and with other settings that
    # change nothing but time, memory or when to save) picks up from there
    assert run_train(root, "stopped", stop_after_steps=3) == {"stopped_at_step": 3}
    assert (
        json.loads((root / "stopped/models/iier_state/state.json").read_text())["global_step"] == 3
    )
    seen.clear()
    neutral = {"eval_block_mb": 2, "save_every_steps": 5, "cache_images": False, "device": "auto"}
    resumed = run_train(root, "stopped", on_step=seen.append, **neutral)
    assert seen[0] == 4 and resumed["best_dev"] == full["best_dev"]
    c = weights(root / "stopped/models/iier")
    assert all(torch.equal(a[k], c[k]) for k in a)
    # changed params do not resume a foreign state
    seen.clear()
    other = run_train(root, "stopped", on_step=seen.append, lr=5e-4)
    assert other["steps"] == 16 and seen[0] == 1


def test_gradient_accumulation_resumes_like_an_uninterrupted_run(tiny_project: Path) -> None:
    """accelerate's accumulate (2 micro-batches of 4 per step), killed after step 5 and
    resumed from step 4's state mid-epoch: the same weights as an uninterrupted run."""
    root, acc = tiny_project, {"grad_accumulation": 2, "batch_size": 4}
    full = run_train(root, "acc_full", **acc)
    assert (full["steps"], full["batches_per_process"]) == (16, [32])

    with pytest.raises(Crash):
        run_train(root, "acc_crashed", on_step=crash_at_5, **acc)
    state = json.loads((root / "acc_crashed/models/iier_state/state.json").read_text())
    assert (state["global_step"], state["batch_in_epoch"]) == (4, 8)
    resumed = run_train(root, "acc_crashed", **acc)
    assert resumed["best_dev"] == full["best_dev"]
    a, b = weights(root / "acc_full/models/iier"), weights(root / "acc_crashed/models/iier")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_epoch_loader_serves_the_batches_and_skips_without_touching_the_rng() -> None:
    rows = list(range(100, 164))
    batches = train_stage.epoch_batches(len(rows), 8, 0, 1, 1, 0, 2)
    torch.manual_seed(3)
    before = torch.get_rng_state()
    served = list(train_stage.epoch_loader(rows, batches, list))
    assert served == [[rows[j] for j in batch] for batch in batches]
    assert list(train_stage.epoch_loader(rows, batches, list, 3)) == served[3:]
    assert torch.equal(torch.get_rng_state(), before)


def run_evaluate(root: Path, model_dir: Path, out: Path, params: Path) -> None:
    """The evaluate stage on the checkpoint(s) in ``model_dir``, writing under ``out``."""
    evaluate_stage.main(
        model_dir=model_dir,
        vpwiki=root / "data/vpwiki",
        dataset=root / "data/dataset",
        answers=root / "data/answers/answers.parquet",
        out=out / "data/eval",
        reports=out / "reports",
        features=out / "no-features",
        timings=out / "timings",
        timing_name="evaluate",
        params_file=params,
    )


def test_two_processes_and_evaluate(tiny_project: Path) -> None:
    """`accelerate launch` with 2 CPU processes (gloo) trains; `evaluate` (1 process) on the
    saved best checkpoint reproduces the dev metrics the 2 processes computed in training."""
    root = tiny_project
    run = root / "two"
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no",
        "-m", "stages.train",
        "--vpwiki", str(root / "data/vpwiki"), "--dataset", str(root / "data/dataset"),
        "--answers", str(root / "data/answers/answers.parquet"),
        "--encoder-dir", str(root / "models/encoder"),
        "--out", str(run / "models/iier"), "--state-dir", str(run / "models/iier_state"),
        "--live-dir", str(run / "dvclive"), "--reports", str(run / "reports"),
        "--features", str(run / "no-features"), "--timings", str(run / "timings"),
        "--params", str(root / "params.yaml"),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run / "reports/train.json").read_text())
    assert summary["seeds"] == [0] and set(summary["per_seed"]) == {"0"}
    assert summary["best_dev_mean"] == summary["per_seed"]["0"]["best_dev"]
    assert (run / "models/iier/seed_0/iier.safetensors").is_file()
    timing = json.loads((run / "timings/train.json").read_text())
    assert timing["seed_0_train_time_s"] > 0 and "train_time_s" not in summary["per_seed"]["0"]
    summary = summary["per_seed"]["0"]
    assert summary["processes"] == 2
    assert summary["batches_per_process"] == [8, 8]  # 64 mentions / 8 / 2 x 2 epochs
    assert summary["steps"] == 8

    out = run / "eval"
    run_evaluate(root, run / "models/iier", out, root / "params.yaml")
    metrics = json.loads((out / "reports/metrics.json").read_text())
    assert {k: v for k, v in metrics["dev"].items() if k != "seeds"} == summary["best_dev"]
    subsets = {"dev_named", "dev_unnamed", "test_named", "test_unnamed"}
    assert set(metrics) == {"dev", "test", "dev_sd", "test_sd", *subsets}
    assert metrics["test"]["n"] == 16 and metrics["test"]["seeds"] == 1
    for key in ("dev", *subsets):
        assert set(metrics[key]) == {"H@1", "H@3", "H@5", "H@10", "H@20", "MRR", "MR", "n", "seeds"}
    assert all(v == 0 for v in metrics["test_sd"].values())  # one seed
    assert json.loads((out / "timings/evaluate.json").read_text())["pairs_per_s"] > 0
    # every sentence of the tiny project names its gold entity
    assert metrics["test_named"] == metrics["test"] and metrics["test_unnamed"]["n"] == 0
    top = pd.read_parquet(out / "data/eval/top20.parquet")
    assert list(top.columns) == [
        "id", "seed", "split", "qid", "named", "rank", "gold_score", "top_qids", "top_scores"
    ]  # fmt: skip
    assert top["named"].all()
    assert len(top) == 32 and all(len(q) == 20 for q in top["top_qids"])
    first = top.iloc[0]
    hit = (
        list(first["top_qids"]).index(first["qid"]) + 1
        if first["qid"] in first["top_qids"]
        else None
    )
    assert hit is None or hit == first["rank"]

    # the candidate stage with K = the KB size ranks exactly as exact ranking does
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["evaluate"] = EVALUATE | {"candidates": {"k": 48, "index": "Flat", "batch": 16}}
    (run / "params_candidates.yaml").write_text(yaml.safe_dump(params))
    two = run / "eval_candidates"
    run_evaluate(root, run / "models/iier", two, run / "params_candidates.yaml")
    assert json.loads((two / "reports/metrics.json").read_text()) == metrics
    report = json.loads((two / "reports/evaluate.json").read_text())
    assert report["candidates"]["recall"] == {"dev": 100.0, "test": 100.0}
    both = pd.read_parquet(two / "data/eval/top20.parquet")
    assert both["rank"].tolist() == top["rank"].tolist()
    assert both["top_qids"].map(list).tolist() == top["top_qids"].map(list).tolist()
    assert both["recall@48"].all()
    shutil.rmtree(run)


def test_inputs_answers_images_and_problems(tiny_project: Path) -> None:
    """m_w is the VLM answer (or "" when absent, NIL, or switched off); IIER* reads the
    unprompted source image; a mention with a missing image is dropped and reported, never
    fed a placeholder."""
    root = tiny_project
    from vpmel.data.schema import read_kb
    from vpmel.iier.data import InputConfig, load_inputs, read_answers

    enc = tiny_encoder(root / "tok2")
    mentions = pd.read_parquet(root / "data/vpwiki/mentions.parquet")
    mentions.loc[3, "prompted_image"] = "train_img/gone.png"
    mentions.loc[5, "qid"] = "Q999"  # not in the KB
    answers = read_answers(root / "data/answers/answers.parquet")
    assert answers["m0"] == "red Misc" and "m1" not in answers  # NIL -> no answer

    def build(**cfg):
        return load_inputs(
            mentions, read_kb(root / "data/dataset"), root / "data/vpwiki",
            root / "data/dataset", enc.tokenizer, enc.pixel_values, enc.image_size,
            InputConfig(**cfg), answers,
        )  # fmt: skip

    data = build()
    assert data.no_gold == ["m5"] and len(data.mentions_table) == 94
    assert "m3" not in set(data.mentions_table["id"]) and len(data.gold) == 94
    assert data.answered == 48  # the even ids (m3 and m5, both dropped, had none)
    tok = enc.tokenizer
    first = tok.decode(data.mentions.texts.input_ids[0], skip_special_tokens=False)
    assert first.startswith("[CLS] red misc [SEP] a photo of")
    second = tok.decode(data.mentions.texts.input_ids[1], skip_special_tokens=False)
    assert second.startswith("[CLS] [SEP] a photo of")  # m1: NIL answer -> m_w = ""
    batch = data.mentions.inputs([0, 3])
    assert batch["pixel_values"].shape == (2, 3, 16, 16)
    assert data.image_problems()["mentions"] == {"m3": "missing_image"}
    assert data.mentions.images.paths[3] != "train_img/gone.png"
    assert not build(use_answers=False).answered
    source = build(use_prompted_image=False)
    assert source.mentions.images.root == root / "data/dataset"
    assert source.mentions.images.paths[0] == "images/mentions/m0.png"


def test_feature_store_serves_frozen_inputs_and_never_changes_them(tiny_project: Path) -> None:
    """The features stage stores every frozen-tower output once; a run reads them from the
    store (none recomputed) and gets the very tensors the towers give; an input the store
    lacks is computed; a store made with another encoder is ignored; seeds share it."""
    from stages import features as features_stage
    from vpmel.data.schema import read_kb
    from vpmel.iier.data import InputConfig, load_inputs, read_answers
    from vpmel.iier.features import FeatureStore, encoder_id
    from vpmel.iier.model import IIER

    root = tiny_project
    answers = root / "data/answers/answers.parquet"
    features_stage.main(
        vpwiki=root / "data/vpwiki", dataset=root / "data/dataset", answers=[answers],
        encoder_dir=root / "models/encoder", out=root / "features",
        timings=root / "timings", batch_size=8, params_file=root / "params.yaml",
    )  # fmt: skip
    assert json.loads((root / "timings/features.json").read_text())["texts"] > 0
    store = FeatureStore.load(root / "features", encoder_id(root / "models/encoder"))
    assert store is not None and FeatureStore.load(root / "features", "another") is None

    frozen = train_stage.resolve_config(TRAIN | FROZEN)
    from vpmel.encoders.model import ImageTextEncoder

    model = IIER(ImageTextEncoder.load(root / "models/encoder"), frozen.model).eval()
    mentions = pd.read_parquet(root / "data/vpwiki/mentions.parquet")

    def inputs(mentions: pd.DataFrame, use_answers: bool = True):
        enc = model.encoder
        return load_inputs(
            mentions, read_kb(root / "data/dataset"), root / "data/vpwiki",
            root / "data/dataset", enc.tokenizer, enc.pixel_values, enc.image_size,
            InputConfig(use_answers, True, frozen.model.max_text_length), read_answers(answers),
        )  # fmt: skip

    stored, computed = inputs(mentions), inputs(mentions)
    assert stored.cache_frozen(model, 8, store) == {"text": [144, 0], "vision": [144, 0]}
    assert computed.cache_frozen(model, 8, None) == {"text": [0, 144], "vision": [0, 144]}
    for a, b in ((stored.mentions, computed.mentions), (stored.entities, computed.entities)):
        assert torch.allclose(a.texts.hidden, b.texts.hidden, atol=1e-5)
        assert torch.allclose(a.images.vision_cls, b.images.vision_cls, atol=1e-5)
        assert torch.allclose(a.images.vision_last, b.images.vision_last, atol=1e-5)
    changed = mentions.copy()
    changed.loc[0, "sentence"] = "a sentence the store never saw"
    assert inputs(changed).cache_frozen(model, 8, store)["text"] == [143, 1]
    assert inputs(mentions, use_answers=False).cache_frozen(model, 8, store)["text"] == [144, 0]

    # two seeds from the store: one folder each, mean and per-seed summaries
    paths = paths_in(root, "seeds")
    paths = train_stage.dataclasses.replace(paths, features=root / "features")
    cfg = train_stage.resolve_config(TRAIN | FROZEN | {"seeds": [3, 4], "eval_every": 2})
    summary = train_stage.train_seeds(cfg, 1.0, {"backend": "demo"}, paths)
    assert summary["seeds"] == [3, 4]
    assert sorted(p.name for p in paths.out.iterdir()) == ["seed_3", "seed_4"]
    dev = [summary["per_seed"][s]["best_dev"]["MRR"] for s in ("3", "4")]
    assert summary["best_dev_mean"]["MRR"] == pytest.approx(sum(dev) / 2, abs=1e-3)
    assert summary["per_seed"]["3"]["best_epoch"] == 1  # eval_every 2: only the last epoch
    live = paths.live / "plots/metrics"
    assert (live / "seed_3/dev/MRR.tsv").is_file() and (live / "seed_4/train/L.tsv").is_file()
