"""Zero-shot baselines ranked over the whole KB, as the paper's Table 2 compares against.

- **CLIP zero-shot**: the prompted mention image against each entity's image and name with
  the image–text encoder (``models/encoder``): ``S = (cos(I_m, I_e) + cos(I_m, T_name)) / 2``;
  an entity without an image is scored by its name alone.
- **Text-only bi-encoder**: the mention text (Detective-VLM answer, when used, then the
  sentence) against ``"{name}. {attributes}"`` with the pretrained text tower (MiniLM,
  mean-pooled, cosine) — no image at all.

- **Does the answer follow the box?** (:func:`box_following`) CLIP zero-shot again, on the
  same scene without the prompt (``clip_zero_shot_unprompted``: what the encoder ranks when it
  cannot know which object is meant) and with the prompt moved onto another object of the
  scene (where the objects of each scene are known, e.g. the demo world's truth): the share of
  mentions whose top-1 entity changes, and whose top-1 becomes the newly boxed object.

Ranks are pessimistic as in :mod:`vpmel.iier.retrieval` (rank = number of entities scoring at
least the gold one's score). Each split is also reported on its mentions whose gold entity
the caption names and those where it does not (:mod:`vpmel.data.subsets`, the paper's Table 3).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from vpmel.data.images import open_rgb
from vpmel.data.subsets import split_metrics
from vpmel.encoders.model import ImageTextEncoder
from vpmel.encoders.training import TEXT_VARIANTS
from vpmel.encoders.training import entity_texts as entity_text_variants
from vpmel.iier.data import mention_text_pairs
from vpmel.iier.retrieval import pessimistic_ranks
from vpmel.prompts import PromptStyle, draw_prompt
from vpmel.vpwiki.boxes import iou


def load_images(root: Path, paths: Sequence[str | None]) -> list:
    return [None if p is None else open_rgb(Path(root) / p, max_side=1024) for p in paths]


@torch.no_grad()
def _encode_images(encoder: ImageTextEncoder, images: list, batch: int = 256) -> torch.Tensor:
    """Normalised embeddings; rows without an image are zero."""
    out = torch.zeros((len(images), encoder.projection_dim))
    have = [i for i, im in enumerate(images) if im is not None]
    if have:
        out[have] = encoder.encode_images([images[i] for i in have], batch)
    return out


def clip_zero_shot_scores(
    encoder: ImageTextEncoder,
    mention_images: list,
    entity_images: list,
    entity_names: Sequence[str],
) -> torch.Tensor:
    """[M, N] scores (see the module docstring)."""
    m = _encode_images(encoder, mention_images)
    e_img = _encode_images(encoder, entity_images)
    e_txt = encoder.encode_texts(list(entity_names))
    has_image = torch.tensor([im is not None for im in entity_images])
    image_term = m @ e_img.T
    text_term = m @ e_txt.T
    both = (image_term + text_term) / 2
    return torch.where(has_image.unsqueeze(0), both, text_term)


@torch.no_grad()
def text_embeddings(
    encoder: ImageTextEncoder, texts: Sequence[str], batch: int = 128
) -> torch.Tensor:
    """Normalised pooled text-tower features (no projection: the pretrained space)."""
    chunks = []
    for lo in range(0, len(texts), batch):
        tok = encoder.tokenize(list(texts[lo : lo + batch]))
        chunks.append(encoder.pooled_text(tok["input_ids"], tok["attention_mask"]).float())
    return F.normalize(torch.cat(chunks), dim=-1)


def text_only_scores(
    encoder: ImageTextEncoder, mention_texts: Sequence[str], entity_embeddings: torch.Tensor
) -> torch.Tensor:
    """[M, N] cosines against entity texts already embedded by :func:`text_embeddings`."""
    return text_embeddings(encoder, mention_texts) @ entity_embeddings.T


def mention_texts(mentions: pd.DataFrame, answers: Mapping[str, str] | None) -> list[str]:
    """IIER's ``(m_w, m_s)`` pair as one string: the answer (if any), then the sentence."""
    pairs = mention_text_pairs(mentions, answers, use_answers=answers is not None)
    return [" ".join(x for x in pair if x) for pair in pairs]


def entity_texts(kb: pd.DataFrame) -> list[str]:
    """``"{name}. {attributes}"`` (the encoder's name-and-description text variant)."""
    described = TEXT_VARIANTS.index("name_description")
    return [variants[described] for variants in entity_text_variants(kb)]


