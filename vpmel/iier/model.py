"""IIER: Implicit Information-Enhanced Reasoning (paper §5, Appendix A.5).

Shapes: B mentions, N entities, P = n + 1 image tokens (CLS + patches), L text tokens.

* §5.1 visual encoder — any Hugging Face ``CLIPVisionModel``. Global feature ``V^G``: the CLS
  hidden state of the layers ``cls_layers`` (paper: 3, 10, 11, 12; the released code:
  ``hidden_states[4, 10, 11, 12]``), concatenated → LayerNorm → MLP → d_v. Local features
  ``V^L``: the output layer's P tokens → FC → d_v. ``hidden_states[0]`` is the embedding
  output, ``hidden_states[l]`` the output of block ``l``.
* §5.3 textual encoder — any HF text tower (BERT, MiniLM, CLIP's text model). Inputs are the
  tokenizer's pair encoding ``[CLS] m_w [SEP] m_s [SEP]`` / ``[CLS] name [SEP] attrs [SEP]``.
  All hidden states → FC → d_t give ``T^L``; ``T^G`` is the [CLS] state (``text_global:
  cls``, the paper), the masked mean (``mean``, for sentence-embedding towers such as
  MiniLM) or the last real token (``eos``, CLIP's text tower), L2-normalised as TFI's G2G
  score asks ("the normalized global features") and as the released code (CLIP's
  normalised ``text_embeds``) feeds it to every unit.
* §5.4 / A.5 interaction units :class:`VFI`, :class:`TFI`, :class:`CMFI`, combined as
  ``combination: paper`` — ``S = (S_V + S_T + S_C) / 3`` — or ``combination: scaled`` (our
  default, see below).

Departure from the paper: the ``scaled`` combination. With frozen pretrained towers and small
data (the demo, or any small VPWiki-style set), the paper's sum adds one pretrained cosine
(G2G, in [-1, 1], weight 1/6) to LayerNorm dot products of freshly initialised units whose
spread across a KB is an order of magnitude larger, so an untrained IIER ranks at random and
training must rebuild what the text tower already knew (on the demo: IIER MRR 26 against 43
for the zero-shot text tower alone). ``scaled`` keeps every unit and equation but
(1) takes T^G for G2G from the tower itself (its own pooled, L2-normalised sentence
embedding, as the released code does with CLIP's normalised ``text_embeds``) instead of from
the freshly initialised FC; (2) turns the other terms into cosines — G2L =
cos(FC(T_E^G), h_t), S_V^dir = cos(h_v, V^G), S_C = cos(h_e, h_m) — so every term lives in
[-1, 1]; (3) combines them as ``S = τ_O (G2G + w_T G2L + w_V S_V + w_C S_C + w_I I2I + w_X I2T)``
with learned weights ``w`` that start at zero and a learned temperature ``τ_O``, where I2I and
I2T are what the pretrained image-text encoder itself says (cosine of its own image
embeddings of mention and entity, and of the mention image against the entity text: the
visual counterparts of G2G, which CLIP-style towers are trained for); the units' own scores for
L_V, L_T, L_C get learned temperatures too (``S_V = τ_V s_v``, ``S_T = τ_T (G2G + G2L) / 2``,
``S_C = τ_C s_c``). An untrained IIER therefore ranks exactly as its pretrained text cosine,
and training can only add what the visual prompt and the units bring.
* §5.5 loss ``L = L_O + λ (L_V + L_T + L_C)`` with in-batch negatives (:func:`iier_loss`).

Padding is masked everywhere: keys of padded mention tokens get no attention and padded
entity query rows are left out of TFI's mean pooling (the released code does neither).

Each unit holds its own equations, split into what depends on the entity alone
(``entity_side``), on the mention alone (``mention_side``) and the pairwise rest (``score``);
:class:`IIER` composes them (the towers, the units' sides into :class:`EntitySide` /
:class:`MentionSide`, and the combination into S), so :mod:`vpmel.iier.retrieval` can precompute
the entity side of the whole KB once. Training uses the very same functions.

A checkpoint (:meth:`IIER.save`) refers to the encoder folder its towers come from instead
of copying it (:mod:`vpmel.iier.checkpoint`).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from vpmel.iier.checkpoint import (
    CONFIG_FILE,
    ENCODER_DIR,
    ENCODER_KEY,
    HEAD_FILE,
    checkpoint_encoder,
    encoder_reference,
    seed_checkpoints,
)
from vpmel.params import from_params

if TYPE_CHECKING:  # imported lazily: the units and scoring need only torch
    from vpmel.encoders.model import ImageTextEncoder

PAPER_CLS_LAYERS: tuple[int, ...] = (3, 10, 11, 12)
RELEASED_CLS_LAYERS: tuple[int, ...] = (4, 10, 11, 12)
TEXT_GLOBALS = ("cls", "mean", "eos")
COMBINATIONS = ("scaled", "paper")
#: starting temperature of the scaled combination's cosines (CLIP's initial logit scale)
INIT_TEMPERATURE = 1 / 0.07
#: the terms the scaled combination weighs (each weight starts at zero) beside G2G
SCALED_TERMS = ("G2L", "S_V", "S_C", "I2I", "I2T")


@dataclass(frozen=True)
class IIERConfig:
    """Sizes and choices of IIER (paper A.1: d_v = d_c = 96, d_t = 512, max length 40)."""

    d_v: int = 96
    d_t: int = 512
    d_c: int = 96  # CMFI's width (FC_c1: d_t -> d_c, FC_c2: d_v -> d_c)
    cls_layers: tuple[int, ...] = PAPER_CLS_LAYERS
    text_global: str | None = "cls"  # None: the text tower's own pooling (encoder.text_pooling)
    max_text_length: int = 40
    mlp_hidden: int | None = None  # hidden width of the V^G MLP; None = the tower's width
    train_vision: bool = True
    train_text: bool = True
    # "scaled" (our default; see the module docstring) or "paper": S = (S_V + S_T + S_C) / 3
    combination: str = "scaled"

    def __post_init__(self) -> None:
        if self.combination not in COMBINATIONS:
            raise ValueError(f"combination must be one of {COMBINATIONS}, not {self.combination!r}")
        if self.text_global is not None and self.text_global not in TEXT_GLOBALS:
            raise ValueError(f"text_global must be one of {TEXT_GLOBALS}, not {self.text_global!r}")
        if not self.cls_layers:
            raise ValueError("cls_layers must name at least one layer")
        object.__setattr__(self, "cls_layers", tuple(int(x) for x in self.cls_layers))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> IIERConfig:
        return from_params(cls, values, "IIER model")


# ------------------------------------------------------------------------------ features


@dataclass
class Features:
    """What the encoders give for a batch of mentions or entities."""

    v_global: Tensor  # V^G [B, d_v]
    v_local: Tensor  # V^L [B, P, d_v]
    t_global: Tensor  # T^G [B, d_t], L2-normalised
    t_local: Tensor  # T^L [B, L, d_t]
    t_mask: Tensor  # [B, L]; 1 = token, 0 = padding
    v_tower: Tensor  # the towers' own image embedding (CLIP space), L2-normalised [B, p]
    t_tower: Tensor  # the towers' own text embedding (CLIP space), L2-normalised [B, p]


class _Tensors:
    """Dataclass-of-tensors helpers: slicing along rows, concatenation, device moves."""

    def rows(self, lo: int, hi: int) -> Any:
        return type(self)(**{f.name: getattr(self, f.name)[lo:hi] for f in fields(self)})

    def to(self, device: torch.device | str) -> Any:
        return type(self)(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def __len__(self) -> int:
        return len(getattr(self, fields(self)[0].name))

    @classmethod
    def cat(cls, parts: list[Any]) -> Any:
        return cls(**{f.name: torch.cat([getattr(p, f.name) for p in parts]) for f in fields(cls)})

    def nbytes(self) -> int:
        return sum(getattr(self, f.name).nbytes for f in fields(self))


@dataclass
class EntitySide(_Tensors):
    """Everything the score needs from an entity alone (precomputed once for the KB)."""

    v_global: Tensor  # V_E^G [N, d_v]                 VFI (both directions)
    v_pooled: Tensor  # MeanPooling(V_E^L) [N, d_v]    VFI_M2E
    t_global: Tensor  # T_E^G [N, d_t]                 TFI G2G
    t_fc_global: Tensor  # FC(T_E^G) [N, d_t]          TFI G2L
    queries: Tensor  # T_E^L W_tq [N, L, d_t]          TFI G2L
    query_weight: Tensor  # [N, L] mask / #tokens: TFI's mean over real query rows
    h: Tensor  # h_e [N, d_c]                          CMFI
    v_tower: Tensor  # [N, p]                          scaled: image-image, pretrained
    t_tower: Tensor  # [N, p]                          scaled: image-text, pretrained


@dataclass
class MentionSide(_Tensors):
    """Everything the score needs from a mention alone."""

    v_global: Tensor  # V_M^G [B, d_v]
    v_pooled: Tensor  # MeanPooling(V_M^L) [B, d_v]    VFI_E2M
    t_global: Tensor  # T_M^G [B, d_t]
    keys: Tensor  # T_M^L W_tk / sqrt(d_t) [B, L, d_t]
    values: Tensor  # T_M^L W_tv [B, L, d_t]
    key_bias: Tensor  # [B, L]: 0 for tokens, -inf-ish for padding
    h: Tensor  # h_m [B, d_c]
    v_tower: Tensor  # [B, p]


class Scores(NamedTuple):
    """Pairwise scores [B, N]: S (§5.5) and the units' S_V, S_T, S_C (§5.4)."""

    s: Tensor
    s_v: Tensor
    s_t: Tensor
    s_c: Tensor


