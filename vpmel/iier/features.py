"""Frozen-tower features, computed once and shared by every IIER run.

With frozen towers (the demo: ``train_text`` and ``train_vision`` false) IIER reads, per
input, only what the towers output: a text's last hidden states and an image's CLS states
and output layer. Those depend on the encoder and the input alone — not on IIER's heads,
its seed, λ or the ablation — so the `features` stage computes them once for every input
any run may read (KB entities; mention images prompted and unprompted; mention texts with
the tuned answers, the untuned answers and none) and `train`, `evaluate` and every
ablation and seed load them instead of running the towers again.

The store is *content-addressed*: a text is keyed by the exact token ids (and token types)
the tower reads, an image by its file's bytes and the loader's size limit, and the whole
store by the encoder's fingerprint (a hash of every file in the encoder folder). A run
looks its inputs up; anything not in the store (other answers, another max length, a new
image) is computed in-process as before, so the store can only save time, never change
what a run reads. A store made with another encoder is ignored, with a message.

Files (``data/features/``): ``texts.safetensors`` (``tokens`` [T, width]: every stored
text's real tokens back to back, ``offsets`` [U + 1]), ``images.safetensors`` (``cls``
[U, layers + 1, width]: the CLS state of the embeddings and of every layer; ``last``
[U, patches + 1, width]) and ``index.json`` (keys in row order, encoder fingerprint).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from vpmel.data.images import resolve_inside
from vpmel.iier.checkpoint import encoder_fingerprint

STORE_VERSION = 1
INDEX_FILE = "index.json"
TEXTS_FILE = "texts.safetensors"
IMAGES_FILE = "images.safetensors"
BLANK_KEY = "no-image"


def text_keys(
    input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None
) -> list[str]:
    """One key per row: the real tokens (and token types) the tower reads."""
    lengths = attention_mask.sum(1).tolist()
    keys = []
    for row, n in enumerate(lengths):
        digest = hashlib.sha1(input_ids[row, :n].to(torch.int64).numpy().tobytes())
        if token_type_ids is not None:
            digest.update(token_type_ids[row, :n].to(torch.int64).numpy().tobytes())
        keys.append(digest.hexdigest())
    return keys


def image_keys(root: Path, paths: Sequence[str | None], max_side: int | None) -> list[str]:
    """One key per row: the image file's bytes and the loader's size limit."""
    keys = []
    for rel in paths:
        if rel is None:
            keys.append(BLANK_KEY)
            continue
        try:
            data = resolve_inside(Path(root), rel).read_bytes()
        except (OSError, ValueError):
            keys.append(f"unreadable:{rel}")  # never in the store: computed (and reported)
            continue
        keys.append(hashlib.sha1(data + f"|{max_side}".encode()).hexdigest())
    return keys


@dataclass
class FeatureStore:
    """Stored tower outputs, looked up by key (see the module docstring)."""

    encoder: str
    text_index: dict[str, int]
    tokens: Tensor  # [T, width]
    offsets: Tensor  # [U + 1]
    image_index: dict[str, int]
    cls: Tensor  # [V, layers + 1, width]
    last: Tensor  # [V, patches + 1, width]

    @classmethod
    def load(cls, folder: Path, encoder: str) -> FeatureStore | None:
        """The store in ``folder``, or None when there is none or it was made with another
        encoder (``encoder`` = :func:`encoder_fingerprint` of the one in use)."""
        folder = Path(folder)
        index_file = folder / INDEX_FILE
        if not index_file.is_file():
            return None
        index = json.loads(index_file.read_text())
        if index.get("version") != STORE_VERSION or index.get("encoder") != encoder:
            return None
        texts, images = load_file(folder / TEXTS_FILE), load_file(folder / IMAGES_FILE)
        return cls(
            encoder,
            {k: i for i, k in enumerate(index["texts"])},
            texts["tokens"],
            texts["offsets"],
            {k: i for i, k in enumerate(index["images"])},
            images["cls"],
            images["last"],
        )

    def text(self, key: str) -> Tensor | None:
        row = self.text_index.get(key)
        if row is None:
            return None
        return self.tokens[int(self.offsets[row]) : int(self.offsets[row + 1])]

    def images(self, keys: Sequence[str]) -> list[int | None]:
        return [self.image_index.get(k) for k in keys]


def save_store(
    folder: Path,
    encoder: str,
    texts: dict[str, Tensor],
    images: dict[str, tuple[Tensor, Tensor]],
) -> dict[str, int]:
    """Write a store: ``texts`` key → [length, width], ``images`` key → (cls [layers + 1,
    width], last [patches + 1, width]). Returns the counts written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    text_keys_ = list(texts)
    lengths = torch.tensor([0] + [len(texts[k]) for k in text_keys_], dtype=torch.int64)
    tokens = torch.cat([texts[k] for k in text_keys_]) if text_keys_ else torch.zeros(0, 1)
    save_file(
        {"tokens": tokens.contiguous(), "offsets": torch.cumsum(lengths, 0)},
        str(folder / TEXTS_FILE),
    )
    image_keys_ = list(images)
    if image_keys_:
        cls = torch.stack([images[k][0] for k in image_keys_])
        last = torch.stack([images[k][1] for k in image_keys_])
    else:
        cls, last = torch.zeros(0, 1, 1), torch.zeros(0, 1, 1)
    save_file({"cls": cls.contiguous(), "last": last.contiguous()}, str(folder / IMAGES_FILE))
    index = {
        "version": STORE_VERSION,
        "encoder": encoder,
        "texts": text_keys_,
        "images": image_keys_,
    }
    (folder / INDEX_FILE).write_text(json.dumps(index) + "\n")
    return {"texts": len(text_keys_), "text_tokens": int(lengths.sum()), "images": len(image_keys_)}


