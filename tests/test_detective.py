"""Detective-VLM: template, answer parsing, demo tokenizer, tuning and loading."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from PIL import Image

from vpmel.detective import model as detective
from vpmel.detective.model import (
    Answer,
    DemoVLMConfig,
    DetectiveMeta,
    build_demo_tokenizer,
    build_demo_vlm,
    demo_corpus,
    format_prompt,
    instruction_records,
    load_detective,
    normalise,
    parse_answer,
    render_answer,
    render_instruction,
    save_detective,
)
from vpmel.detective.training import (
    IGNORE,
    LoraSettings,
    TuneConfig,
    answer_loss,
    collate,
    encode_example,
    instruction_loss,
    prompt_length,
    tune,
)

TINY = DemoVLMConfig(
    hidden_size=32,
    num_layers=1,
    num_heads=2,
    intermediate_size=64,
    max_positions=128,
    image_size=16,
    patch_size=8,
    vision_layers=2,
    vision_width=32,
)
NAMES = ["grinning face", "flag: Côte d’Ivoire", "A button (blood type)", "trombone"]
SENTENCES = ["A trombone on the table.", "Spotted: a grinning face!"]


def tiny_vlm(seed: int = 0):
    tokenizer = build_demo_tokenizer(demo_corpus(NAMES, SENTENCES))
    torch.manual_seed(seed)
    return build_demo_vlm(TINY, tokenizer)


def tiny_mentions(root: Path) -> pd.DataFrame:
    rows = []
    for i, (sentence, name, kind) in enumerate(
        [
            (SENTENCES[0], "trombone", "Works"),
            (SENTENCES[1], "grinning face", "Misc"),
            (SENTENCES[0], "flag: Côte d’Ivoire", "Country"),
        ]
    ):
        rel = f"train_img/mention_{i}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 30), (40 * i, 120, 200)).save(root / rel)
        rows.append(
            {
                "id": f"m{i}",
                "sentence": sentence,
                "entity_name": name,
                "type": kind,
                "prompted_image": rel,
                "split": "train",
            }
        )
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------- template


def test_instruction_follows_the_paper_template() -> None:
    text = render_instruction("A trombone  on the\ntable.", "<image>")
    assert text == (
        "Background: <image>\n"
        "Text: A trombone on the table.\n"
        "Question: Based on the text 'A trombone on the table.', tell me briefly what is the "
        "Entity Type and Entity Name in the red box of the image?"
    )
    assert format_prompt(None, text, "plain") == text + "\nAnswer:"
    assert render_answer("grinning  face", "Misc") == "grinning face Misc"
    with pytest.raises(ValueError, match="type"):
        render_answer("grinning face", "Emoji")


def test_chat_format_wraps_the_instruction_in_the_processor_template() -> None:
    seen = {}

    def apply_chat_template(messages, add_generation_prompt, tokenize):
        seen.update(messages=messages, generation=add_generation_prompt)
        return f"USER: {messages[0]['content'][0]['text']} ASSISTANT:"

    processor = SimpleNamespace(chat_template="x", apply_chat_template=apply_chat_template)
    prompt = format_prompt(processor, "Background: <image>\nText: t", "chat")
    assert prompt == "USER: Background: <image>\nText: t ASSISTANT:"
    assert seen["generation"] is True
    with pytest.raises(ValueError, match="chat template"):
        format_prompt(SimpleNamespace(chat_template=None), "x", "chat")
    with pytest.raises(ValueError, match="prompt_format"):
        format_prompt(processor, "x", "json")


def test_instruction_records_use_the_processor_image_token(tmp_path: Path) -> None:
    _, processor = tiny_vlm()
    records = instruction_records(tiny_mentions(tmp_path), processor, "plain", tmp_path)
    assert [r["answer"] for r in records] == [
        "trombone Works",
        "grinning face Misc",
        "flag: Côte d’Ivoire Country",
    ]
    assert records[0]["prompt"].startswith("Background: <image>\nText: A trombone on the table.")
    assert records[0]["prompt"].endswith("Answer:")
    assert Path(records[0]["image"]).is_file()


# ---------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("grinning face Misc", Answer("grinning face", "Misc")),
        ("  grinning face Misc.  ", Answer("grinning face", "Misc")),
        ("Answer: flag: Germany Country", Answer("flag: Germany", "Country")),
        ("person running Person", Answer("person running", "Person")),
        ("A button (blood type) Misc", Answer("A button (blood type)", "Misc")),
        ("grinning face\nMisc", Answer("grinning face", "Misc")),
        ("\n\ntrombone Works\nQuestion: Based on the text", Answer("trombone", "Works")),
        ("trombone Works and then some more words", Answer("trombone", "Works")),
        ("Name: trombone, Type: Works", Answer("trombone", "Works")),
        ("Germany GPE", Answer("Germany", "Country")),
        ("'trombone' misc!", Answer("trombone", "Misc")),
        ("trombone Instrument", Answer("trombone Instrument", None)),
        ("trombone", Answer("trombone", None)),
        ("Misc", Answer(None, "Misc")),
        ("", Answer(None, None)),
        ("   \n\t ", Answer(None, None)),
        ("?!.", Answer(None, None)),
        (None, Answer(None, None)),
    ],
)
def test_parse_answer_survives_nasty_strings(raw: str | None, expected: Answer) -> None:
    assert parse_answer(raw) == expected


def test_normalise_ignores_case_and_spacing() -> None:
    assert normalise("  Grinning   FACE. ") == normalise("grinning face") == "grinning face"
    assert normalise(None) == ""


# ---------------------------------------------------------------------------- tokenizer


def test_demo_tokenizer_round_trips_names_and_is_deterministic() -> None:
    corpus = demo_corpus(NAMES, SENTENCES)
    tok = build_demo_tokenizer(corpus)
    assert build_demo_tokenizer(corpus).get_vocab() == tok.get_vocab()
    for name in NAMES:
        ids = tok(f"{name} Misc", add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids
        assert tok.decode(ids) == f"{name} Misc"
    assert tok.unk_token_id in tok("zeppelin", add_special_tokens=False)["input_ids"]
    assert tok.convert_tokens_to_ids("<image>") != tok.unk_token_id


def test_encode_example_labels_only_the_answer(tmp_path: Path) -> None:
    _, processor = tiny_vlm()
    rec = instruction_records(tiny_mentions(tmp_path), processor, "plain", tmp_path)[0]
    ex = encode_example(processor, rec["prompt"], rec["answer"], Image.open(rec["image"]))
    labelled = ex["input_ids"][ex["labels"] != IGNORE]
    tok = processor.tokenizer
    assert tok.convert_ids_to_tokens(labelled.tolist()) == ["▁trombone", "▁Works", "</s>"]
    n_slots = (TINY.image_size // TINY.patch_size) ** 2
    assert int((ex["input_ids"] == tok.convert_tokens_to_ids("<image>")).sum()) == n_slots

    class Plain:  # a processor without the image-token fast path
        tokenizer = tok

        def __call__(self, **kwargs):
            return processor(**kwargs)

    slow = prompt_length(Plain(), rec["prompt"], ex["input_ids"], Image.open(rec["image"]))
    assert slow == int((ex["labels"] == IGNORE).sum())
    batch = collate([ex, {k: v[:] for k, v in ex.items()}], tok.pad_token_id)
    assert batch["input_ids"].shape[0] == 2 and batch["pixel_values"].shape[0] == 2


# ---------------------------------------------------------------------------- tuning


def test_one_lora_step_changes_only_lora_weights(tmp_path: Path) -> None:
    model, processor = tiny_vlm()
    records = instruction_records(tiny_mentions(tmp_path), processor, "plain", tmp_path)
    model.save_pretrained(tmp_path / "model" / "base")
    processor.save_pretrained(tmp_path / "model" / "base")
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    cfg = TuneConfig(
        mode="lora", epochs=1, batch_size=4, lr=1e-2, lora=LoraSettings(r=4, alpha=8, dropout=0.0)
    )
    tuned, result = tune(model, processor, records, cfg, progress=False)
    assert result.steps == 1 and all(torch.isfinite(torch.tensor(result.train_loss)))
    after = tuned.get_base_model().state_dict()  # LoRA layers wrap the original ones
    base = {k.replace(".base_layer", ""): v for k, v in after.items() if "lora_" not in k}
    assert base.keys() == before.keys()
    assert all(torch.equal(v, before[k]) for k, v in base.items()), "base weights changed"
    lora_b = [v for k, v in after.items() if "lora_B" in k]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b), "LoRA weights must change"
    assert 0 < result.trainable_params < sum(v.numel() for v in before.values())

    # saved as an adapter; loading merges it into the base named by detective.json
    save_detective(tmp_path / "model", tuned, processor, DetectiveMeta(base="base", mode="lora"))
    assert (tmp_path / "model" / "tuned" / "adapter_model.safetensors").is_file()
    merged, proc, _ = load_detective(tmp_path / "model")
    batch = collate(
        [encode_example(proc, r["prompt"], r["answer"], Image.open(r["image"])) for r in records],
        proc.tokenizer.pad_token_id,
    )
    with torch.no_grad():
        expected = tuned.eval()(**batch).logits
        assert torch.allclose(merged(**batch).logits, expected, atol=1e-4)
        untuned = load_detective(tmp_path / "model", untuned=True)[0]
        assert not torch.allclose(untuned(**batch).logits, expected, atol=1e-4)


def test_full_tuning_is_deterministic_and_freezes_the_vision_tower(tmp_path: Path) -> None:
    records = instruction_records(tiny_mentions(tmp_path), tiny_vlm()[1], "plain", tmp_path)
    cfg = TuneConfig(epochs=2, batch_size=2, lr=1e-2)
    runs = []
    for _ in range(2):
        model, processor = tiny_vlm()
        vision = {k: v.clone() for k, v in model.model.vision_tower.state_dict().items()}
        tuned, result = tune(model, processor, records, cfg, records[:1], progress=False)
        runs.append(result)
        for k, v in tuned.model.vision_tower.state_dict().items():
            assert torch.equal(v, vision[k])
    assert runs[0].train_loss == runs[1].train_loss and runs[0].dev_loss == runs[1].dev_loss
    assert runs[0].steps == 4


def test_vision_cache_changes_nothing_but_speed(tmp_path: Path) -> None:
    records = instruction_records(tiny_mentions(tmp_path), tiny_vlm()[1], "plain", tmp_path)
    results, keys = [], []
    for cache in (False, True):
        model, processor = tiny_vlm()
        cfg = TuneConfig(epochs=2, batch_size=2, lr=1e-2, cache_vision=cache)
        tuned, result = tune(model, processor, records, cfg, progress=False)
        results.append(result.train_loss)
        keys.append(list(tuned.state_dict()))
        assert type(tuned.model.vision_tower).__name__ == "CLIPVisionModel"  # restored
    assert keys[0] == keys[1]
    assert torch.allclose(torch.tensor(results[0]), torch.tensor(results[1]), atol=1e-4)
    with pytest.raises(ValueError, match="frozen"):
        model, processor = tiny_vlm()
        tune(model, processor, records, TuneConfig(freeze=(), cache_vision=True), progress=False)


def test_answer_loss_matches_the_models_own_loss(tmp_path: Path) -> None:
    model, processor = tiny_vlm()
    records = instruction_records(tiny_mentions(tmp_path), processor, "plain", tmp_path)
    examples = [
        encode_example(processor, r["prompt"], r["answer"], Image.open(r["image"])) for r in records
    ]
    batch = collate(examples, processor.tokenizer.pad_token_id)
    ours = answer_loss(model, batch)
    reference = model(**batch).loss  # labels -> transformers' shifted cross-entropy
    assert torch.allclose(ours, reference, atol=1e-5)
    assert torch.allclose(instruction_loss(model, batch, 0.0), ours)
    # the demo's extra language-modelling term: instruction text only, never image slots
    text = batch["input_ids"].clone()
    image_id = model.config.image_token_id
    text[(batch["labels"] != IGNORE) | (text == image_id) | (batch["attention_mask"] == 0)] = IGNORE
    text[:, 0] = IGNORE  # nothing predicts the first token
    prompt_only = model(**{**batch, "labels": text}).loss
    assert torch.allclose(instruction_loss(model, batch, 0.5), ours + 0.5 * prompt_only, atol=1e-5)


def test_generate_on_a_tiny_vlm_and_save_load(tmp_path: Path) -> None:
    model, processor = tiny_vlm()
    model.save_pretrained(tmp_path / "model" / "base")
    processor.save_pretrained(tmp_path / "model" / "base")
    save_detective(tmp_path / "model", model, processor, DetectiveMeta(base="base"))
    loaded, proc, meta = load_detective(tmp_path / "model")
    assert meta.mode == "full" and meta.trust_remote_code is False
    prompt = format_prompt(proc, render_instruction(SENTENCES[0], "<image>"))
    image = Image.new("RGB", (40, 30), "white")
    proc.tokenizer.padding_side = "left"
    inputs = proc(text=[prompt, prompt], images=[image, image], padding=True, return_tensors="pt")
    out = loaded.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape[0] == 2 and 1 <= out.shape[1] - inputs["input_ids"].shape[1] <= 3
    reference = model.eval().generate(**inputs, max_new_tokens=3, do_sample=False)
    assert torch.equal(out, reference)


# ---------------------------------------------------------------------------- paper scale


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []

    def loader(self, what: str, fail: bool = False):
        def from_pretrained(source, **kwargs):
            self.calls.append((what, {"source": source, **kwargs}))
            if fail:
                raise ValueError("Unrecognized configuration class")
            return SimpleNamespace(eval=lambda: None)

        return from_pretrained


def test_trust_remote_code_is_off_by_default_and_passed_through(monkeypatch) -> None:
    rec = _Recorder()
    monkeypatch.setattr(detective.AutoProcessor, "from_pretrained", rec.loader("processor"))
    monkeypatch.setattr(
        detective.AutoModelForImageTextToText, "from_pretrained", rec.loader("model")
    )
    detective.load_pretrained("llava-hf/llava-1.5-7b-hf")
    assert [c[1]["trust_remote_code"] for c in rec.calls] == [False, False]
    assert rec.calls[1][1]["source"] == "llava-hf/llava-1.5-7b-hf"
    rec.calls.clear()
    detective.load_pretrained("some/remote-code-vlm", trust_remote_code=True, dtype="bfloat16")
    assert [c[1]["trust_remote_code"] for c in rec.calls] == [True, True]
    assert rec.calls[1][1]["dtype"] is torch.bfloat16
    assert DetectiveMeta(base="x").trust_remote_code is False


def test_remote_code_fallback_needs_trust_remote_code(monkeypatch) -> None:
    rec = _Recorder()
    monkeypatch.setattr(detective.AutoProcessor, "from_pretrained", rec.loader("processor"))
    monkeypatch.setattr(
        detective.AutoModelForImageTextToText, "from_pretrained", rec.loader("itt", fail=True)
    )
    monkeypatch.setattr(detective.AutoModelForCausalLM, "from_pretrained", rec.loader("causal"))
    with pytest.raises(ValueError):
        detective.load_pretrained("MAGAer13/mplug-owl2-llama2-7b")
    assert "causal" not in [c[0] for c in rec.calls]
    detective.load_pretrained("MAGAer13/mplug-owl2-llama2-7b", trust_remote_code=True)
    assert rec.calls[-1][0] == "causal" and rec.calls[-1][1]["trust_remote_code"] is True


# ---------------------------------------------------------------------------- which mentions


def _named_and_unnamed() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": ["kb-name", "alias", "unnamed", "no-span"],
            "sentence": [
                "A trombone on the table.",
                "A whale in the bay.",
                "So many things on the noticeboard!",
                "A face at the window.",
            ],
            "qid": ["Q1", "Q2", "Q3", "Q4"],
            "entity_name": ["trombone", "spouting whale", "grinning face", "confounded face"],
            "mention": ["trombone", "whale", "grinning face", "sad face"],
            "span_start": [2, 2, None, None],
            "span_end": [10, 7, None, None],
        }
    )


def test_tuning_mask_keeps_mentions_whose_sentence_names_them() -> None:
    from vpmel.detective.training import tuning_mask

    mentions = _named_and_unnamed()
    # named: the KB name occurs, or the mention words are located in the sentence (an alias);
    # not: the name is absent and the mention words have no span there
    assert tuning_mask(mentions, "named").tolist() == [True, True, False, False]
    assert tuning_mask(mentions, "all").tolist() == [True] * 4
    with pytest.raises(ValueError, match="detective.train.mentions"):
        tuning_mask(mentions, "some")
    with pytest.raises(ValueError, match="detective.train.mentions"):
        TuneConfig.from_params({"mentions": "some"})
    assert TuneConfig.from_params({"mentions": "named"}).mentions == "named"


def test_cross_fit_tunes_folds_on_allowed_mentions_and_answers_every_one(monkeypatch) -> None:
    from vpmel.detective import cross_fit as cf

    tuned_on: list[list[str]] = []

    def fake_tune(model, processor, records, *args, **kwargs):  # noqa: ANN001, ANN202
        tuned_on.append([r["id"] for r in records])
        return SimpleNamespace(eval=lambda: None), None

    def fake_answers(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        return lambda held: [f"{i} Misc" for i in held["id"]]

    monkeypatch.setattr(cf, "tune", fake_tune)
    monkeypatch.setattr(cf, "model_answer_fn", fake_answers)
    train = _named_and_unnamed().assign(pair_id=["p1", "p2", "p3", "p4"])
    records = [{"id": i} for i in train["id"]]
    allowed = [True, True, False, False]
    oof, _ = cf.cross_fit(
        train, records, 2, 0, lambda: (None, None), TuneConfig(), Path("."), "plain",
        {}, None, tune_on=allowed,
    )  # fmt: skip
    assert sorted(oof["id"]) == sorted(train["id"])  # every train mention is answered
    assert all(set(ids) <= {"kb-name", "alias"} for ids in tuned_on)  # only allowed ones tuned
    folds = cf.fold_of(train["pair_id"], 2, 0)
    for k, ids in enumerate(tuned_on):  # and never the fold's own mentions
        own = set(train["id"][folds == k])
        assert not own & set(ids)
