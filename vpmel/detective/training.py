"""Instruction tuning of Detective-VLM with accelerate: full or LoRA (peft).

The objective is the paper's (§5.2): cross-entropy of the answer ``"{name} {type}"`` given
the instruction — the loss covers only the answer tokens and the end-of-sequence token,
never the instruction, the image slots or padding.

Batches are padded on the left, so every answer ends the sequence; models whose forward
takes ``logits_to_keep`` (LLaVA and most transformers-native VLMs) then compute logits only
for the answer span instead of the whole vocabulary at every position. Any other model gets
``labels`` and its own loss.

Runs unchanged on one CPU process or under ``accelerate launch`` on N GPUs (gradient
accumulation and mixed precision come from the config). Deterministic on CPU for a seed
(the same losses with 1 or 2 threads).

Three switches exist for the demo, all off by default (the paper's setting):

* ``prompt_loss_weight`` adds a language-modelling loss on the instruction text — a VLM
  trained from scratch must first learn to read and copy words (:func:`instruction_loss`);
* ``cache_vision`` encodes each image once with the frozen vision tower
  (:class:`CachedVisionTower`);
* ``cache_examples`` keeps the encoded examples in memory after the first epoch.
"""

from __future__ import annotations

import hashlib
import inspect
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from PIL import Image
from rich.progress import Progress, TextColumn
from torch.utils.data import DataLoader, Dataset
from transformers import get_cosine_schedule_with_warmup
from transformers.modeling_outputs import BaseModelOutputWithPooling

from vpmel.data.images import ImageProblem, open_rgb
from vpmel.data.subsets import named_mentions
from vpmel.params import from_params

IGNORE = -100


@dataclass(frozen=True)
class LoraSettings:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    # a list of module names, or one regex (peft's convention); the default keeps LoRA off
    # the vision tower and the projector of a LLaVA-style model
    target_modules: str | list[str] = (
        r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
    )
    modules_to_save: list[str] = field(default_factory=list)


TUNING_MENTIONS = ("all", "named")


def check_tuning_mentions(which: str) -> None:
    """Refuse a ``detective.train.mentions`` value that is not one of :data:`TUNING_MENTIONS`."""
    if which not in TUNING_MENTIONS:
        raise ValueError(
            f"detective.train.mentions must be one of {TUNING_MENTIONS}, not {which!r}"
        )


def tuning_mask(mentions: pd.DataFrame, which: str) -> np.ndarray:
    """Which of ``mentions`` (rows with sentence, qid, entity_name and, where present,
    mention, span_start, span_end) become instructions under ``detective.train.mentions``.

    ``all``: every one. ``named``: those whose sentence names the gold entity — its mention
    words located in the sentence, or its name occurring in it
    (:func:`vpmel.data.subsets.is_named`, the rule of the report's *name in caption* subset).
    The paper's fine-tuning answer is "the mention words in M_j that are associated with the
    Visual prompt" (Appendix A.2), a phrase of the sentence; a demo mention whose caption
    does not name its entity has no such phrase, and tuning the tiny demo VLM on its KB name
    teaches it to recall train names from an image it cannot read (README, *Detective-VLM
    settings*).
    """
    check_tuning_mentions(which)
    if which == "all":
        return np.ones(len(mentions), dtype=bool)
    names = mentions[["qid", "entity_name"]].dropna().drop_duplicates("qid")
    return named_mentions(mentions, names.rename(columns={"entity_name": "name"}))


@dataclass(frozen=True)
class TuneConfig:
    """The ``detective.train`` params (plus mode and LoRA settings)."""

    mode: str = "full"  # full | lora
    epochs: int = 7
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 3e-3
    weight_decay: float = 0.0
    warmup_ratio: float = 0.05
    max_grad_norm: float = 1.0
    # parameters whose qualified name contains one of these stay frozen (full mode)
    freeze: tuple[str, ...] = ("vision_tower",)
    mixed_precision: str = "no"  # no | fp16 | bf16 (accelerate)
    # encode each image once with the frozen vision tower (LLaVA-style models; the demo).
    # Memory: one hidden state per training image — off for large models and datasets
    cache_vision: bool = False
    # keep encoded examples (ids + pixels, ~40 KB each at 56 px) in memory after first use
    cache_examples: bool = False
    # weight of the language-modelling loss on the instruction text (0: answer only, as the
    # paper and the demo; > 0 helps a base that has not learnt to read a caption, see
    # instruction_loss)
    prompt_loss_weight: float = 0.0
    # which train mentions become instructions: all, or named — those whose sentence holds
    # the gold entity's name or its mention words (tuning_mask)
    mentions: str = "all"
    seed: int = 0
    lora: LoraSettings = LoraSettings()

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> TuneConfig:
        params = dict(params)
        params["lora"] = from_params(LoraSettings, params.get("lora"), "detective.lora")
        if "freeze" in params:
            params["freeze"] = params["freeze"] or ()
        cfg = from_params(cls, params, "detective.train")
        if cfg.mode not in ("full", "lora"):
            raise ValueError(f"detective.mode must be 'full' or 'lora', got {cfg.mode!r}")
        check_tuning_mentions(cfg.mentions)
        return cfg


