"""IIER's units against straightforward implementations of the paper's equations (A.5).

The references below are written from the paper with loops and einsum, sharing no code with
vpmel.iier.model; tiny random models are built from configs (offline).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertModel, BertTokenizerFast, CLIPVisionConfig, CLIPVisionModel

from vpmel.encoders.model import ImageTextEncoder, demo_image_processor
from vpmel.iier.checkpoint import encoder_fingerprint
from vpmel.iier.model import (
    CMFI,
    IIER,
    PAPER_CLS_LAYERS,
    RELEASED_CLS_LAYERS,
    TFI,
    VFI,
    IIERConfig,
    Scores,
    VFIDirection,
    iier_loss,
)

LETTERS = "abcdefghijklmnopqrstuvwxyz0123456789"


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_encoder(tmp_path: Path, layers: int = 12, text_frozen: bool = False) -> ImageTextEncoder:
    """A 12-layer 16-wide CLIP vision tower (16 px, patch 8: 5 tokens) and a 2-layer BERT
    with a character-level WordPiece vocabulary; random weights (seed before calling)."""
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *LETTERS, *(f"##{c}" for c in LETTERS)]
    vocab_file = tmp_path / "vocab.txt"
    vocab_file.parent.mkdir(parents=True, exist_ok=True)
    vocab_file.write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(str(vocab_file), do_lower_case=True)
    text = BertModel(
        BertConfig(
            vocab_size=len(vocab),
            hidden_size=24,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=48,
            max_position_embeddings=64,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
    )
    vision = CLIPVisionModel(
        CLIPVisionConfig(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=layers,
            num_attention_heads=2,
            image_size=16,
            patch_size=8,
        )
    )
    enc = ImageTextEncoder(vision, text, demo_image_processor(16), tokenizer, projection_dim=8)
    if text_frozen:
        enc.freeze_text()
    return enc


def tiny_config(**kw) -> IIERConfig:
    return IIERConfig(**({"d_v": 12, "d_t": 20, "d_c": 10, "max_text_length": 40} | kw))


def model_and_batches(tmp_path: Path, seed: int = 0, **kw):
    torch.manual_seed(seed)
    model = IIER(tiny_encoder(tmp_path), tiny_config(**kw)).eval()
    tok = model.encoder.tokenizer

    def batch(pairs, n_img):
        enc = tok([a for a, _ in pairs], [b for _, b in pairs], padding=True, return_tensors="pt")
        return {
            "pixel_values": torch.randn(n_img, 3, 16, 16),
            "input_ids": enc["input_ids"],
            "attention_mask": enc["attention_mask"],
            "token_type_ids": enc["token_type_ids"],
        }

    mentions = batch([("cat animal", "a cat sits on a mat"), ("", "red car"), ("x", "yy")], 3)
    entities = batch(
        [
            ("cat", "small furry animal"),
            ("car", "vehicle with four wheels"),
            ("dog", "pet"),
            ("tree", "a tall plant with leaves and branches"),
        ],
        4,
    )
    return model, mentions, entities


# ------------------------------------------------------------------------------ references


def ref_layer_norm(x: torch.Tensor, ln: torch.nn.LayerNorm) -> torch.Tensor:
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias


def ref_linear(x: torch.Tensor, fc: torch.nn.Linear) -> torch.Tensor:
    return torch.einsum("...i,oi->...o", x, fc.weight) + fc.bias


@torch.no_grad()
def ref_vfi(unit: VFIDirection, v_m_g, v_e_g, v_e_l) -> float:
    """S_V^{M2E} for one pair, A.5."""
    h_p = v_e_l.mean(0)
    h_vc = ref_linear(ref_layer_norm(h_p + v_m_g, unit.norm_in), unit.fc)
    h_vg = torch.tanh(ref_linear(h_vc, unit.gate))
    h_v = ref_layer_norm(h_vg * h_vc + v_e_g, unit.norm_out)
    return float(torch.dot(h_v, v_m_g))


@torch.no_grad()
def ref_tfi_g2l(unit: TFI, t_e_g, t_e_l, e_mask, t_m_l, m_mask) -> float:
    """S_T^{G2L} for one pair, A.5, with padding removed (not masked) first."""
    t_e_l, t_m_l = t_e_l[e_mask.bool()], t_m_l[m_mask.bool()]
    q, k, v = (
        ref_linear(t_e_l, unit.query),
        ref_linear(t_m_l, unit.key),
        ref_linear(t_m_l, unit.value),
    )
    d = q.shape[-1]
    rows = []
    for i in range(len(q)):
        logits = torch.stack([torch.dot(q[i], k[j]) for j in range(len(k))]) / math.sqrt(d)
        w = torch.exp(logits - logits.max())
        w = w / w.sum()
        rows.append(sum(w[j] * v[j] for j in range(len(k))))
    h_t = ref_layer_norm(torch.stack(rows).mean(0), unit.norm)
    return float(torch.dot(ref_linear(t_e_g, unit.fc), h_t))


@torch.no_grad()
def ref_cmfi_h(unit: CMFI, t_g, v_l) -> torch.Tensor:
    """h (A.5's h_e / h_m) for one side."""
    h_t = ref_linear(t_g, unit.text_fc)
    h_v = ref_linear(v_l, unit.image_fc)
    e = torch.stack([torch.exp(torch.dot(h_t, h_v[i])) for i in range(len(h_v))])
    alpha = e / e.sum()
    h_c = sum(alpha[i] * h_v[i] for i in range(len(h_v)))
    h_g = torch.tanh(ref_linear(h_t, unit.gate_fc))
    return ref_layer_norm(h_g * h_t + h_c, unit.norm)


# ------------------------------------------------------------------------------ units


def sides(unit, mentions: SimpleNamespace, entities: SimpleNamespace):
    """A unit's (mention side, entity side), each a namespace of the fields it returns."""
    return (
        SimpleNamespace(**unit.mention_side(mentions)),
        SimpleNamespace(**unit.entity_side(entities)),
    )


def test_vfi_direction_matches_equation() -> None:
    torch.manual_seed(1)
    unit = VFIDirection(6)
    for p in unit.parameters():
        torch.nn.init.normal_(p, std=0.5)  # LayerNorm affine too, so it is exercised
    q_g, t_g, t_l = torch.randn(3, 6), torch.randn(4, 6), torch.randn(4, 5, 6)
    got = unit(q_g, t_l.mean(1), t_g)
    want = torch.tensor(
        [[ref_vfi(unit, q_g[b], t_g[n], t_l[n]) for n in range(4)] for b in range(3)]
    )
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_vfi_score_is_the_mean_of_both_directions() -> None:
    """S_V = (S_V^{M2E} + S_V^{E2M}) / 2 (§5.4), each direction by A.5."""
    torch.manual_seed(1)
    unit = VFI(6)
    for p in [*unit.m2e.parameters(), *unit.e2m.parameters()]:
        torch.nn.init.normal_(p, std=0.5)
    m = SimpleNamespace(v_global=torch.randn(3, 6), v_local=torch.randn(3, 5, 6))
    e = SimpleNamespace(v_global=torch.randn(4, 6), v_local=torch.randn(4, 5, 6))
    got = unit.score(*sides(unit, m, e))
    want = torch.tensor(
        [
            [
                (
                    ref_vfi(unit.m2e, m.v_global[b], e.v_global[n], e.v_local[n])
                    + ref_vfi(unit.e2m, e.v_global[n], m.v_global[b], m.v_local[b])
                )
                / 2
                for n in range(4)
            ]
            for b in range(3)
        ]
    )
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_tfi_matches_equation_with_padding() -> None:
    """S_T^{G2G}, S_T^{G2L} (A.5) and S_T = (S_T^{G2G} + S_T^{G2L}) / 2 (§5.4)."""
    torch.manual_seed(2)
    d = 8
    unit = TFI(d)
    for p in unit.parameters():
        torch.nn.init.normal_(p, std=0.4)
    e_mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0]])
    m_mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    e = SimpleNamespace(t_global=torch.randn(3, d), t_local=torch.randn(3, 6, d), t_mask=e_mask)
    m = SimpleNamespace(t_global=torch.randn(2, d), t_local=torch.randn(2, 5, d), t_mask=m_mask)
    got = unit.score(*sides(unit, m, e))
    g2l = torch.tensor(
        [
            [
                ref_tfi_g2l(unit, e.t_global[n], e.t_local[n], e_mask[n], m.t_local[b], m_mask[b])
                for n in range(3)
            ]
            for b in range(2)
        ]
    )
    g2g = torch.tensor(
        [[float(torch.dot(m.t_global[b], e.t_global[n])) for n in range(3)] for b in range(2)]
    )
    torch.testing.assert_close(got.g2l, g2l, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.g2g, g2g, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.s_t, (g2g + g2l) / 2, rtol=1e-5, atol=1e-5)


