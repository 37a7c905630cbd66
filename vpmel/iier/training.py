"""IIER training with in-batch contrastive learning (paper §5.5), via accelerate.

The library behind the ``train`` and ``ablate`` stages (``stages/train.py`` is their thin
command line). :class:`TrainConfig` is the ``train`` params after the profile is applied;
:func:`train_seeds` trains one IIER per seed, :func:`train` one seed.

``batch_size`` is per process: each process's batch is its own pool of in-batch negatives,
with the batch's distinct gold entities as columns. A frozen tower (``train_text`` /
``train_vision`` false; the demo freezes both and trains IIER's heads and units) runs once
over every input and its outputs are cached.

Writes the checkpoint with the best dev MRR (safetensors), dvclive curves (per-epoch loss
and dev H@k/MRR) and returns the summary for ``reports/train.json``. Training state (safetensors
+ JSON, written atomically every ``save_every_steps`` optimizer steps and after each epoch):
killing the run and starting it again resumes from the last save and ends exactly where an
uninterrupted run ends. The state is only resumed when its :func:`fingerprint` (params,
number of processes, data and encoder files) matches; otherwise training starts afresh.

accelerate does the process handling: ``Accelerator(gradient_accumulation_steps=...)`` with
``accelerator.accumulate`` (no gradient sync between micro-batches), a torch ``DataLoader``
over the epoch's batches and ``skip_first_batches`` to resume mid-epoch (see
:func:`epoch_loader` for why the batches are still dealt by ``epoch_batches``). The state is
ours, not ``accelerator.save_state``: that writes pickles in place, so a kill in the middle
of a save leaves a state that neither loads nor can be told from a good one; ours writes
the weights first and then swaps in ``state.json`` naming them (``os.replace``), so every
kill leaves the previous or the new state (tests/test_kill_resume.py kills it mid-write).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from accelerate import Accelerator, PartialState
from accelerate.data_loader import skip_first_batches
from accelerate.utils import set_seed
from rich.console import Console
from rich.progress import Progress
from safetensors.torch import load_file, save_file
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader

from vpmel.data.schema import read_kb
from vpmel.encoders.model import resolve_encoder
from vpmel.iier.data import (
    ContrastiveCollator,
    IIERInputs,
    InputConfig,
    epoch_batches,
    load_inputs,
    read_answers,
    steps_per_epoch,
)
from vpmel.iier.features import FeatureStore, encoder_id
from vpmel.iier.model import IIER, LOSS_TERMS, IIERConfig, iier_loss
from vpmel.iier.retrieval import RankConfig, kb_ranker, rank_rows
from vpmel.metrics import ranking_metrics
from vpmel.params import PAPER_PROFILE, deep_merge, from_params, read_ablations
from vpmel.schedules import linear_decay

console = Console(stderr=True)

MIXED_PRECISION = ("no", "bf16", "fp16")
STATE_FILE = "state.json"
TIMING_KEYS = ("train_time_s", "frozen_tower_cache_s")  # per-seed wall times
BEST_DIR = "best"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The ``train`` params after applying the profile (see params.yaml for the meaning):
    how to train, and ``model``, the IIER to train (``train.model``, read straight into
    :class:`vpmel.iier.model.IIERConfig`, which holds the model's defaults)."""

    seed: int = 0  # this run's seed (the stage runs one per entry of ``seeds``)
    seeds: tuple[int, ...] = (0,)
    epochs: int = 8
    eval_every: int = 1  # epochs between dev evaluations (the last epoch always has one)
    batch_size: int = 64
    lr: float = 3e-4
    encoder_lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_steps: int = 10
    grad_accumulation: int = 1
    max_grad_norm: float | None = 1.0
    mixed_precision: str = "no"
    device: str = "auto"
    save_every_steps: int = 50
    stop_after_steps: int | None = None
    eval_batch: int = 64
    eval_block_mb: float = 256.0
    cache_images: bool = True
    use_answers: bool = True
    use_prompted_image: bool = True
    loss_terms: tuple[str, ...] = LOSS_TERMS  # L_X in L = L_O + λ Σ L_X (Table 9)
    model: IIERConfig = dataclasses.field(default_factory=IIERConfig)

    def __post_init__(self) -> None:
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"train.mixed_precision must be one of {MIXED_PRECISION}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError("train.device must be auto, cpu or cuda")
        if self.batch_size < 2 or self.grad_accumulation < 1 or self.epochs < 1:
            raise ValueError("train.batch_size >= 2, grad_accumulation >= 1, epochs >= 1")
        if self.eval_every < 1:
            raise ValueError("train.eval_every must be >= 1 (epochs between dev evaluations)")
        seeds = tuple(int(x) for x in self.seeds)
        if not seeds or len(set(seeds)) != len(seeds):
            raise ValueError(f"train.seeds must be a non-empty list of distinct ints, got {seeds}")
        object.__setattr__(self, "seeds", seeds)
        object.__setattr__(self, "loss_terms", tuple(str(x) for x in self.loss_terms))
        if set(self.loss_terms) - set(LOSS_TERMS):
            raise ValueError(f"train.loss_terms must be a subset of {list(LOSS_TERMS)}")

    def inputs(self) -> InputConfig:
        return InputConfig(self.use_answers, self.use_prompted_image, self.model.max_text_length)