# ------------------------------------------------------------------------------ computing


@torch.no_grad()
def tower_texts(
    text_hidden: Callable[..., Tensor],
    input_ids: Tensor,
    attention_mask: Tensor,
    token_type_ids: Tensor | None,
    rows: Iterable[int],
    batch_size: int,
    device: torch.device | str = "cpu",
) -> dict[int, Tensor]:
    """Row → the tower's last hidden states over its real tokens [length, width]; rows are
    batched by length, each batch trimmed to its longest (as :meth:`TextBank.cache`)."""
    rows = sorted(set(int(r) for r in rows))
    lengths = attention_mask.sum(1)
    rows.sort(key=lambda r: int(lengths[r]))
    out: dict[int, Tensor] = {}
    for lo in range(0, len(rows), batch_size):
        chunk = torch.as_tensor(rows[lo : lo + batch_size])
        width = max(1, int(lengths[chunk].max()))
        tti = token_type_ids[chunk, :width].to(device) if token_type_ids is not None else None
        hidden = text_hidden(
            input_ids[chunk, :width].to(device), attention_mask[chunk, :width].to(device), tti
        )
        hidden = hidden.float().cpu()
        for i, row in enumerate(chunk.tolist()):
            out[row] = hidden[i, : int(lengths[row])].clone()
    return out


@torch.no_grad()
def tower_images(
    vision_model: torch.nn.Module,
    pixels: Callable[[Sequence[int]], Tensor],
    rows: Sequence[int],
    batch_size: int,
    device: torch.device | str = "cpu",
) -> dict[int, tuple[Tensor, Tensor]]:
    """Row → (CLS state of every hidden state [layers + 1, width], output layer
    [patches + 1, width]) of a vision tower."""
    out: dict[int, tuple[Tensor, Tensor]] = {}
    rows = list(rows)
    for lo in range(0, len(rows), batch_size):
        chunk = rows[lo : lo + batch_size]
        states = vision_model(
            pixel_values=pixels(chunk).to(device), output_hidden_states=True
        ).hidden_states
        cls = torch.stack([s[:, 0] for s in states], 1).float().cpu()
        last = states[-1].float().cpu()
        for i, row in enumerate(chunk):
            out[row] = (cls[i].clone(), last[i].clone())
    return out


# ------------------------------------------------------------------------------ filling


def fill_texts(bank, model, store: FeatureStore | None, batch_size: int = 64) -> tuple[int, int]:
    """Set ``bank.hidden`` (a :class:`vpmel.iier.data.TextBank`) from the store, running the
    frozen text tower of ``model`` (an IIER) only on texts the store lacks. Returns (rows
    from the store, rows computed)."""
    keys = text_keys(bank.input_ids, bank.attention_mask, bank.token_type_ids)
    found = {r: store.text(k) for r, k in enumerate(keys)} if store is not None else {}
    found = {r: t for r, t in found.items() if t is not None}
    missing = [r for r in range(len(keys)) if r not in found]
    computed = tower_texts(
        model.text_hidden,
        bank.input_ids,
        bank.attention_mask,
        bank.token_type_ids,
        missing,
        batch_size,
        model.device,
    )
    rows = found | computed
    width = next(iter(rows.values())).shape[-1] if rows else 1
    hidden = torch.zeros((len(keys), bank.width, width))
    for row, states in rows.items():
        hidden[row, : len(states)] = states
    bank.hidden = hidden
    return len(found), len(computed)


