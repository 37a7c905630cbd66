"""Detective-VLM (paper §5.2, Appendix A.4): the instruction, the answer, the model.

A vision-language model is tuned to answer, for an image with a red box and its caption,
``"{Entity Name} {Entity Type}"``; IIER prepends that answer to the mention text.

The instruction follows the paper's template::

    Background: {Image}
    Text: {Sentence}
    Question: Based on the text '{Sentence}', tell me briefly what is the {Entity Type} and
              {Entity Name} in the red box of the {Image}?
    Answer: {Entity Name} {Entity Type}

Rendering: ``Background: {Image}`` becomes the processor's image placeholder token (e.g.
``<image>``; the processor expands it into the image's feature slots); the question is the
paper's literal question with ``{Sentence}`` filled in, ``{Entity Type}``/``{Entity Name}``
written as the words the model must supply (``Entity Type``/``Entity Name``) and the second
``{Image}`` as the word ``image`` — a second placeholder token would ask a one-image
processor for a second image. With ``prompt_format: plain`` the model input is those three
lines plus ``Answer:``; with ``chat`` they are the user turn of the processor's chat template.

Models:

* demo — :func:`build_demo_vlm`: a ``LlavaForConditionalGeneration`` built from config: a
  ``CLIPVisionModel`` tower with the demo encoder's configuration and (when given) its
  trained weights, a tiny Llama text model, and a word-level tokenizer built from the
  world's vocabulary (:func:`build_demo_tokenizer`);
* paper scale — :func:`load_pretrained`: any ``AutoModelForImageTextToText`` checkpoint
  (hub id or local folder) with its ``AutoProcessor``, e.g. ``llava-hf/llava-1.5-7b-hf``
  (transformers-native). Remote code never runs unless the param
  ``detective.trust_remote_code`` (false by default) is set. The paper's mPLUG-Owl2
  (``MAGAer13/mplug-owl2-llama2-7b``) is loaded by its authors through the X-PLUG
  ``mplug_owl2`` package, not through transformers; a port whose repository ships
  transformers remote code (``auto_map``) is reachable by setting
  ``detective.trust_remote_code: true`` (falling back to ``AutoModelForCausalLM`` when the
  remote code registers no image-text-to-text class).

On disk (``models/detective``, see :func:`save_detective` / :func:`load_detective`)::

    detective.json    base (hub id, or a folder relative to this one), mode (full | lora),
                      prompt_format, trust_remote_code, dtype
    base/             demo only: the untuned model and its processor
    tuned/            full: model + processor; lora: peft adapter + processor
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd
import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import (
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    ProcessorMixin,
)

from vpmel.data.schema import ENTITY_TYPES, normalize_type
from vpmel.encoders.model import demo_image_processor
from vpmel.params import from_params

FORMAT_VERSION = 1
META_FILE = "detective.json"
PROMPT_FORMATS = ("plain", "chat")
MODES = ("full", "lora")
DEMO = "demo"  # detective.model value that selects the tiny demo VLM

QUESTION = (
    "Based on the text '{sentence}', tell me briefly what is the Entity Type and Entity Name "
    "in the red box of the image?"
)
INSTRUCTION = "Background: {image}\nText: {sentence}\nQuestion: {question}"
ANSWER_LABEL = "Answer:"


# ---------------------------------------------------------------------------- the template


def render_instruction(sentence: str, image_token: str) -> str:
    """The paper's Background / Text / Question lines for one mention."""
    sentence = " ".join(str(sentence).split())
    question = QUESTION.format(sentence=sentence)
    return INSTRUCTION.format(image=image_token, sentence=sentence, question=question)


def render_answer(name: str, entity_type: str) -> str:
    """The target: ``"{Entity Name} {Entity Type}"``."""
    if entity_type not in ENTITY_TYPES:
        raise ValueError(f"entity type {entity_type!r} is not one of {ENTITY_TYPES}")
    return f"{' '.join(str(name).split())} {entity_type}"


def image_token(processor: Any) -> str:
    """The processor's image placeholder (``<image>`` for LLaVA)."""
    token = getattr(processor, "image_token", None)
    if not token:
        tokenizer = getattr(processor, "tokenizer", None)
        token = getattr(tokenizer, "image_token", None)
    if not token:
        raise ValueError(f"{type(processor).__name__} names no image token")
    return str(token)