def resolve_config(
    section: dict[str, Any], profile: str | None = None, ablations: dict[str, Any] | None = None
) -> TrainConfig:
    """``train`` params → :class:`TrainConfig`: the section's keys, then, when ``profile``
    (else ``train.profile``) names an entry of the top-level ``ablations`` registry, that
    entry's ``train`` merged in key by key (``model`` too: ``model: {cls_layers: [12]}``
    changes only that key)."""
    section = dict(section)
    if "profiles" in section:
        raise ValueError(
            "train.profiles moved to the top-level ablations registry (name: {table, label, "
            "answers, train}; see params.yaml)"
        )
    registry = read_ablations(ablations)
    chosen = profile or section.pop("profile", None) or "demo"
    section.pop("profile", None)
    if chosen not in registry and chosen != "demo":
        if chosen == PAPER_PROFILE:
            raise ValueError(
                "train.profile: paper is now the top-level `profile: paper` (it sets the towers "
                "too); set profile: paper and train.profile back to demo"
            )
        raise ValueError(f"train.profile {chosen!r} is demo or one of ablations {list(registry)}")
    for where, keys in [("train", section)] + [
        (f"ablations.{name}.train", entry.train) for name, entry in registry.items()
    ]:
        _refuse_flat_model_keys(keys, where)
    overrides = registry[chosen].train if chosen in registry else {}
    return from_params(TrainConfig, deep_merge(section, overrides), "train")


def _refuse_flat_model_keys(section: dict[str, Any], where: str) -> None:
    """The model's keys (``d_t``, ``cls_layers``, ...) moved from ``train`` to ``train.model``."""
    moved = sorted(set(section) & {f.name for f in dataclasses.fields(IIERConfig)})
    if moved:
        raise ValueError(
            f"{where}.{moved[0]} moved to {where}.model.{moved[0]}: the model's keys ({moved}) "
            "live under model: (vpmel.iier.model.IIERConfig), in profiles and ablations too"
        )


@dataclasses.dataclass(frozen=True)
class Paths:
    vpwiki: Path = Path("data/vpwiki")
    dataset: Path = Path("data/dataset")
    answers: Path = Path("data/answers/answers.parquet")
    encoder: Path = Path("models/encoder")
    out: Path = Path("models/iier")
    state: Path = Path("models/iier_state")
    live: Path = Path("dvclive")
    reports: Path = Path("reports")
    features: Path = Path("data/features")


# ------------------------------------------------------------------------------ state


#: train params that change neither the weights nor the history of a run, so a state saved
#: under other values resumes: the other seeds (adding one resumes this one), when to stop
#: or save, the dev scoring's memory bound, image caching, and ``device`` (the device it
#: resolves to is fingerprinted instead: ``auto`` and ``cpu`` on a machine without a GPU are
#: one run). ``eval_batch`` stays in: it also batches the frozen towers' outputs computed in
#: the run (inputs the feature store lacks), and other batch shapes give other float bits.
NOT_FINGERPRINTED = (
    "seeds",
    "stop_after_steps",
    "save_every_steps",
    "eval_block_mb",
    "device",
    "cache_images",
)


def fingerprint(
    cfg: TrainConfig, lam: float, num_processes: int, files: list[Path], device: str = "cpu"
) -> str:
    """What must match for a saved state to be resumed: every setting that changes the
    result (not :data:`NOT_FINGERPRINTED`), λ, the number of processes, the type of device
    (``cpu``, ``cuda``) and the input files."""
    h = hashlib.sha256()
    run = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in NOT_FINGERPRINTED}
    h.update(json.dumps([run, lam, num_processes, device], sort_keys=True).encode())
    for path in files:
        for f in sorted(p for p in ([path] if path.is_file() else path.rglob("*")) if p.is_file()):
            h.update(str(f.relative_to(path) if f != path else f.name).encode())
            h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