# ------------------------------------------------------------------------------ encoders


class VisualEncoder(nn.Module):
    """§5.1 on top of a CLIP vision tower's hidden states.

    ``F^l = v_[CLS] of V^l``;  ``V^G = MLP(LN(Concat(F^l for l in cls_layers)))``;
    ``V^L = FC(V^last)``.
    """

    def __init__(self, width: int, cls_layers: tuple[int, ...], d_v: int, mlp_hidden: int) -> None:
        super().__init__()
        self.cls_layers = tuple(cls_layers)
        self.norm = nn.LayerNorm(len(cls_layers) * width)
        self.mlp = nn.Sequential(
            nn.Linear(len(cls_layers) * width, mlp_hidden), nn.GELU(), nn.Linear(mlp_hidden, d_v)
        )
        self.fc = nn.Linear(width, d_v)

    def forward(self, cls_states: Tensor, last: Tensor) -> tuple[Tensor, Tensor]:
        """``cls_states`` [B, len(cls_layers), width] (the F^l), ``last`` [B, P, width]."""
        return self.mlp(self.norm(cls_states.flatten(1))), self.fc(last)


class TextualEncoder(nn.Module):
    """§5.3 on top of a text tower's last hidden states: ``T^L = FC(H)``, ``T^G`` pooled.

    ``global_from_tower``: T^G is pooled from the tower's own states ``H`` (its pretrained
    sentence embedding; the ``scaled`` combination) instead of from ``FC(H)`` (the paper).
    """

    def __init__(self, width: int, d_t: int, text_global: str, global_from_tower: bool) -> None:
        super().__init__()
        self.fc = nn.Linear(width, d_t)
        self.text_global = text_global
        self.global_from_tower = global_from_tower

    def forward(self, hidden: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        local = self.fc(hidden)
        pooled = pool_text(hidden if self.global_from_tower else local, mask, self.text_global)
        return F.normalize(pooled, dim=-1), local


def pool_text(states: Tensor, mask: Tensor, how: str) -> Tensor:
    """[B, L, d] -> [B, d]: the first token (``cls``), the masked mean (``mean``) or the last
    real token (``eos``, where CLIP's text tower pools)."""
    if how == "cls":
        return states[:, 0]
    if how == "mean":
        m = mask.unsqueeze(-1).to(states.dtype)
        return (states * m).sum(1) / m.sum(1).clamp(min=1.0)
    last = mask.long().sum(1).clamp(min=1) - 1
    return states[torch.arange(len(states), device=states.device), last]


# ------------------------------------------------------------------------------ units
#
# Each unit holds its own equations (§5.4, Appendix A.5): ``entity_side`` and
# ``mention_side`` turn a side's :class:`Features` into the fields of :class:`EntitySide` /
# :class:`MentionSide` it needs, ``score`` their pairwise score(s) [B, N] from those fields.
# ``cosine`` (the ``scaled`` combination) turns the unit's dot products into cosines.


class VFIDirection(nn.Module):
    """One direction of VFI (Appendix A.5). For M2E::

        h̄_p  = MeanPooling(V_E^L)
        h_vc = FC(LayerNorm(h̄_p + V_M^G))
        h_vg = Tanh(FC(h_vc))
        h_v  = LayerNorm(h_vg * h_vc + V_E^G)
        S_V^{M2E} = h_v · V_M^G

    E2M swaps the roles. Here "query" is the side whose global feature enters the first
    LayerNorm and the final dot product, "target" the other.
    """

    def __init__(self, d_v: int, cosine: bool = False) -> None:
        super().__init__()
        self.norm_in = nn.LayerNorm(d_v)
        self.fc = nn.Linear(d_v, d_v)
        self.gate = nn.Linear(d_v, d_v)
        self.norm_out = nn.LayerNorm(d_v)
        self.cosine = cosine  # S_V = cos(h_v, V_M^G) instead of the dot (``scaled``)

    def forward(self, query_global: Tensor, target_pooled: Tensor, target_global: Tensor) -> Tensor:
        """[Q, d_v], [T, d_v], [T, d_v] -> scores [Q, T]."""
        h_vc = self.fc(self.norm_in(target_pooled.unsqueeze(0) + query_global.unsqueeze(1)))
        h_vg = torch.tanh(self.gate(h_vc))
        h_v = self.norm_out(h_vg * h_vc + target_global.unsqueeze(0))
        if self.cosine:
            h_v, query_global = F.normalize(h_v, dim=-1), F.normalize(query_global, dim=-1)
        return torch.bmm(h_v, query_global.unsqueeze(-1)).squeeze(-1)


class VFI:
    """Visual-Features Interaction (§5.4, Appendix A.5)::

        S_V^{M2E} = VFI_{M2E}(V_M^G, V_E^G, V_E^L)      (:class:`VFIDirection`)
        S_V^{E2M} = VFI_{E2M}(V_E^G, V_M^G, V_M^L)
        S_V       = (S_V^{M2E} + S_V^{E2M}) / 2

    Each side keeps V^G and MeanPooling(V^L). The unit's weights are its two directions'
    ``m2e`` and ``e2m``, which :class:`IIER` registers as ``vfi_m2e`` / ``vfi_e2m`` (the
    names in checkpoints and training states), so the unit itself is a plain class.
    """

    def __init__(self, d_v: int, cosine: bool = False) -> None:
        self.m2e = VFIDirection(d_v, cosine)
        self.e2m = VFIDirection(d_v, cosine)

    @staticmethod
    def side(f: Features) -> dict[str, Tensor]:
        """V^G and h̄_p = MeanPooling(V^L) of either side."""
        return {"v_global": f.v_global, "v_pooled": f.v_local.mean(1)}

    def entity_side(self, e: Features) -> dict[str, Tensor]:
        return self.side(e)

    def mention_side(self, m: Features) -> dict[str, Tensor]:
        return self.side(m)

    def score(self, m: MentionSide, e: EntitySide) -> Tensor:
        """S_V [B, N]."""
        s_v_m2e = self.m2e(m.v_global, e.v_pooled, e.v_global)
        s_v_e2m = self.e2m(e.v_global, m.v_pooled, m.v_global).T
        return (s_v_m2e + s_v_e2m) / 2


class TextScores(NamedTuple):
    """TFI's two scores [B, N]; ``s_t`` is the unit's S_T."""

    g2g: Tensor
    g2l: Tensor

    @property
    def s_t(self) -> Tensor:
        """S_T = (S_T^{G2G} + S_T^{G2L}) / 2."""
        return (self.g2g + self.g2l) / 2


class TFI(nn.Module):
    """Textual-Features Interaction (§5.4, Appendix A.5)::

        S_T^{G2G} = T_M^G · T_E^G
        Q, K, V   = T_E^L W_tq, T_M^L W_tk, T_M^L W_tv
        H_t       = softmax(Q K^T / sqrt(d_T)) V        (padded keys masked)
        h_t       = LayerNorm(MeanPooling(H_t))          (over the entity's real tokens)
        S_T^{G2L} = FC(T_E^G) · h_t
        S_T       = (S_T^{G2G} + S_T^{G2L}) / 2

    The entity side keeps T_E^G, FC(T_E^G), Q and the weights of the mean over its real
    tokens; the mention side T_M^G, K / sqrt(d_T), V and the keys' padding bias.
    ``MeanPooling(H_t) = p̄ V`` with ``p̄`` the mean attention row, which is what
    :meth:`g2l` computes: one GEMM for all query-key dot products of a block, no
    [N, B, L, d] context tensor.
    """

    def __init__(self, d_t: int, d_global: int | None = None, cosine: bool = False) -> None:
        super().__init__()
        self.d_t = d_t
        self.query = nn.Linear(d_t, d_t)
        self.key = nn.Linear(d_t, d_t)
        self.value = nn.Linear(d_t, d_t)
        self.norm = nn.LayerNorm(d_t)
        self.fc = nn.Linear(d_global or d_t, d_t)  # FC(T_E^G); T^G may be the tower's width
        self.cosine = cosine  # S_T^{G2L} = cos(FC(T_E^G), h_t) (``scaled``)

    def entity_side(self, e: Features) -> dict[str, Tensor]:
        weight = e.t_mask.to(e.t_local.dtype)
        t_fc_global = self.fc(e.t_global)
        return {
            "t_global": e.t_global,
            "t_fc_global": F.normalize(t_fc_global, dim=-1) if self.cosine else t_fc_global,
            "queries": self.query(e.t_local),
            "query_weight": weight / weight.sum(1, keepdim=True).clamp(min=1.0),
        }

    def mention_side(self, m: Features) -> dict[str, Tensor]:
        neg = torch.finfo(m.t_local.dtype).min
        return {
            "t_global": m.t_global,
            "keys": self.key(m.t_local) / math.sqrt(self.d_t),
            "values": self.value(m.t_local),
            "key_bias": torch.zeros_like(m.t_mask, dtype=m.t_local.dtype).masked_fill(
                m.t_mask == 0, neg
            ),
        }

    def score(self, m: MentionSide, e: EntitySide) -> TextScores:
        """S_T^{G2G} and S_T^{G2L} [B, N]."""
        return TextScores(m.t_global @ e.t_global.T, self.g2l(m, e))

    def g2l(self, m: MentionSide, e: EntitySide) -> Tensor:
        """S_T^{G2L} [B, N]."""
        queries, keys = e.queries, m.keys
        n, lq, d = queries.shape
        b, lk, _ = keys.shape
        logits = queries.reshape(n * lq, d) @ keys.reshape(b * lk, d).T  # [N*Lq, B*Lk]
        logits = logits.view(n, lq, b, lk) + m.key_bias.view(1, 1, b, lk)
        attention = torch.softmax(logits, dim=-1).view(n, lq, b * lk)
        weight = e.query_weight.unsqueeze(1).to(attention.dtype)
        mean_row = torch.bmm(weight, attention)  # [N, 1, B*Lk]
        mean_row = mean_row.view(n, b, lk).transpose(0, 1)  # [B, N, Lk]
        h_t = self.norm(torch.bmm(mean_row, m.values))  # [B, N, d]
        if self.cosine:  # t_fc_global arrives normalised (entity side)
            h_t = F.normalize(h_t, dim=-1)
        return (h_t * e.t_fc_global.unsqueeze(0)).sum(-1)


class CMFI(nn.Module):
    """Cross-Modal Features Interaction (§5.4, Appendix A.5), for one side (entity or
    mention)::

        h_t = FC_c1(T^G),  H_v = FC_c2(V^L)
        α_i = softmax_i(h_t · H_v^i)            i = 1 .. n+1
        h_c = Σ_i α_i H_v^i
        h_g = Tanh(FC_c3(h_t))
        h   = LayerNorm(h_g * h_t + h_c)        (h_e, h_m; :meth:`forward`)

    and ``S_C = h_e · h_m`` (:meth:`score`).
    """

    def __init__(self, d_t: int, d_v: int, d_c: int, cosine: bool = False) -> None:
        super().__init__()
        self.text_fc = nn.Linear(d_t, d_c)  # FC_c1
        self.image_fc = nn.Linear(d_v, d_c)  # FC_c2
        self.gate_fc = nn.Linear(d_c, d_c)  # FC_c3
        self.norm = nn.LayerNorm(d_c)
        self.cosine = cosine  # S_C = cos(h_e, h_m) (``scaled``)

    def forward(self, t_global: Tensor, v_local: Tensor) -> Tensor:
        """[B, d_t], [B, P, d_v] -> h [B, d_c]."""
        h_t = self.text_fc(t_global)
        h_v = self.image_fc(v_local)
        alpha = torch.softmax(torch.bmm(h_v, h_t.unsqueeze(-1)).squeeze(-1), dim=-1)  # [B, P]
        h_c = torch.bmm(alpha.unsqueeze(1), h_v).squeeze(1)
        return self.norm(torch.tanh(self.gate_fc(h_t)) * h_t + h_c)

    def h(self, t_global: Tensor, v_local: Tensor) -> Tensor:
        """h as the score reads it: L2-normalised under ``cosine``."""
        h = self(t_global, v_local)
        return F.normalize(h, dim=-1) if self.cosine else h

    def entity_side(self, e: Features) -> dict[str, Tensor]:
        return {"h": self.h(e.t_global, e.v_local)}

    def mention_side(self, m: Features) -> dict[str, Tensor]:
        return {"h": self.h(m.t_global, m.v_local)}

    def score(self, m: MentionSide, e: EntitySide) -> Tensor:
        """S_C [B, N]."""
        return m.h @ e.h.T


# ------------------------------------------------------------------------------ the model


class IIER(nn.Module):
    """The whole model: an :class:`ImageTextEncoder`'s towers plus IIER's heads and units.

    The encoder's own CLIP-style projections and logit scale are not used by IIER and are
    frozen (so distributed training sees no unused trainable parameters).
    """

    def __init__(self, encoder: ImageTextEncoder, cfg: IIERConfig) -> None:
        super().__init__()
        if cfg.text_global is None:  # the tower's own: cls (BERT), eos (CLIP), mean (MiniLM)
            cfg = replace(cfg, text_global=encoder.text_pooling)
        self.cfg = cfg
        self.encoder = encoder
        check_towers(cfg, encoder)
        vision = encoder.vision_model.config
        width = vision.hidden_size
        self.visual = VisualEncoder(width, cfg.cls_layers, cfg.d_v, cfg.mlp_hidden or width)
        text_width = encoder.text_model.config.hidden_size
        scaled = cfg.combination == "scaled"
        self.textual = TextualEncoder(text_width, cfg.d_t, cfg.text_global, scaled)
        d_global = text_width if scaled else cfg.d_t  # the width of T^G
        self.vfi = VFI(cfg.d_v, cosine=scaled)
        # VFI's weights, under the names checkpoints and training states use
        self.vfi_m2e, self.vfi_e2m = self.vfi.m2e, self.vfi.e2m
        self.tfi = TFI(cfg.d_t, d_global, cosine=scaled)
        self.cmfi = CMFI(d_global, cfg.d_v, cfg.d_c, cosine=scaled)
        if scaled:
            # log temperatures of S (τ_O) and of the units' own scores (τ_V, τ_T, τ_C), and
            # the weights w_T, w_V, w_C of G2L, S_V and S_C in S, which start at zero
            self.log_temperature = nn.Parameter(torch.full((4,), math.log(INIT_TEMPERATURE)))
            self.unit_weight = nn.Parameter(torch.zeros(len(SCALED_TERMS)))
        for unused in (encoder.visual_projection, encoder.text_projection):
            unused.requires_grad_(False)
        encoder.logit_scale.requires_grad_(False)
        encoder.vision_model.requires_grad_(cfg.train_vision)
        encoder.text_model.requires_grad_(cfg.train_text)
        # parts of the towers IIER never reads: the vision tower's final LayerNorm (IIER uses
        # the hidden states before it) and a BERT pooler
        for unused in _unused_tower_parts(encoder):
            unused.requires_grad_(False)

    # ---------------------------------------------------------------- properties

    @property
    def device(self) -> torch.device:
        return self.tfi.query.weight.device

    @property
    def text_frozen(self) -> bool:
        return not self.cfg.train_text

    @property
    def vision_frozen(self) -> bool:
        return not self.cfg.train_vision

    def train(self, mode: bool = True) -> IIER:
        super().train(mode)
        if not self.cfg.train_vision:  # a frozen tower always runs without dropout
            self.encoder.vision_model.eval()
        if not self.cfg.train_text:
            self.encoder.text_model.eval()
        return self

    # ---------------------------------------------------------------- encoders

    def vision_hidden(self, pixel_values: Tensor) -> tuple[Tensor, Tensor]:
        """What §5.1 reads from the vision tower: the CLS states of ``cls_layers``
        [B, k, width] and the output layer [B, P, width] (cacheable when frozen)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.cfg.train_vision):
            out = self.encoder.vision_model(pixel_values=pixel_values, output_hidden_states=True)
        states = out.hidden_states
        return torch.stack([states[x][:, 0] for x in self.cfg.cls_layers], 1), states[-1]

    def image_features(self, pixel_values: Tensor) -> tuple[Tensor, Tensor]:
        """(V^G [B, d_v], V^L [B, P, d_v]) — §5.1."""
        return self.visual(*self.vision_hidden(pixel_values))

    def text_hidden(
        self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None
    ) -> Tensor:
        """The text tower's last hidden states [B, L, width] (cacheable when frozen)."""
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.cfg.train_text):
            return self.encoder.text_model(**kwargs).last_hidden_state

    def tower_states(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(CLS states, last vision layer, text hidden states, attention mask) of a batch
        holding ``pixel_values`` (or a frozen tower's cached ``vision_cls`` and
        ``vision_last``), ``attention_mask`` and ``input_ids`` (+ ``token_type_ids``) or a
        frozen tower's cached ``text_hidden``."""
        if "vision_cls" in batch:
            cls_states, last = batch["vision_cls"], batch["vision_last"]
        else:
            cls_states, last = self.vision_hidden(batch["pixel_values"])
        mask = batch["attention_mask"]
        hidden = batch.get("text_hidden")
        if hidden is None:
            hidden = self.text_hidden(batch["input_ids"], mask, batch.get("token_type_ids"))
        return cls_states, last, hidden, mask

    def encode(self, batch: dict[str, Tensor]) -> Features:
        """Features of a batch of model inputs (see :meth:`tower_states`)."""
        cls_states, last, hidden, mask = self.tower_states(batch)
        v_global, v_local = self.visual(cls_states, last)
        t_global, t_local = self.textual(hidden, mask)
        v_tower, t_tower = self.tower_embeddings(last, hidden, mask)
        return Features(v_global, v_local, t_global, t_local, mask, v_tower, t_tower)

    def tower_embeddings(self, last: Tensor, hidden: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """What the pretrained image-text encoder itself says: its projected, normalised image
        embedding (pooled CLS of the output layer -> post LayerNorm -> projection) and text
        embedding (pooled as ``text_global`` -> projection). Frozen; used by ``scaled``."""
        with torch.no_grad():
            post = _post_layernorm(self.encoder)
            pooled = post(last[:, 0]) if post is not None else last[:, 0]
            v = F.normalize(self.encoder.visual_projection(pooled), dim=-1)
            t = self.encoder.text_projection(pool_text(hidden, mask, self.cfg.text_global))
            return v, F.normalize(t, dim=-1)

    # ---------------------------------------------------------------- the two sides

    @property
    def scaled(self) -> bool:
        return self.cfg.combination == "scaled"

    def entity_side(self, e: Features) -> EntitySide:
        """Everything that depends on the entity alone: each unit's entity side and the
        towers' own embeddings (``scaled``)."""
        return EntitySide(
            **self.vfi.entity_side(e),
            **self.tfi.entity_side(e),
            **self.cmfi.entity_side(e),
            v_tower=e.v_tower,
            t_tower=e.t_tower,
        )

    def mention_side(self, m: Features) -> MentionSide:
        """Everything that depends on the mention alone."""
        return MentionSide(
            **self.vfi.mention_side(m),
            **self.tfi.mention_side(m),
            **self.cmfi.mention_side(m),
            v_tower=m.v_tower,
        )

    def score(self, m: MentionSide, e: EntitySide) -> Scores:
        """All pairwise scores [B, N] (§5.4, §5.5): the units' S_V, S_T, S_C, combined as
        ``cfg.combination`` says."""
        s_v = self.vfi.score(m, e)
        text = self.tfi.score(m, e)
        s_c = self.cmfi.score(m, e)
        if not self.scaled:  # the paper: S = (S_V + S_T + S_C) / 3
            s_t = text.s_t
            return Scores((s_v + s_t + s_c) / 3, s_v, s_t, s_c)
        # scaled: S = τ_O (G2G + w_T G2L + w_V S_V + w_C S_C + w_I I2I + w_X I2T), cosines
        tau = self.log_temperature.clamp(max=math.log(100.0)).exp()
        w_t, w_v, w_c, w_i, w_x = self.unit_weight
        i2i = m.v_tower @ e.v_tower.T  # the towers' own image-image cosine
        i2t = m.v_tower @ e.t_tower.T  # ... and mention image vs entity text
        s = tau[0] * (text.g2g + w_t * text.g2l + w_v * s_v + w_c * s_c + w_i * i2i + w_x * i2t)
        return Scores(s, tau[1] * s_v, tau[2] * text.s_t, tau[3] * s_c)

    def forward(self, mentions: dict[str, Tensor], entities: dict[str, Tensor]) -> Scores:
        """Scores of every mention of the batch against every entity of the batch."""
        return self.score(
            self.mention_side(self.encode(mentions)), self.entity_side(self.encode(entities))
        )

    # ---------------------------------------------------------------- saving

    def head_state(self) -> dict[str, Tensor]:
        """IIER's own weights (everything but the encoder's towers)."""
        return {
            k: v.detach().contiguous()
            for k, v in self.state_dict().items()
            if not k.startswith("encoder.")
        }

    def save(self, folder: Path, extra: dict[str, Any] | None = None) -> None:
        """``folder/iier.safetensors`` (heads and units) and ``folder/iier.json`` (config,
        ``extra``, e.g. how the inputs were built, and the reference to the encoder folder
        the towers were loaded from; see :mod:`vpmel.iier.checkpoint`). Towers that were
        trained, or that come from no folder, are saved in ``folder/encoder/`` instead
        (:meth:`ImageTextEncoder.save`)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        meta: dict[str, Any] = {"format": 1, "config": asdict(self.cfg), "extra": extra or {}}
        source = self.encoder.folder
        if source is None or self.cfg.train_vision or self.cfg.train_text:
            self.encoder.save(folder / ENCODER_DIR)
        else:
            meta[ENCODER_KEY] = encoder_reference(source)
        save_file(self.head_state(), folder / HEAD_FILE)
        (folder / CONFIG_FILE).write_text(json.dumps(meta, indent=1) + "\n")

    @classmethod
    def load(cls, folder: Path, encoder_dir: Path | None = None) -> tuple[IIER, dict[str, Any]]:
        """Read a folder written by :meth:`save`; returns (model in eval mode, extra). A
        `train` output with one checkpoint per seed (``seed_<s>/``) loads its first seed.
        The towers come from ``encoder_dir`` when given, else from the encoder folder the
        checkpoint records (or its own ``encoder/``); a folder other than the one it was
        trained with is refused (:func:`~vpmel.iier.checkpoint.checkpoint_encoder`)."""
        folder = seed_checkpoints(folder)[0][1]
        meta_path = folder / CONFIG_FILE
        if not meta_path.is_file():
            raise FileNotFoundError(f"{folder}: no {CONFIG_FILE}; not an IIER checkpoint")
        from vpmel.encoders.model import ImageTextEncoder

        meta = json.loads(meta_path.read_text())
        # checkpoints written before `combination` existed used the paper's combination
        cfg = IIERConfig.from_dict({"combination": "paper"} | meta["config"])
        encoder = ImageTextEncoder.load(checkpoint_encoder(folder, meta, encoder_dir))
        model = cls(encoder, cfg)
        missing, unexpected = model.load_state_dict(load_file(folder / HEAD_FILE), strict=False)
        missing = [k for k in missing if not k.startswith("encoder.")]
        if missing or unexpected:
            raise ValueError(f"{folder / HEAD_FILE}: missing {missing}, unexpected {unexpected}")
        return model.eval(), meta.get("extra", {})


def check_towers(cfg: IIERConfig, encoder: ImageTextEncoder) -> None:
    """Settings the towers cannot serve, each one line naming the ``train`` param to change:
    CLS layers the vision tower does not have, and [CLS] pooling on a causal text tower
    (CLIP's: position 0 sees only itself, so T^G would be the same for every input)."""
    from vpmel.encoders.model import is_causal_text

    layers = encoder.vision_model.config.num_hidden_layers
    bad = [x for x in cfg.cls_layers if not 0 <= x <= layers]
    if bad:
        raise ValueError(
            f"train.model.cls_layers {list(cfg.cls_layers)}: the vision tower has {layers} layers, "
            f"so {bad} do not exist; pick layers in 0..{layers} (0 = embeddings, l = output "
            "of block l)"
        )
    if cfg.text_global == "cls" and is_causal_text(encoder.text_model):
        raise ValueError(
            "train.model.text_global: cls on CLIP's causal text tower gives a constant T^G; "
            "use eos (or a BERT text tower)"
        )


def _post_layernorm(encoder: ImageTextEncoder) -> nn.Module | None:
    vision = encoder.vision_model
    inner = getattr(vision, "vision_model", vision)
    return getattr(inner, "post_layernorm", None)


def _unused_tower_parts(encoder: ImageTextEncoder) -> list[nn.Module]:
    vision = encoder.vision_model
    parts = [
        getattr(vision, "post_layernorm", None),
        getattr(getattr(vision, "vision_model", None), "post_layernorm", None),
        getattr(encoder.text_model, "pooler", None),
    ]
    return [p for p in parts if isinstance(p, nn.Module)]


# ------------------------------------------------------------------------------ the loss


class Loss(NamedTuple):
    total: Tensor
    o: Tensor
    v: Tensor
    t: Tensor
    c: Tensor


def contrastive(scores: Tensor, targets: Tensor) -> Tensor:
    """``L_X = -log exp(S_X(M_j, E_j)) / Σ_i exp(S_X(M_j, E_i))`` averaged over mentions."""
    return F.cross_entropy(scores.float(), targets)


LOSS_TERMS = ("V", "T", "C")


def iier_loss(
    scores: Scores, targets: Tensor, lam: float, terms: tuple[str, ...] = LOSS_TERMS
) -> Loss:
    """§5.5: ``L = L_O + λ (L_V + L_T + L_C)`` over a batch's [B, U] score matrices.

    The U columns are the batch's *distinct* gold entities and ``targets[j]`` is mention
    j's column, so mentions that share a gold entity are never each other's negatives.
    ``terms`` selects which L_X enter the sum (Table 9: L_O alone is ``()``); all four are
    always returned for logging.
    """
    unknown = sorted(set(terms) - set(LOSS_TERMS))
    if unknown:
        raise ValueError(f"unknown loss terms {unknown}; known: {list(LOSS_TERMS)}")
    o = contrastive(scores.s, targets)
    parts = {
        "V": contrastive(scores.s_v, targets),
        "T": contrastive(scores.s_t, targets),
        "C": contrastive(scores.s_c, targets),
    }
    auxiliary = sum((parts[x] for x in terms), torch.zeros_like(o))
    return Loss(o + lam * auxiliary, o, parts["V"], parts["T"], parts["C"])