# ---------------------------------------------------------------------------- data


def encode_example(
    processor: Any, prompt: str, answer: str, image: Image.Image
) -> dict[str, torch.Tensor]:
    """Token ids of ``prompt + " " + answer + EOS`` with labels only on the answer part."""
    full = processor(text=[f"{prompt} {answer}"], images=[image], return_tensors="pt")
    ids = full.pop("input_ids")[0]
    eos = processor.tokenizer.eos_token_id
    if eos is not None and (len(ids) == 0 or int(ids[-1]) != eos):
        ids = torch.cat([ids, torch.tensor([eos])])
    labels = ids.clone()
    labels[: prompt_length(processor, prompt, ids, image)] = IGNORE
    full.pop("attention_mask", None)
    return {"input_ids": ids, "labels": labels, **dict(full.items())}


def _runs_collapsed(ids: Sequence[int], token: int) -> list[int]:
    return [t for i, t in enumerate(ids) if t != token or i == 0 or ids[i - 1] != token]


def prompt_length(processor: Any, prompt: str, ids: torch.Tensor, image: Image.Image) -> int:
    """How many of ``ids`` (prompt + answer) belong to the prompt.

    Fast path for processors that only repeat the image token (LLaVA): tokenize the prompt
    alone and add the repeats, checked against ``ids``. Otherwise the processor encodes the
    prompt with the image and the longest common prefix counts.
    """
    image_id = getattr(processor, "image_token_id", None)
    full = ids.tolist()
    if image_id is not None:
        head = processor.tokenizer(prompt)["input_ids"]
        n = len(head) + full.count(image_id) - head.count(image_id)
        if 0 < n <= len(full) and _runs_collapsed(full[:n], image_id) == _runs_collapsed(
            head, image_id
        ):
            return n
    head = processor(text=[prompt], images=[image], return_tensors="pt")["input_ids"][0].tolist()
    n = 0
    while n < min(len(head), len(full)) and head[n] == full[n]:
        n += 1
    return n


def load_image(path: str | Path | Image.Image) -> Image.Image:
    """An RGB image (a path, or an image already in memory); a missing or unreadable file is
    a clear error, never a blank image."""
    if isinstance(path, Image.Image):
        return path.convert("RGB")
    try:
        return open_rgb(path)
    except ImageProblem as err:
        raise FileNotFoundError(f"cannot read image {path}: {err}") from None


class InstructionDataset(Dataset):
    """Records ``{image, prompt, answer}`` encoded on the fly (images read lazily, or drawn
    by a lazy sequence such as the pretraining corpus), or once and kept in memory with
    ``keep``."""

    def __init__(
        self, records: Sequence[Mapping[str, Any]], processor: Any, keep: bool = False
    ) -> None:
        self.records = records if isinstance(records, Sequence) else list(records)
        self.processor = processor
        self.kept: dict[int, dict[str, torch.Tensor]] | None = {} if keep else None

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if self.kept is not None and index in self.kept:
            return self.kept[index]
        rec = self.records[index]
        example = encode_example(
            self.processor, rec["prompt"], rec["answer"], load_image(rec["image"])
        )
        if self.kept is not None:
            self.kept[index] = example
        return example