def save_state(
    folder: Path,
    meta: dict[str, Any],
    model: IIER,
    optimizer: torch.optim.Optimizer,
    scheduler: LambdaLR,
    accelerator: Accelerator,
) -> None:
    """Trainable weights, AdamW moments and RNG in safetensors; the rest in JSON (written
    last, atomically, naming its weights file)."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {
        f"model.{n}": p.detach().cpu().contiguous()
        for n, p in model.named_parameters()
        if p.requires_grad
    }
    opt = optimizer.state_dict()
    for idx, values in opt["state"].items():
        for key, value in values.items():
            tensors[f"optim.{idx}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    name = f"step-{meta['global_step']:07d}-{meta['epoch']:03d}-{meta['batch_in_epoch']:05d}"
    save_file(tensors, folder / f"{name}.safetensors")
    meta = meta | {
        "weights": f"{name}.safetensors",
        "param_groups": opt["param_groups"],
        "scheduler": scheduler.state_dict(),
        "scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
    }
    tmp = folder / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(meta, indent=1) + "\n")
    os.replace(tmp, folder / STATE_FILE)
    for old in folder.glob("step-*.safetensors"):
        if old.name != meta["weights"]:
            old.unlink()


def load_state(
    folder: Path,
    model: IIER,
    optimizer: torch.optim.Optimizer,
    scheduler: LambdaLR,
    accelerator: Accelerator,
) -> dict[str, Any]:
    meta = json.loads((folder / STATE_FILE).read_text())
    tensors = load_file(folder / meta["weights"])
    params = dict(model.named_parameters())
    with torch.no_grad():
        for key, value in tensors.items():
            if key.startswith("model."):
                params[key[len("model.") :]].copy_(value)
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    scheduler.load_state_dict(meta["scheduler"])
    if meta.get("scaler") and accelerator.scaler is not None:
        accelerator.scaler.load_state_dict(meta["scaler"])
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    return meta


# ------------------------------------------------------------------------------ training


def build_optimizer(model: IIER, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; the towers at ``encoder_lr``, IIER's heads and units at ``lr``; no weight
    decay on biases and LayerNorm weights."""
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault((name.startswith("encoder."), p.ndim >= 2), []).append(p)
    return torch.optim.AdamW(
        [
            {
                "params": ps,
                "lr": cfg.encoder_lr if tower else cfg.lr,
                "weight_decay": cfg.weight_decay if decay else 0.0,
            }
            for (tower, decay), ps in sorted(groups.items())
        ]
    )


def _to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) for k, v in batch.items()}


def evaluate_dev(
    model: IIER, data: IIERInputs, cfg: TrainConfig, accelerator: Accelerator
) -> dict[str, float]:
    """Rank the dev mentions against the whole KB (sharded over the processes)."""
    rank_cfg = RankConfig(cfg.eval_batch, cfg.eval_batch, cfg.eval_block_mb, 20)
    collective = accelerator if accelerator.num_processes > 1 else None
    with torch.no_grad():
        ranker = kb_ranker(model, data.entities, rank_cfg, collective)
        ranking = rank_rows(ranker, data.mentions, data.rows("dev"), data.gold, rank_cfg)
    return ranking_metrics(ranking.ranks)