def test_cmfi_matches_equation() -> None:
    """h_e, h_m (A.5) and S_C = h_e · h_m (§5.4)."""
    torch.manual_seed(3)
    unit = CMFI(d_t=7, d_v=5, d_c=4)
    for p in unit.parameters():
        torch.nn.init.normal_(p, std=0.5)
    m = SimpleNamespace(t_global=torch.randn(3, 7), v_local=torch.randn(3, 6, 5))
    e = SimpleNamespace(t_global=torch.randn(2, 7), v_local=torch.randn(2, 6, 5))
    h_m = torch.stack([ref_cmfi_h(unit, m.t_global[i], m.v_local[i]) for i in range(3)])
    h_e = torch.stack([ref_cmfi_h(unit, e.t_global[i], e.v_local[i]) for i in range(2)])
    torch.testing.assert_close(unit(m.t_global, m.v_local), h_m, rtol=1e-5, atol=1e-5)
    want = torch.tensor([[float(torch.dot(h_m[b], h_e[n])) for n in range(2)] for b in range(3)])
    torch.testing.assert_close(unit.score(*sides(unit, m, e)), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layers", [PAPER_CLS_LAYERS, RELEASED_CLS_LAYERS])
def test_visual_features_follow_section_5_1(tmp_path: Path, layers) -> None:
    torch.manual_seed(4)
    model = IIER(tiny_encoder(tmp_path), tiny_config(cls_layers=layers)).eval()
    pixels = torch.randn(2, 3, 16, 16)
    v_g, v_l = model.image_features(pixels)
    with torch.no_grad():
        tower = model.encoder.vision_model
        hs = tower(pixel_values=pixels, output_hidden_states=True).hidden_states
        # hidden_states[l] = output of block l; run the blocks by hand to be sure
        x = tower.pre_layrnorm(tower.embeddings(pixels))
        blocks = [x]
        for layer in tower.encoder.layers:
            x = layer(x, None)
            blocks.append(x)
        for i in range(len(hs)):
            torch.testing.assert_close(hs[i], blocks[i], rtol=1e-5, atol=1e-5)
        cls = torch.cat([blocks[layer][:, 0] for layer in layers], -1)
        mlp = model.visual.mlp
        hidden = F.gelu(ref_linear(ref_layer_norm(cls, model.visual.norm), mlp[0]))
        want_g = ref_linear(hidden, mlp[2])
        want_l = ref_linear(blocks[-1], model.visual.fc)
    torch.testing.assert_close(v_g, want_g, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(v_l, want_l, rtol=1e-5, atol=1e-5)
    assert v_g.shape == (2, 12) and v_l.shape == (2, 5, 12)  # 1 CLS + 2x2 patches


def test_bad_cls_layers_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cls_layers"):
        IIER(tiny_encoder(tmp_path, layers=4), tiny_config())


def test_text_features_cls_and_masked_mean(tmp_path: Path) -> None:
    model, mentions, _ = model_and_batches(tmp_path, text_global="mean", combination="paper")
    hidden = model.text_hidden(mentions["input_ids"], mentions["attention_mask"])
    t_g, t_l = model.textual(hidden, mentions["attention_mask"])
    mask = mentions["attention_mask"]
    for b in range(len(mask)):
        real = t_l[b][mask[b].bool()]
        torch.testing.assert_close(t_g[b], F.normalize(real.mean(0), dim=0))
    model.textual.text_global = "cls"
    t_g, _ = model.textual(hidden, mask)
    torch.testing.assert_close(t_g, F.normalize(t_l[:, 0], dim=-1))


# ------------------------------------------------------------------------------ the model


def test_full_score_matches_equations(tmp_path: Path) -> None:
    """combination: paper — S = (S_V + S_T + S_C) / 3 with every term from the references."""
    model, mentions, entities = model_and_batches(tmp_path, combination="paper")
    with torch.no_grad():
        scores = model(mentions, entities)
        m, e = model.encode(mentions), model.encode(entities)
    for b in range(3):
        for n in range(4):
            s_v = (
                ref_vfi(model.vfi_m2e, m.v_global[b], e.v_global[n], e.v_local[n])
                + ref_vfi(model.vfi_e2m, e.v_global[n], m.v_global[b], m.v_local[b])
            ) / 2
            g2g = float(torch.dot(m.t_global[b], e.t_global[n]))
            g2l = ref_tfi_g2l(
                model.tfi, e.t_global[n], e.t_local[n], e.t_mask[n], m.t_local[b], m.t_mask[b]
            )
            s_t = (g2g + g2l) / 2
            s_c = float(
                torch.dot(
                    ref_cmfi_h(model.cmfi, m.t_global[b], m.v_local[b]),
                    ref_cmfi_h(model.cmfi, e.t_global[n], e.v_local[n]),
                )
            )
            assert scores.s_v[b, n].item() == pytest.approx(s_v, rel=1e-4, abs=1e-4)
            assert scores.s_t[b, n].item() == pytest.approx(s_t, rel=1e-4, abs=1e-4)
            assert scores.s_c[b, n].item() == pytest.approx(s_c, rel=1e-4, abs=1e-4)
            assert scores.s[b, n].item() == pytest.approx((s_v + s_t + s_c) / 3, rel=1e-4, abs=1e-4)


@pytest.mark.parametrize("combination", ["scaled", "paper"])
def test_padding_does_not_change_scores(tmp_path: Path, combination: str) -> None:
    model, mentions, entities = model_and_batches(tmp_path, combination=combination)

    def padded(batch, extra):
        out = dict(batch)
        for key in ("input_ids", "attention_mask", "token_type_ids"):
            out[key] = F.pad(batch[key], (0, extra))  # [PAD] id 0, mask 0
        return out

    with torch.no_grad():
        base = model(mentions, entities)
        more = model(padded(mentions, 9), padded(entities, 5))
    for a, b in zip(base, more, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.detach(), b.detach(), dim=0))


def test_scaled_text_global_is_the_towers_own_sentence_embedding(tmp_path: Path) -> None:
    model, mentions, _ = model_and_batches(tmp_path, text_global="mean")
    hidden = model.text_hidden(
        mentions["input_ids"], mentions["attention_mask"], mentions["token_type_ids"]
    )
    t_g, t_l = model.textual(hidden, mentions["attention_mask"])
    mask = mentions["attention_mask"]
    assert t_g.shape[1] == model.encoder.text_model.config.hidden_size and t_l.shape[2] == 20
    for b in range(len(mask)):
        torch.testing.assert_close(t_g[b], F.normalize(hidden[b][mask[b].bool()].mean(0), dim=0))


def test_scaled_score_matches_equations(tmp_path: Path) -> None:
    """combination: scaled — S = τ_O (G2G + w_T G2L + w_V S_V + w_C S_C), every term a
    cosine of the paper's unit outputs; the units' scores carry their own temperatures."""
    model, mentions, entities = model_and_batches(tmp_path)
    with torch.no_grad():
        model.unit_weight.copy_(torch.tensor([0.7, -0.4, 1.3, 0.6, -0.9]))
        model.log_temperature.copy_(torch.log(torch.tensor([5.0, 2.0, 3.0, 4.0])))
        scores = model(mentions, entities)
        m, e = model.encode(mentions), model.encode(entities)

    def h_v(unit, q_g, t_g, t_l):  # VFI's h_v (A.5) for one pair
        h_vc = ref_linear(ref_layer_norm(t_l.mean(0) + q_g, unit.norm_in), unit.fc)
        h_vg = torch.tanh(ref_linear(h_vc, unit.gate))
        return ref_layer_norm(h_vg * h_vc + t_g, unit.norm_out)

    def h_t(n, b):  # TFI's h_t for one pair, padding removed
        unit, e_mask, m_mask = model.tfi, e.t_mask[n].bool(), m.t_mask[b].bool()
        q = ref_linear(e.t_local[n][e_mask], unit.query)
        k = ref_linear(m.t_local[b][m_mask], unit.key)
        v = ref_linear(m.t_local[b][m_mask], unit.value)
        attention = torch.softmax(q @ k.T / math.sqrt(q.shape[-1]), dim=-1)
        return ref_layer_norm((attention @ v).mean(0), unit.norm)

    for b in range(3):
        for n in range(4):
            s_v = (
                cos(h_v(model.vfi_m2e, m.v_global[b], e.v_global[n], e.v_local[n]), m.v_global[b])
                + cos(h_v(model.vfi_e2m, e.v_global[n], m.v_global[b], m.v_local[b]), e.v_global[n])
            ) / 2
            g2g = cos(m.t_global[b], e.t_global[n])
            g2l = cos(ref_linear(e.t_global[n], model.tfi.fc), h_t(n, b))
            s_c = cos(
                ref_cmfi_h(model.cmfi, m.t_global[b], m.v_local[b]),
                ref_cmfi_h(model.cmfi, e.t_global[n], e.v_local[n]),
            )
            i2i = cos(m.v_tower[b], e.v_tower[n])
            i2t = cos(m.v_tower[b], e.t_tower[n])
            expected = 5.0 * (g2g + 0.7 * g2l - 0.4 * s_v + 1.3 * s_c + 0.6 * i2i - 0.9 * i2t)
            assert scores.s[b, n].item() == pytest.approx(expected, rel=1e-4, abs=1e-4)
            assert scores.s_v[b, n].item() == pytest.approx(2.0 * s_v, rel=1e-4, abs=1e-4)
            assert scores.s_t[b, n].item() == pytest.approx(3.0 * (g2g + g2l) / 2, abs=1e-4)
            assert scores.s_c[b, n].item() == pytest.approx(4.0 * s_c, rel=1e-4, abs=1e-4)


def test_tower_embeddings_are_the_encoders_own(tmp_path: Path) -> None:
    """I2I and I2T read the image-text encoder's own (CLIP-space) embeddings."""
    model, mentions, _ = model_and_batches(tmp_path, text_global="mean")
    enc = model.encoder
    with torch.no_grad():
        m = model.encode(mentions)
        image = F.normalize(enc.image_features(mentions["pixel_values"]), dim=-1)
        text = F.normalize(enc.text_features(mentions["input_ids"], mentions["attention_mask"]), -1)
    torch.testing.assert_close(m.v_tower, image, rtol=1e-5, atol=1e-5)
    # pair encodings carry token types, which encoder.text_features does not pass
    hidden = model.text_hidden(mentions["input_ids"], mentions["attention_mask"])
    t = F.normalize(enc.text_projection(model.textual(hidden, mentions["attention_mask"])[0]), -1)
    torch.testing.assert_close(text, t, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("text_global", ["mean", "cls"])
def test_untrained_scaled_iier_ranks_exactly_as_its_text_cosine(
    tmp_path: Path, text_global: str
) -> None:
    """What the pretrained text tower knows is where IIER starts: before any training the
    full score S orders every entity exactly as the tower's own sentence cosine does."""
    model, mentions, entities = model_and_batches(tmp_path, text_global=text_global)
    tower = model.encoder.text_model

    def sentence_embedding(batch):  # the tower alone, pooled as text_global says
        hidden = tower(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            token_type_ids=batch["token_type_ids"],
        ).last_hidden_state
        if text_global == "cls":
            return F.normalize(hidden[:, 0], dim=-1)
        mask = batch["attention_mask"].unsqueeze(-1).float()
        return F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)

    with torch.no_grad():
        s = model(mentions, entities).s
        cosine = sentence_embedding(mentions) @ sentence_embedding(entities).T
    torch.testing.assert_close(s, cosine / 0.07, rtol=1e-4, atol=1e-4)
    assert torch.equal(s.argsort(dim=1, stable=True), cosine.argsort(dim=1, stable=True))


def test_old_checkpoints_load_with_the_paper_combination(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = IIER(tiny_encoder(tmp_path / "t"), tiny_config(combination="paper"))
    model.save(tmp_path / "ckpt")
    meta = json.loads((tmp_path / "ckpt/iier.json").read_text())
    del meta["config"]["combination"]  # as written before the key existed
    (tmp_path / "ckpt/iier.json").write_text(json.dumps(meta))
    loaded, _ = IIER.load(tmp_path / "ckpt")
    assert loaded.cfg.combination == "paper"


def test_unknown_combination_is_rejected() -> None:
    with pytest.raises(ValueError, match="combination"):
        tiny_config(combination="sum")


def test_text_global_is_normalised_and_scores_finite(tmp_path: Path) -> None:
    model, mentions, entities = model_and_batches(tmp_path)
    with torch.no_grad():
        m = model.encode(mentions)
        scores = model(mentions, entities)
    torch.testing.assert_close(m.t_global.norm(dim=-1), torch.ones(3))
    assert all(torch.isfinite(s).all() for s in scores)


# ------------------------------------------------------------------------------ the loss


def ref_ce(scores: torch.Tensor, positives: list[int]) -> float:
    """-log exp(S_pos) / Σ exp(S) per row, averaged (§5.5)."""
    total = 0.0
    for j, p in enumerate(positives):
        row = scores[j]
        total += -(row[p] - torch.logsumexp(row, 0)).item()
    return total / len(positives)


def test_loss_is_lo_plus_lambda_units(tmp_path: Path) -> None:
    model, mentions, entities = model_and_batches(tmp_path)
    targets = torch.tensor([2, 0, 1])
    with torch.no_grad():
        scores = model(mentions, entities)
    for lam in (0.0, 0.5, 1.0):
        loss = iier_loss(scores, targets, lam)
        parts = [
            ref_ce(s, targets.tolist()) for s in (scores.s, scores.s_v, scores.s_t, scores.s_c)
        ]
        assert loss.total.item() == pytest.approx(parts[0] + lam * sum(parts[1:]), rel=1e-5)
        assert loss.o.item() == pytest.approx(parts[0], rel=1e-5)
    # Table 9's variants: L_O alone, L_O + one L_X
    assert iier_loss(scores, targets, 1.0, ()).total.item() == pytest.approx(parts[0], rel=1e-5)
    for i, term in enumerate("VTC", start=1):
        one = iier_loss(scores, targets, 0.5, (term,)).total.item()
        assert one == pytest.approx(parts[0] + 0.5 * parts[i], rel=1e-5)
    with pytest.raises(ValueError, match="unknown loss terms"):
        iier_loss(scores, targets, 1.0, ("X",))


def test_mentions_sharing_a_gold_entity_are_not_negatives() -> None:
    """With the collator's distinct-entity columns, mention 0 and 1 (same gold) share one
    column; the naive one-column-per-mention matrix would count a duplicate of the gold
    entity as a negative and give a larger loss."""
    from vpmel.iier.data import ContrastiveCollator

    class FakeSide:
        def inputs(self, rows):
            return {"rows": torch.as_tensor(rows)}

    gold = torch.tensor([5, 5, 7, 2])
    batch = ContrastiveCollator(FakeSide(), FakeSide(), gold)([0, 1, 2, 3])
    assert batch["entity"]["rows"].tolist() == [2, 5, 7]
    assert batch["targets"].tolist() == [1, 1, 2, 0]
    torch.manual_seed(5)
    s = torch.randn(4, 3)  # scores against the distinct entities 2, 5, 7
    loss = iier_loss(Scores(s, s, s, s), batch["targets"], 0.0)
    want = ref_ce(s, [1, 1, 2, 0])
    assert loss.o.item() == pytest.approx(want, rel=1e-6)
    naive_cols = s[:, [1, 1, 2, 0]]  # one column per mention: entity 5 appears twice
    naive = ref_ce(naive_cols, [0, 1, 2, 3])
    assert naive > want


def test_combined_loss_decreases_on_a_tiny_batch(tmp_path: Path) -> None:
    model, mentions, entities = model_and_batches(tmp_path, seed=6)
    model.train()
    targets = torch.tensor([0, 1, 2])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(8):
        loss = iier_loss(model(mentions, entities), targets, 1.0).total
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_save_and_load_roundtrip(tmp_path: Path) -> None:
    model, mentions, entities = model_and_batches(tmp_path / "tok")
    model.save(tmp_path / "ckpt", {"inputs": {"use_answers": False}})
    loaded, extra = IIER.load(tmp_path / "ckpt")
    assert extra == {"inputs": {"use_answers": False}}
    with torch.no_grad():
        for a, b in zip(model(mentions, entities), loaded(mentions, entities), strict=True):
            assert torch.equal(a, b)


# ------------------------------------------------------------------------------ checkpoints


def frozen_checkpoint(tmp_path: Path) -> tuple[IIER, Path]:
    """Frozen towers loaded from ``models/encoder`` (as `train` loads them), saved to
    ``ckpt``; the working directory is ``tmp_path``."""
    torch.manual_seed(0)
    tiny_encoder(tmp_path / "tok2").save(tmp_path / "models/encoder")
    encoder = ImageTextEncoder.load(tmp_path / "models/encoder")
    model = IIER(encoder, tiny_config(train_vision=False, train_text=False)).eval()
    model.save(tmp_path / "ckpt")
    return model, tmp_path / "ckpt"


def test_a_checkpoint_refers_to_its_encoder_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, mentions, entities = model_and_batches(tmp_path / "tok")
    monkeypatch.chdir(tmp_path)
    model, ckpt = frozen_checkpoint(tmp_path)
    assert sorted(p.name for p in ckpt.iterdir()) == ["iier.json", "iier.safetensors"]
    reference = json.loads((ckpt / "iier.json").read_text())["encoder"]
    folder = tmp_path / "models/encoder"  # given absolute, recorded relative to the cwd
    assert reference == {"path": "models/encoder", "sha1": encoder_fingerprint(folder)}
    shutil.copytree(folder, tmp_path / "elsewhere")
    with torch.no_grad():
        want = model(mentions, entities)
        for explicit in (None, tmp_path / "elsewhere"):  # the recorded folder, or a named one
            loaded, _ = IIER.load(ckpt, explicit)
            assert loaded.encoder.folder == (explicit or Path("models/encoder"))
            for a, b in zip(want, loaded(mentions, entities), strict=True):
                assert torch.equal(a, b)


def test_an_encoder_other_than_the_trained_one_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    _, ckpt = frozen_checkpoint(tmp_path)
    trained = json.loads((ckpt / "iier.json").read_text())["encoder"]["sha1"]
    other = tmp_path / "other"
    shutil.copytree(tmp_path / "models/encoder", other)
    (other / "tokenizer/vocab.txt").write_text("changed\n")
    with pytest.raises(ValueError) as refused:
        IIER.load(ckpt, other)
    message = str(refused.value)
    assert "\n" not in message and message.startswith(f"{ckpt}: encoder {other} has sha1")
    assert trained in message and encoder_fingerprint(other) in message
    assert "--encoder DIR" in message and "retrain" in message
    shutil.rmtree(tmp_path / "models/encoder")  # the recorded folder is gone
    with pytest.raises(FileNotFoundError, match="models/encoder .* does not exist"):
        IIER.load(ckpt)


def test_trained_towers_and_old_checkpoints_carry_their_own_encoder(tmp_path: Path) -> None:
    """Trained towers differ from any encoder folder: the checkpoint keeps a copy in
    ``encoder/``, the layout every checkpoint had before references; both still load, and a
    folder named explicitly must hold the same encoder."""
    model, mentions, entities = model_and_batches(tmp_path / "tok")  # train_vision/text: True
    model.save(tmp_path / "ckpt")
    assert "encoder" not in json.loads((tmp_path / "ckpt/iier.json").read_text())
    loaded, _ = IIER.load(tmp_path / "ckpt")
    assert loaded.encoder.folder == tmp_path / "ckpt/encoder"
    with torch.no_grad():
        for a, b in zip(model(mentions, entities), loaded(mentions, entities), strict=True):
            assert torch.equal(a, b)
    same = tmp_path / "same"
    shutil.copytree(tmp_path / "ckpt/encoder", same)
    assert IIER.load(tmp_path / "ckpt", same)[0].encoder.folder == same
    (same / "note.txt").write_text("not the trained encoder")
    with pytest.raises(ValueError, match="has sha1"):
        IIER.load(tmp_path / "ckpt", same)