def fill_images(bank, model, store: FeatureStore | None, batch_size: int = 64) -> tuple[int, int]:
    """Set ``bank.vision_cls`` ([N, len(cls_layers), width]) and ``bank.vision_last`` of a
    :class:`vpmel.iier.data.ImageBank` from the store, running the frozen vision tower only
    on images it lacks. Returns (rows from the store, rows computed)."""
    n = len(bank)
    layers = list(model.cfg.cls_layers)
    keys = image_keys(bank.root, bank.paths, bank.max_side)
    where = store.images(keys) if store is not None else [None] * n
    missing = [r for r in range(n) if where[r] is None]
    cls: list[Tensor | None] = [None] * n
    last: list[Tensor | None] = [None] * n
    for r, i in enumerate(where):
        if i is not None:
            cls[r], last[r] = store.cls[i, layers], store.last[i]
            if bank.paths[r] is None:  # what loading it would have recorded
                bank.problems[r] = "no_image"
    with torch.no_grad():
        for lo in range(0, len(missing), batch_size):
            chunk = missing[lo : lo + batch_size]
            c, h = model.vision_hidden(bank.pixels(chunk).to(model.device))
            for j, r in enumerate(chunk):
                cls[r], last[r] = c[j].float().cpu(), h[j].float().cpu()
    if n:
        bank.vision_cls, bank.vision_last = torch.stack(cls), torch.stack(last)
    bank._cached.clear()
    return n - len(missing), len(missing)


# ------------------------------------------------------------------------------ building


def build_features(
    encoder,
    text_banks: Sequence,
    image_banks: Sequence,
    batch_size: int = 64,
    log: Callable[[str], None] = print,
) -> tuple[dict[str, Tensor], dict[str, tuple[Tensor, Tensor]]]:
    """Tower outputs of every distinct text of ``text_banks`` (TextBanks) and image of
    ``image_banks`` (ImageBanks) under ``encoder`` (an ImageTextEncoder), keyed as the
    store keys them; each distinct input runs through its tower once."""

    def text_hidden(ids: Tensor, mask: Tensor, tti: Tensor | None) -> Tensor:
        kwargs = {"input_ids": ids, "attention_mask": mask}
        if tti is not None:
            kwargs["token_type_ids"] = tti
        return encoder.text_model(**kwargs).last_hidden_state

    device = next(encoder.parameters()).device
    texts: dict[str, Tensor] = {}
    for bank in text_banks:
        keys = text_keys(bank.input_ids, bank.attention_mask, bank.token_type_ids)
        first: dict[str, int] = {}
        for row, key in enumerate(keys):
            if key not in texts:
                first.setdefault(key, row)
        out = tower_texts(
            text_hidden,
            bank.input_ids,
            bank.attention_mask,
            bank.token_type_ids,
            first.values(),
            batch_size,
            device,
        )
        texts.update({key: out[row] for key, row in first.items()})
        log(f"features: {len(first)} new of {len(keys)} texts")
    images: dict[str, tuple[Tensor, Tensor]] = {}
    for bank in image_banks:
        keys = image_keys(bank.root, bank.paths, bank.max_side)
        first = {}
        for row, key in enumerate(keys):
            if key not in images and not key.startswith("unreadable:"):
                first.setdefault(key, row)
        out = tower_images(
            encoder.vision_model, bank.pixels, list(first.values()), batch_size, device
        )
        images.update({key: out[row] for key, row in first.items()})
        bank._cached.clear()  # the pixels are not needed any more
        log(f"features: {len(first)} new of {len(keys)} images")
    return texts, images


def encoder_id(folder: Path | None) -> str:
    """The fingerprint a store is made with: the encoder folder's, or "none" without one
    (a hub model resolved on the fly is never matched by a store)."""
    if folder is None:
        return "none"
    folder = Path(folder)
    return encoder_fingerprint(folder) if any(folder.glob("*")) else "none"