def train(
    cfg: TrainConfig,
    lam: float,
    encoder_params: dict[str, Any],
    paths: Paths = Paths(),
    on_step: Callable[[int], None] | None = None,
    live_histories: dict[int, list[dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """Train IIER with ``cfg.seed`` (resuming a matching saved state); returns the summary
    it reports. ``live_histories`` (seed → per-epoch records) collects the curves of the
    seeds trained so far, which are rewritten to ``paths.live`` with this one's."""
    live_histories = {} if live_histories is None else live_histories
    accelerator = Accelerator(
        cpu=cfg.device == "cpu",
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.grad_accumulation,
    )
    main = accelerator.is_main_process
    say = console.print if main else (lambda *a, **k: None)
    set_seed(cfg.seed)
    encoder = resolve_encoder(encoder_params, paths.encoder)
    model = IIER(encoder, cfg.model)
    data = _load_data(paths, cfg, model)
    say(
        f"train: {accelerator.num_processes} process(es) on {accelerator.device}; "
        f"{len(data.kb_table)} entities, mentions "
        + ", ".join(f"{s} {len(data.rows(s))}" for s in ("train", "dev", "test"))
        + f"; VLM answers for {data.answered}; gold not in KB: {len(data.no_gold)}"
    )
    model.to(accelerator.device)
    tic = time.perf_counter()
    if model.text_frozen or model.vision_frozen:
        store = FeatureStore.load(paths.features, encoder_id(paths.encoder))
        cached = data.cache_frozen(model, cfg.eval_batch, store)
        say(
            "train: frozen tower outputs "
            + ", ".join(
                f"{k}: {a} from {paths.features}, {b} computed" for k, (a, b) in cached.items()
            )
            + f" ({time.perf_counter() - tic:.0f} s)"
        )
    cache_s = time.perf_counter() - tic
    train_rows = data.rows("train")
    steps = steps_per_epoch(
        len(train_rows), cfg.batch_size, accelerator.num_processes, cfg.grad_accumulation
    )
    if steps < 1:
        raise ValueError(
            f"{len(train_rows)} training mentions give no full batch of {cfg.batch_size} "
            f"per process ({accelerator.num_processes} processes)"
        )
    total = steps * cfg.epochs
    optimizer = build_optimizer(model, cfg)
    scheduler = LambdaLR(optimizer, linear_decay(cfg.warmup_steps, total))
    ddp_model, optimizer = accelerator.prepare(model, optimizer)
    collate = ContrastiveCollator(data.mentions, data.entities, data.gold)

    files = [paths.vpwiki / "mentions.parquet", paths.dataset / "kb.parquet", paths.encoder]
    if cfg.use_answers and paths.answers.is_file():
        files.append(paths.answers)
    print_ = fingerprint(cfg, lam, accelerator.num_processes, files, accelerator.device.type)
    meta = {
        "fingerprint": print_,
        "epoch": 0,
        "batch_in_epoch": 0,
        "global_step": 0,
        "loss_sums": [0.0] * 5,
        "micro_batches": 0,
        "micro_batches_total": 0,
        "history": [],
        "best": None,
        "elapsed_s": 0.0,
    }
    state_file = paths.state / STATE_FILE
    if state_file.is_file() and json.loads(state_file.read_text()).get("fingerprint") == print_:
        meta = load_state(paths.state, model, optimizer, scheduler, accelerator)
        say(f"train: resuming at epoch {meta['epoch']}, step {meta['global_step']}")
    elif main and paths.state.exists():
        shutil.rmtree(paths.state)
    accelerator.wait_for_everyone()

    started = time.perf_counter() - meta["elapsed_s"]

    def checkpoint() -> None:
        meta["elapsed_s"] = time.perf_counter() - started
        if main:
            save_state(paths.state, meta, model, optimizer, scheduler, accelerator)
        accelerator.wait_for_everyone()

    with Progress(console=console, disable=not main) as progress:
        task = progress.add_task("train", total=total, completed=meta["global_step"])
        while meta["epoch"] < cfg.epochs:
            epoch = meta["epoch"]
            batches = epoch_batches(
                len(train_rows),
                cfg.batch_size,
                cfg.seed,
                epoch,
                accelerator.num_processes,
                accelerator.process_index,
                cfg.grad_accumulation,
            )
            model.train()
            loader = epoch_loader(train_rows, batches, collate, meta["batch_in_epoch"])
            for i, batch in enumerate(loader, start=meta["batch_in_epoch"]):
                with accelerator.accumulate(ddp_model):  # no_sync until the last micro-batch
                    scores = ddp_model(
                        _to(batch["mention"], accelerator.device),
                        _to(batch["entity"], accelerator.device),
                    )
                    targets = batch["targets"].to(accelerator.device)
                    loss = iier_loss(scores, targets, lam, cfg.loss_terms)
                    accelerator.backward(loss.total)  # divided by grad_accumulation there
                meta["loss_sums"] = [
                    a + float(b.detach()) for a, b in zip(meta["loss_sums"], loss, strict=True)
                ]
                meta["micro_batches"] += 1
                meta["micro_batches_total"] += 1
                meta["batch_in_epoch"] = i + 1
                if not accelerator.sync_gradients:
                    continue
                if cfg.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                meta["global_step"] += 1
                progress.update(
                    task,
                    advance=1,
                    description=f"epoch {epoch} loss {float(loss.total.detach()):.3f}",
                )
                step = meta["global_step"]
                stop = cfg.stop_after_steps is not None and step >= cfg.stop_after_steps
                if stop or (cfg.save_every_steps and step % cfg.save_every_steps == 0):
                    checkpoint()
                if on_step is not None:
                    on_step(step)
                if stop:
                    say(f"train: stopping after step {step} (train.stop_after_steps); state saved")
                    return {"stopped_at_step": step}
            meta["history"].append(_epoch_record(meta, model, data, cfg, accelerator, epoch))
            if meta["history"][-1]["dev"] is not None and _better(
                meta["history"][-1], meta["best"]
            ):
                meta["best"] = meta["history"][-1]
                if main:
                    _save_atomically(model, paths.state / BEST_DIR, _extra(cfg, lam, meta))
            dev = meta["history"][-1]["dev"]
            say(
                f"train: seed {cfg.seed} epoch {epoch} loss "
                f"{meta['history'][-1]['loss']['L']:.4f}"
                + (
                    " dev " + " ".join(f"{k} {v:.2f}" for k, v in dev.items() if k != "n")
                    if dev
                    else ""
                )
            )
            meta |= {"epoch": epoch + 1, "batch_in_epoch": 0, "loss_sums": [0.0] * 5}
            meta["micro_batches"] = 0
            checkpoint()
            if main:
                _write_live(paths.live, live_histories | {cfg.seed: meta["history"]})

    meta["cache_s"] = round(cache_s, 1)
    live_histories[cfg.seed] = meta["history"]
    summary = _finish(meta, cfg, lam, paths, data, accelerator, live_histories)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return summary


def epoch_loader(
    rows: list[int], batches: list[list[int]], collate: ContrastiveCollator, skip: int = 0
) -> DataLoader:
    """One epoch's training batches (``batches``: this process's lists of positions in
    ``rows``, from :func:`vpmel.iier.data.epoch_batches`) collated by ``collate``, the first
    ``skip`` left out (a run resumed mid-epoch, ``accelerate.skip_first_batches``).

    The loader is not ``accelerator.prepare``-d: that would deal the batches to the processes
    itself (padding uneven shards with repeated batches) and re-seed the random generators at
    each epoch, so the mentions each process sees and the random stream would no longer be
    ours; ``epoch_batches`` already gives each process its own batches. Its own generator
    keeps the DataLoader from drawing from torch's global one (a resumed run would otherwise
    draw once more than an uninterrupted one)."""
    generator = torch.Generator()
    loader = DataLoader(rows, batch_sampler=batches, collate_fn=collate, generator=generator)
    return skip_first_batches(loader, skip) if skip else loader


def _load_data(paths: Paths, cfg: TrainConfig, model: IIER) -> IIERInputs:
    mentions_file = paths.vpwiki / "mentions.parquet"
    if not mentions_file.is_file():
        raise FileNotFoundError(f"{mentions_file}: run the split stage first")
    answers = read_answers(paths.answers) if cfg.use_answers else None
    enc = model.encoder
    return load_inputs(
        pd.read_parquet(mentions_file),
        read_kb(paths.dataset),
        paths.vpwiki,
        paths.dataset,
        enc.tokenizer,
        enc.pixel_values,
        enc.image_size,
        cfg.inputs(),
        answers,
        cfg.cache_images,
    )


def _epoch_record(
    meta: dict[str, Any],
    model: IIER,
    data: IIERInputs,
    cfg: TrainConfig,
    accelerator: Accelerator,
    epoch: int,
) -> dict[str, Any]:
    sums = torch.tensor(meta["loss_sums"] + [meta["micro_batches"]], dtype=torch.float64)
    if accelerator.num_processes > 1:
        sums = accelerator.reduce(sums.to(accelerator.device), "sum").cpu()
    n = max(1.0, float(sums[-1]))
    loss = {
        k: float(v) / n
        for k, v in zip(("L", "L_O", "L_V", "L_T", "L_C"), sums[:-1].tolist(), strict=True)
    }
    due = (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs
    dev = evaluate_dev(model, data, cfg, accelerator) if due else None
    return {"epoch": epoch, "loss": loss, "dev": dev}


def _better(record: dict[str, Any], best: dict[str, Any] | None) -> bool:
    """Higher dev MRR wins (ties keep the earlier epoch); without dev mentions the latest
    epoch is kept."""
    if best is None or record["dev"]["n"] == 0:
        return True
    return record["dev"]["MRR"] > best["dev"]["MRR"]


def _extra(cfg: TrainConfig, lam: float, meta: dict[str, Any]) -> dict[str, Any]:
    return {
        "inputs": dataclasses.asdict(cfg.inputs()),
        "lambda": lam,
        "epoch": meta["epoch"],
        "global_step": meta["global_step"],
    }


def _save_atomically(model: IIER, folder: Path, extra: dict[str, Any]) -> None:
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save(tmp, extra)
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)


def _finish(
    meta: dict[str, Any],
    cfg: TrainConfig,
    lam: float,
    paths: Paths,
    data: IIERInputs,
    accelerator: Accelerator,
    live_histories: dict[int, list[dict[str, Any]]],
) -> dict[str, Any]:
    counts = torch.tensor([meta["micro_batches_total"]], device=accelerator.device)
    per_process = (
        accelerator.gather(counts).cpu().tolist()
        if accelerator.num_processes > 1
        else [int(counts[0])]
    )
    summary = {
        "seed": cfg.seed,
        "processes": accelerator.num_processes,
        "batches_per_process": per_process,
        "epochs": cfg.epochs,
        "steps": meta["global_step"],
        "best_epoch": meta["best"]["epoch"],
        "best_dev": meta["best"]["dev"],
        "train_time_s": round(meta["elapsed_s"], 1),  # the training loop and dev evaluations
        "frozen_tower_cache_s": meta["cache_s"],
        "lambda": lam,
        "mentions_with_answer": data.answered,
        "gold_not_in_kb": data.no_gold,
        "image_problems": data.image_problems(),
    }
    if not accelerator.is_main_process:
        return summary
    if paths.out.exists():
        shutil.rmtree(paths.out)
    shutil.copytree(paths.state / BEST_DIR, paths.out)
    _write_live(paths.live, live_histories)  # also when nothing was left to train
    console.print(
        f"train: seed {cfg.seed}: best dev MRR {summary['best_dev']['MRR']:.2f} at epoch "
        f"{summary['best_epoch']}; {summary['train_time_s']} s -> {paths.out}"
    )
    return summary


def _write_live(folder: Path, histories: dict[int, list[dict[str, Any]]]) -> None:
    """Per-epoch curves of every seed with dvclive (``seed_<s>/train/L``,
    ``seed_<s>/dev/MRR``, ...), rebuilt from the states' histories (so a resumed run's
    curves are exactly an uninterrupted run's). Epochs without a dev evaluation
    (``eval_every``) have no dev point."""
    from dvclive import Live

    epochs = max((len(h) for h in histories.values()), default=0)
    with Live(str(folder), resume=False, save_dvc_exp=False, dvcyaml=None) as live:
        for epoch in range(epochs):
            for seed, history in sorted(histories.items()):
                if epoch >= len(history):
                    continue
                record = history[epoch]
                for key, value in record["loss"].items():
                    live.log_metric(f"seed_{seed}/train/{key}", value)
                for key, value in (record["dev"] or {}).items():
                    if key != "n":
                        live.log_metric(f"seed_{seed}/dev/{key}", value)
            live.next_step()


def train_seeds(
    cfg: TrainConfig,
    lam: float,
    encoder: dict[str, Any],
    paths: Paths,
    timing: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Train one IIER per entry of ``cfg.seeds``: seed s writes ``<out>/seed_<s>/`` and
    keeps its resumable state in ``<state>/seed_<s>/``; all seeds' curves go to one
    dvclive folder. Returns the summary for ``train.json`` (None when a run stopped early);
    the runs' wall times go to ``timing``, not to the summary."""
    timing = {} if timing is None else timing
    histories: dict[int, list[dict[str, Any]]] = {}
    runs = {}
    for seed in cfg.seeds:
        run_paths = dataclasses.replace(
            paths, out=paths.out / f"seed_{seed}", state=paths.state / f"seed_{seed}"
        )
        run = train(dataclasses.replace(cfg, seed=seed), lam, encoder, run_paths, None, histories)
        if "stopped_at_step" in run:
            return None
        for key in TIMING_KEYS:
            timing[f"seed_{seed}_{key}"] = run.pop(key)
        runs[seed] = run
    if PartialState().is_main_process:
        keep = {f"seed_{s}" for s in runs}
        for entry in paths.out.iterdir():  # other seeds, or an older single checkpoint
            if entry.name not in keep:
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    dev = [r["best_dev"] for r in runs.values()]
    return {
        "seeds": list(runs),
        "best_dev_mean": {k: round(sum(d[k] for d in dev) / len(dev), 4) for k in dev[0]},
        "per_seed": {str(s): r for s, r in runs.items()},
    }