def evaluate_scores(
    scores: torch.Tensor,
    gold: np.ndarray,
    splits: np.ndarray,
    names: Sequence[str],
    named: np.ndarray,
) -> dict[str, dict[str, float | None]]:
    """H@k / MRR / MR per split and per split subset (``<split>_named``,
    ``<split>_unnamed``; ``named`` from :func:`vpmel.data.subsets.named_mentions`) from [M, N]
    scores and gold KB rows."""
    return split_metrics(gold_ranks(scores, gold), splits, names, named)


def gold_ranks(scores: torch.Tensor, gold: np.ndarray) -> np.ndarray:
    """Each mention's gold rank among all KB entities (ties pessimistic) from [M, N] scores."""
    gold_t = torch.tensor(np.asarray(gold), dtype=torch.long)
    gold_scores = scores.gather(1, gold_t.unsqueeze(1)).squeeze(1)
    return pessimistic_ranks(scores, gold_scores).numpy()


def other_object(
    gold_qid: str, gold_box: Sequence[float], objects: Sequence[Mapping]
) -> Mapping | None:
    """The first object of a scene (draw order) that is another entity and another place
    (IoU < 0.5 with the gold box), or None when the scene has none."""
    for obj in objects:
        if obj["qid"] != gold_qid and iou(list(obj["box"]), list(gold_box)) < 0.5:
            return obj
    return None


def box_following(
    encoder: ImageTextEncoder,
    mentions: pd.DataFrame,
    sources: list,
    top_prompted: torch.Tensor,
    scene_objects: Mapping[str, Sequence[Mapping]],
    entity_images: list,
    entity_names: Sequence[str],
    kb_row: Mapping[str, int],
    style: PromptStyle,
) -> dict[str, dict[str, float | int]]:
    """Per split: move each mention's prompt onto another object of its scene and see whether
    CLIP zero-shot's top-1 entity follows it (see the module docstring).

    ``mentions`` needs ``source_image``, ``qid``, ``box`` (or None), ``auto_box``, ``split``;
    ``sources`` are the mentions' images without the prompt and ``top_prompted`` CLIP
    zero-shot's top-1 KB row for their VPWiki (prompted) images, both row-aligned with
    ``mentions``; ``scene_objects`` maps a source image to its objects (``qid``, ``box`` in
    that image's pixels). Mentions whose scene is unknown or has no other object are left
    out (``n`` counts the rest). ``*_two`` restricts to scenes of exactly two objects.
    """
    rows = [  # the gold object's place: its reference box, else the box VPWiki drew
        (i, other_object(m.qid, m.auto_box if m.box is None else m.box,
                         scene_objects[m.source_image]))
        for i, m in enumerate(mentions.itertuples(index=False))
        if m.source_image in scene_objects
    ]  # fmt: skip
    rows = [(i, obj) for i, obj in rows if obj is not None and obj["qid"] in kb_row]
    out: dict[str, dict[str, float | int]] = {}
    if not rows:
        return out
    index = [i for i, _ in rows]
    picked = mentions.iloc[index].reset_index(drop=True)
    moved = [draw_prompt(sources[i], obj["box"], style) for i, obj in rows]
    top_moved = clip_zero_shot_scores(encoder, moved, entity_images, entity_names).argmax(1)
    other_rows = torch.tensor([kb_row[obj["qid"]] for _, obj in rows])
    two = torch.tensor([len(scene_objects[src]) == 2 for src in picked["source_image"]])
    changes, follows = top_moved != top_prompted[index], top_moved == other_rows
    for split in pd.unique(picked["split"]):
        mask = torch.tensor((picked["split"] == split).to_numpy())
        out[str(split)] = {
            "n": int(mask.sum()),
            "changes": _share(changes, mask),
            "follows": _share(follows, mask),
            "n_two": int((mask & two).sum()),
            "changes_two": _share(changes, mask & two),
            "follows_two": _share(follows, mask & two),
        }
    return out


def _share(hit: torch.Tensor, mask: torch.Tensor) -> float | None:
    """Percentage of ``hit`` among ``mask``'s rows (None when there are none)."""
    return round(100.0 * float(hit[mask].float().mean()), 2) if bool(mask.any()) else None


def world_scene_objects(truth_scenes: Path, image_prefix: str = "images/mentions/") -> dict:
    """The demo world's objects per scene, keyed by the scene's path in the imported dataset
    (the import keeps each source path under ``images/mentions/``)."""
    table = pd.read_parquet(truth_scenes, columns=["image", "objects"])
    return {
        image_prefix + image: [{"qid": o["qid"], "box": [float(v) for v in o["box"]]}
                               for o in objects]
        for image, objects in zip(table["image"], table["objects"], strict=True)
    }  # fmt: skip