def collate(examples: Sequence[Mapping[str, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-pad ids and labels; concatenate every other tensor (pixel values, sizes...)."""
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[i, width - n :] = e["input_ids"]
        labels[i, width - n :] = e["labels"]
        mask[i, width - n :] = 1
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    for key in examples[0]:
        if key not in batch:
            batch[key] = torch.cat([e[key] for e in examples])
    return batch


# ---------------------------------------------------------------------------- the loss


def _takes_logits_to_keep(model: torch.nn.Module) -> bool:
    forward = getattr(model, "get_base_model", lambda: model)().forward
    return "logits_to_keep" in inspect.signature(forward).parameters


def answer_loss(model: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy over the answer tokens of a left-padded batch."""
    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    if not _takes_logits_to_keep(model):
        return model(**inputs, labels=labels).loss
    answer_cols = (labels != IGNORE).any(0).nonzero()
    span = labels.shape[1] - int(answer_cols[0]) if len(answer_cols) else 1
    logits = model(**inputs, logits_to_keep=span + 1).logits[:, :-1]
    target = labels[:, -span:]
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), target.reshape(-1))


def instruction_loss(
    model: torch.nn.Module, batch: Mapping[str, torch.Tensor], prompt_weight: float
) -> torch.Tensor:
    """Answer loss, plus ``prompt_weight`` x the language-modelling loss on the instruction's
    text tokens (image slots and padding excluded).

    The paper tunes a pretrained VLM on the answer only (``prompt_weight = 0``). A demo VLM
    trained from scratch has never learnt language; predicting the instruction — whose
    question repeats the sentence — teaches it to read and copy words (demo default 0.1).
    """
    if prompt_weight <= 0:
        return answer_loss(model, batch)
    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs).logits[:, :-1].float()
    ids = batch["input_ids"][:, 1:]
    image_id = getattr(getattr(model, "config", None), "image_token_id", None)
    text = batch["attention_mask"][:, 1:].bool() & (labels[:, 1:] == IGNORE)
    if image_id is not None:
        text &= ids != image_id
    answer_target = labels[:, 1:]
    prompt_target = ids.masked_fill(~text, IGNORE)
    flat = logits.reshape(-1, logits.shape[-1])
    answer = F.cross_entropy(flat, answer_target.reshape(-1))
    if not text.any():
        return answer
    return answer + prompt_weight * F.cross_entropy(flat, prompt_target.reshape(-1))


# ---------------------------------------------------------------------------- the model setup


def prepare_model(model: torch.nn.Module, cfg: TuneConfig) -> torch.nn.Module:
    """Freeze per ``cfg.freeze`` (full) or wrap in peft LoRA adapters (lora)."""
    if cfg.mode == "lora":
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=cfg.lora.r,
            lora_alpha=cfg.lora.alpha,
            lora_dropout=cfg.lora.dropout,
            target_modules=cfg.lora.target_modules,
            modules_to_save=list(cfg.lora.modules_to_save) or None,
        )
        return get_peft_model(model, lora)
    for name, param in model.named_parameters():
        if any(part in name for part in cfg.freeze):
            param.requires_grad_(False)
    return model


class CachedVisionTower(torch.nn.Module):
    """A frozen vision tower that encodes each distinct image once.

    Outputs are keyed by the image's pixel content; only the hidden state the VLM reads
    (``layer``, e.g. LLaVA's ``vision_feature_layer``) is kept and returned, every other
    entry of ``hidden_states`` is None. Installed by :func:`cache_vision_tower` for the
    duration of tuning only, so saved checkpoints keep the original module names.
    """

    def __init__(self, tower: torch.nn.Module, layer: int) -> None:
        super().__init__()
        self.tower = tower
        self.layer = layer
        self.n_states = int(tower.config.num_hidden_layers) + 1
        self.store: dict[bytes, torch.Tensor] = {}

    def forward(self, pixel_values: torch.Tensor, **_: Any) -> BaseModelOutputWithPooling:
        keys = [
            hashlib.blake2b(x.detach().float().cpu().numpy().tobytes(), digest_size=16).digest()
            for x in pixel_values
        ]
        missing = sorted({k: i for i, k in enumerate(keys) if k not in self.store}.values())
        if missing:
            with torch.no_grad():
                out = self.tower(pixel_values[missing], output_hidden_states=True, return_dict=True)
            for row, i in enumerate(missing):
                self.store[keys[i]] = out.hidden_states[self.layer][row]
        states: list[torch.Tensor | None] = [None] * self.n_states
        states[self.layer] = torch.stack([self.store[k] for k in keys])
        return BaseModelOutputWithPooling(hidden_states=tuple(states))


def cache_vision_tower(model: torch.nn.Module) -> Callable[[], None]:
    """Swap the model's (frozen) ``vision_tower`` for a :class:`CachedVisionTower`; return a
    function that puts the original back."""
    names = [n for n, _ in model.named_modules() if n.endswith("vision_tower")]
    if len(names) != 1:
        raise ValueError(f"cache_vision: expected one vision_tower module, found {names}")
    layer = getattr(getattr(model, "config", None), "vision_feature_layer", None)
    if not isinstance(layer, int):
        raise ValueError("cache_vision needs a model config with one int vision_feature_layer")
    parent_name, _, attr = names[0].rpartition(".")
    parent = model.get_submodule(parent_name)
    tower = getattr(parent, attr)
    if any(p.requires_grad for p in tower.parameters()):
        raise ValueError("cache_vision needs a frozen vision tower (add it to train.freeze)")
    setattr(parent, attr, CachedVisionTower(tower, layer))
    return lambda: setattr(parent, attr, tower)