def format_prompt(processor: Any, instruction: str, prompt_format: str = "plain") -> str:
    """The model input up to where the answer starts."""
    if prompt_format == "plain":
        return f"{instruction}\n{ANSWER_LABEL}"
    if prompt_format == "chat":
        if not getattr(processor, "chat_template", None):
            raise ValueError("prompt_format 'chat' needs a processor with a chat template")
        # the image token is already in the text ("Background: <image>"), so the turn is text
        messages = [{"role": "user", "content": [{"type": "text", "text": instruction}]}]
        return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    raise ValueError(f"prompt_format must be one of {PROMPT_FORMATS}, got {prompt_format!r}")


def mention_prompt(processor: Any, sentence: str, prompt_format: str = "plain") -> str:
    return format_prompt(
        processor, render_instruction(sentence, image_token(processor)), prompt_format
    )


# ---------------------------------------------------------------------------- answers


class Answer(NamedTuple):
    name: str | None
    type: str | None


_STOP_MARKERS = re.compile(r"\b(?:Question|Background|Text|USER|ASSISTANT)\s*:", re.IGNORECASE)
_LABELS = re.compile(r"^\s*(?:answer|entity\s+name|name|entity\s+type|type)\s*[:=]\s*", re.I)
_INNER_LABELS = re.compile(r"[,;]?\s*\b(?:entity\s+type|type)\s*[:=]\s*", re.I)
_EDGE = string.punctuation + "“”‘’«»"
_TRIM = " .,;:!?\"'“”‘’«»`"  # trimmed off a name's ends (brackets and the like are kept)


def _core(word: str) -> str:
    return word.strip(_EDGE)


def _clean_name(text: str) -> str | None:
    name = _LABELS.sub("", " ".join(text.split()).strip(_TRIM)).strip(_TRIM)
    return name or None


def _parse_line(line: str) -> Answer:
    words = _INNER_LABELS.sub(" ", line).split()
    if not words:
        return Answer(None, None)
    last = normalize_type(_core(words[-1]))
    if last is not None:
        return Answer(_clean_name(" ".join(words[:-1])), last)
    # extra words after the type: the first canonical type name after the first word
    for i, word in enumerate(words[1:], start=1):
        if _core(word) in ENTITY_TYPES:
            return Answer(_clean_name(" ".join(words[:i])), _core(word))
    return Answer(_clean_name(line), None)


def parse_answer(raw: str | None) -> Answer:
    """``"{Entity Name} {Entity Type}"`` -> (name, type); never raises.

    Survives a leading ``Answer:`` label, ``Name: ... Type: ...`` labels, a continuation of
    the template (``Question: ...``), multi-line answers (the first line with a type; a type
    alone on a line names the line above), extra words after the type, trailing
    punctuation and quotes. An unknown type gives type None and keeps the whole first line as
    the name; an empty answer gives (None, None). A type word inside a name survives when
    the answer ends with the type (``person running Person``).
    """
    if not raw or not str(raw).strip():
        return Answer(None, None)
    text = str(raw)
    cut = _STOP_MARKERS.search(text, 1)
    if cut:
        text = text[: cut.start()]
    lines = [_LABELS.sub("", line).strip() for line in text.splitlines()]
    lines = [line for line in lines if line.strip(" " + _EDGE)]
    if not lines:
        return Answer(None, None)
    for i, line in enumerate(lines):
        name, entity_type = _parse_line(line)
        if entity_type is None:
            continue
        if name is None and i > 0:
            name = _clean_name(lines[i - 1])
        return Answer(name, entity_type)
    return Answer(_clean_name(lines[0]), None)


def normalise(text: str | None) -> str:
    """Case- and space-normalised form used by the exact-match metric."""
    return " ".join(str(text or "").casefold().split()).strip(_TRIM)


# ---------------------------------------------------------------------------- demo tokenizer

SPECIAL_TOKENS = ("<pad>", "<unk>", "<s>", "</s>", "<image>")
_SPACE = "▁"


def _bare_tokenizer(vocab: Mapping[str, int]) -> Tokenizer:
    tok = Tokenizer(models.WordLevel(dict(vocab), unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFKC(), normalizers.Replace(Regex(r"\s+"), " ")]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Metaspace(prepend_scheme="first"), pre_tokenizers.Punctuation()]
    )
    tok.decoder = decoders.Metaspace(prepend_scheme="first")
    return tok


def build_demo_tokenizer(texts: Iterable[str], min_count: int = 1) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over ``texts`` (the world's vocabulary).

    Words keep a leading ``▁`` for the space before them and punctuation is split off, so
    decoding reproduces a name exactly (``flag: Germany``). The vocabulary is sorted by
    count, then alphabetically: the same texts give the same ids. Unknown words are
    ``<unk>``.
    """
    probe = _bare_tokenizer({"<unk>": 0})
    counts: Counter[str] = Counter()
    for text in texts:
        normalised = probe.normalizer.normalize_str(str(text))
        counts.update(piece for piece, _ in probe.pre_tokenizer.pre_tokenize_str(normalised))
    counts.update({_SPACE: min_count})
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    for token, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        if n >= min_count and token not in vocab:
            vocab[token] = len(vocab)
    tok = _bare_tokenizer(vocab)
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        extra_special_tokens={"image_token": "<image>"},
        model_max_length=512,
    )


def demo_corpus(kb_names: Iterable[str], sentences: Iterable[str]) -> list[str]:
    """Texts the demo tokenizer learns its words from: every KB name (so any entity can be
    answered), the instructions of the given sentences (train captions, as the model sees
    them, quoted copy included) and the seven types."""
    instructions = [format_prompt(None, render_instruction(s, "<image>")) for s in sentences]
    return [*kb_names, *instructions, *ENTITY_TYPES]


# ---------------------------------------------------------------------------- demo model


@dataclass(frozen=True)
class DemoVLMConfig:
    """Architecture of the tiny demo VLM (``detective.demo`` params)."""

    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 256
    max_positions: int = 256
    vision_feature_layer: int = -2  # LLaVA's choice: the penultimate layer's patch tokens
    # used only without a demo encoder (a fresh vision tower like the encoder's)
    image_size: int = 56
    patch_size: int = 8
    vision_layers: int = 12
    vision_width: int = 128


def demo_vlm_config(params: Mapping[str, Any] | None) -> DemoVLMConfig:
    return from_params(DemoVLMConfig, params, "detective.demo")


def build_demo_vlm(
    cfg: DemoVLMConfig,
    tokenizer: PreTrainedTokenizerFast,
    encoder_dir: Path | None = None,
) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """A tiny LLaVA built from config (seed with ``torch.manual_seed`` first).

    With ``encoder_dir`` (an ``ImageTextEncoder`` folder) the vision tower takes that
    encoder's configuration and trained weights; otherwise it is a fresh tower of
    ``cfg``'s vision sizes.
    """
    if encoder_dir is not None:
        vision = CLIPVisionModel.from_pretrained(Path(encoder_dir) / "vision", dtype=torch.float32)
        vision_config = vision.config
    else:
        vision = None
        vision_config = CLIPVisionConfig(
            hidden_size=cfg.vision_width,
            intermediate_size=4 * cfg.vision_width,
            num_hidden_layers=cfg.vision_layers,
            num_attention_heads=max(1, cfg.vision_width // 32),
            image_size=cfg.image_size,
            patch_size=cfg.patch_size,
        )
    text_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_positions,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    n_patches = (vision_config.image_size // vision_config.patch_size) ** 2
    config = LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=n_patches,
        vision_feature_select_strategy="default",  # drop CLS: one slot per patch
        vision_feature_layer=cfg.vision_feature_layer,
        projector_hidden_act="gelu",
    )
    model = LlavaForConditionalGeneration(config)
    if vision is not None:
        model.model.vision_tower.load_state_dict(vision.state_dict())
    for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
        setattr(model.generation_config, key, getattr(tokenizer, key))
    processor = LlavaProcessor(
        image_processor=demo_image_processor(vision_config.image_size),
        tokenizer=tokenizer,
        patch_size=vision_config.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    return model.float(), processor


# ---------------------------------------------------------------------------- paper scale


def load_pretrained(
    source: str | Path,
    trust_remote_code: bool = False,
    dtype: str = "auto",
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """Any image-text-to-text checkpoint (hub id, HF cache or local folder) and its processor.

    ``trust_remote_code`` is passed through unchanged to both ``from_pretrained`` calls;
    with it on, a remote-code checkpoint without an image-text-to-text class is loaded as
    ``AutoModelForCausalLM``.
    """
    kwargs: dict[str, Any] = {"trust_remote_code": bool(trust_remote_code)}
    processor = AutoProcessor.from_pretrained(source, **kwargs)
    torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
    try:
        model = AutoModelForImageTextToText.from_pretrained(source, dtype=torch_dtype, **kwargs)
    except ValueError:
        if not trust_remote_code:
            raise
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, **kwargs)
    return model, processor


# ---------------------------------------------------------------------------- saving


@dataclass(frozen=True)
class DetectiveMeta:
    """What ``detective.json`` records about a tuned Detective-VLM."""

    base: str  # hub id, or a folder relative to the model folder
    mode: str = "full"
    prompt_format: str = "plain"
    trust_remote_code: bool = False
    dtype: str = "float32"
    format: int = FORMAT_VERSION

    def base_source(self, folder: Path) -> str | Path:
        local = Path(folder) / self.base
        return local if local.is_dir() else self.base


def save_detective(folder: Path, model: Any, processor: Any, meta: DetectiveMeta) -> None:
    """Write ``tuned/`` (the full model, or only the peft adapter) and ``detective.json``."""
    folder = Path(folder)
    model.save_pretrained(folder / "tuned", safe_serialization=True)
    processor.save_pretrained(folder / "tuned")
    (folder / META_FILE).write_text(json.dumps(asdict(meta), indent=1) + "\n")


def read_meta(folder: Path) -> DetectiveMeta:
    path = Path(folder) / META_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no {META_FILE}; run `dvc repro detective` first")
    meta = DetectiveMeta(**json.loads(path.read_text()))
    if meta.format != FORMAT_VERSION:
        raise ValueError(f"{path}: format {meta.format}, expected {FORMAT_VERSION}")
    return meta


def load_detective(
    folder: Path, untuned: bool = False
) -> tuple[PreTrainedModel, ProcessorMixin, DetectiveMeta]:
    """The tuned Detective-VLM (adapter merged), or with ``untuned`` its base model."""
    folder = Path(folder)
    meta = read_meta(folder)
    base = meta.base_source(folder)
    if untuned or meta.mode == "lora":
        model, processor = load_pretrained(base, meta.trust_remote_code, meta.dtype)
        if not untuned:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, folder / "tuned").merge_and_unload()
            processor = AutoProcessor.from_pretrained(
                folder / "tuned", trust_remote_code=meta.trust_remote_code
            )
    else:
        model, processor = load_pretrained(folder / "tuned", meta.trust_remote_code, meta.dtype)
    return model.eval(), processor, meta


# ---------------------------------------------------------------------------- instruction data


def instruction_records(
    mentions: Any, processor: Any, prompt_format: str = "plain", image_root: Path = Path(".")
) -> list[dict[str, str]]:
    """One instruction per mention (rows with id, sentence, entity_name, type, prompted_image).

    ``image`` is ``image_root / prompted_image`` as a string; ``prompt`` is the model input
    up to the answer, ``answer`` the target.
    """
    records = []
    for row in mentions.itertuples(index=False):
        records.append(
            {
                "id": str(row.id),
                "image": str(Path(image_root) / row.prompted_image),
                "sentence": str(row.sentence),
                "prompt": mention_prompt(processor, row.sentence, prompt_format),
                "answer": render_answer(row.entity_name, row.type),
            }
        )
    return records


def usable(mentions: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Mentions with a gold name and one of the seven types (others cannot be targets)."""
    ok = mentions["entity_name"].notna() & mentions["type"].isin(ENTITY_TYPES)
    return mentions[ok], int((~ok).sum())