def trainable_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@dataclass
class TuneResult:
    steps: int
    epochs: int
    seconds: float
    trainable_params: int
    train_loss: list[float]  # mean per epoch
    dev_loss: list[float]  # per epoch, when dev records were given
    config: dict[str, Any]


@torch.no_grad()
def mean_loss(model: torch.nn.Module, loader: DataLoader, accelerator: Accelerator) -> float:
    model.eval()
    total, count = 0.0, 0
    for batch in loader:
        loss = answer_loss(model, batch)
        total += float(accelerator.gather_for_metrics(loss.detach()[None]).mean())
        count += 1
    model.train()
    return total / max(count, 1)


def tune(
    model: torch.nn.Module,
    processor: Any,
    records: Sequence[Mapping[str, str]],
    cfg: TuneConfig,
    dev_records: Sequence[Mapping[str, str]] = (),
    accelerator: Accelerator | None = None,
    progress: bool = True,
) -> tuple[torch.nn.Module, TuneResult]:
    """Tune ``model`` on instruction records; return the (unwrapped) model and statistics."""
    accelerator = accelerator or Accelerator(
        gradient_accumulation_steps=cfg.grad_accum, mixed_precision=cfg.mixed_precision
    )
    set_seed(cfg.seed)
    model = prepare_model(model, cfg)
    restore = cache_vision_tower(model) if cfg.cache_vision else (lambda: None)
    model.train()
    pad_id = processor.tokenizer.pad_token_id
    if pad_id is None:
        pad_id = processor.tokenizer.eos_token_id

    def loader(recs: Sequence[Mapping[str, str]], shuffle: bool) -> DataLoader:
        return DataLoader(
            InstructionDataset(recs, processor, cfg.cache_examples),
            batch_size=cfg.batch_size,
            shuffle=shuffle,
            collate_fn=lambda b: collate(b, pad_id),
            generator=torch.Generator().manual_seed(cfg.seed),
        )

    train_loader = loader(records, True)
    dev_loader = loader(dev_records, False) if dev_records else None
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    updates = cfg.epochs * math.ceil(len(train_loader) / cfg.grad_accum)
    scheduler = get_cosine_schedule_with_warmup(
        optimizer, int(cfg.warmup_ratio * updates), max(updates, 1)
    )
    model, optimizer, train_loader, scheduler = accelerator.prepare(
        model, optimizer, train_loader, scheduler
    )
    if dev_loader is not None:
        dev_loader = accelerator.prepare(dev_loader)

    start, step = time.perf_counter(), 0
    train_curve, dev_curve = [], []
    columns = (*Progress.get_default_columns(), TextColumn("{task.fields[status]}"))
    shown = progress and accelerator.is_local_main_process
    with Progress(*columns, disable=not shown) as bar:
        task = bar.add_task("detective", total=cfg.epochs * len(train_loader), status="")
        for epoch in range(cfg.epochs):
            losses = []
            for batch in train_loader:
                with accelerator.accumulate(model):
                    loss = instruction_loss(model, batch, cfg.prompt_loss_weight)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and cfg.max_grad_norm:
                        accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad()
                losses.append(float(loss.detach()))
                step += 1
                bar.update(task, advance=1, status=f"epoch {epoch + 1} loss {losses[-1]:.3f}")
            train_curve.append(sum(losses) / max(len(losses), 1))
            if dev_loader is not None:
                dev_curve.append(mean_loss(model, dev_loader, accelerator))
                status = f"epoch {epoch + 1} loss {train_curve[-1]:.3f} dev {dev_curve[-1]:.3f}"
                bar.update(task, status=status)
    accelerator.wait_for_everyone()
    result = TuneResult(
        steps=step,
        epochs=cfg.epochs,
        seconds=round(time.perf_counter() - start, 1),
        trainable_params=trainable_parameters(model),
        train_loss=[round(x, 4) for x in train_curve],
        dev_loss=[round(x, 4) for x in dev_curve],
        config=asdict(cfg),
    )
    model = accelerator.unwrap_model(model)
    restore()
    return model.eval(), result
