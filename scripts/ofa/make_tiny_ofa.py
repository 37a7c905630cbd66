#!/usr/bin/env python
"""Build a TINY, randomly initialised OFA model folder in the layout that
modelscope's OFA pipelines (OfaForAllTasks + OfaPreprocessor) load from disk.

usage: python make_tiny_ofa.py OUT_DIR {visual_entailment|visual_grounding} [--seed N]

Run it inside the OFA venv (needs torch, transformers 4.57, tokenizers, modelscope).
Nothing is downloaded. The folder contains:
  configuration.json   modelscope task config (framework/task/model.type=ofa/pipeline)
  config.json          OFAConfig (transformers style, model_type "ofa")
  pytorch_model.bin    random weights (OFAModel.save_pretrained, torch pickle)
  vocab.json/merges.txt  tiny GPT-2/BART byte-level BPE (OFATokenizer == BartTokenizer)
  answer2label.json    (entailment only) {"no":0,"yes":1,"maybe":2}
The tokenizer adds 8192 <code_i> + 1000 <bin_i> tokens at load time (modelscope
does that itself), so config.vocab_size = len(vocab.json) + 9192.
"""

import argparse
import json
import os
import sys

TASK_ID = {  # modelscope Tasks.* string values
    "visual_entailment": "visual-entailment",
    "visual_grounding": "visual-grounding",
}
NUM_CODES, NUM_BINS = 8192, 1000
IMG = 64  # patch_image_size == max_image_size (tiny; real models use 480/512)

CORPUS = [
    "does the image describe",
    "which region does the text describe",
    "yes no maybe",
    "a man a woman a dog a cat two birds on the grass",
    "the red square and the blue circle in the picture",
    "there are two dogs playing with a ball",
    "a person riding a bike",
    "left right top bottom middle small large green white black",
] * 20


def build_bpe(out_dir, vocab_target=400):
    """Train a tiny byte-level BPE locally; write vocab.json + merges.txt
    with BART's special-token ids (<s>=0, <pad>=1, </s>=2, <unk>=3)."""
    from tokenizers import ByteLevelBPETokenizer

    tok = ByteLevelBPETokenizer(add_prefix_space=False)
    tok.train_from_iterator(
        CORPUS,
        vocab_size=vocab_target,
        min_frequency=1,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
    )
    vocab = tok.get_vocab()
    # ensure ids 0..3 are the specials, then put <mask> last (as in BART)
    assert [vocab[t] for t in ["<s>", "<pad>", "</s>", "<unk>"]] == [0, 1, 2, 3]
    vocab["<mask>"] = len(vocab)
    with open(os.path.join(out_dir, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    model_json = json.loads(tok._tokenizer.to_str())["model"]
    merges = model_json["merges"]
    with open(os.path.join(out_dir, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for m in merges:
            f.write((m if isinstance(m, str) else " ".join(m)) + "\n")
    return len(vocab)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out_dir")
    ap.add_argument("task", choices=sorted(TASK_ID))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--d-model", type=int, default=32)
    ap.add_argument("--layers", type=int, default=1)
    a = ap.parse_args()

    import torch
    from modelscope.models.multi_modal.ofa import OFAModel
    from modelscope.models.multi_modal.ofa.configuration_ofa import OFAConfig

    os.makedirs(a.out_dir, exist_ok=True)
    torch.manual_seed(a.seed)

    n_base = build_bpe(a.out_dir)
    vocab_size = n_base + NUM_CODES + NUM_BINS
    bin_start = n_base + NUM_CODES  # first <bin_0> id

    cfg = OFAConfig(
        vocab_size=vocab_size,
        max_position_embeddings=256,
        d_model=a.d_model,
        encoder_layers=a.layers,
        decoder_layers=a.layers,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=a.d_model * 2,
        decoder_ffn_dim=a.d_model * 2,
        dropout=0.0,
        resnet_type="resnet18",  # smallest backbone the OFA code offers
        image_bucket_size=8,
        token_bucket_size=64,
        code_image_size=128,
        orig_patch_image_size=IMG,
        use_ofasys=False,
    )
    model = OFAModel(cfg).eval()
    model.save_pretrained(a.out_dir, safe_serialization=False)  # -> pytorch_model.bin
    # (transformers may also write generation_config.json; harmless)

    model_cfg = {
        "type": "ofa",
        "language": "en",
        "patch_image_size": IMG,
        "max_image_size": IMG,
        "imagenet_default_mean_and_std": False,
        "max_src_length": 80,
        "seed": 7,
    }
    if a.task == "visual_entailment":
        with open(os.path.join(a.out_dir, "answer2label.json"), "w") as f:
            json.dump({"no": 0, "yes": 1, "maybe": 2}, f)
        model_cfg.update(
            {
                "answer2label": "answer2label.json",
                "gen_type": "traverse",  # score every answer -> probabilities
                "prompt_type": "prev_output",  # 'none' crashes in collate_fn (prefix_token=[])
                "beam_search": {
                    "beam_size": 3,
                    "max_len_b": 4,
                    "min_len": 1,
                    "no_repeat_ngram_size": 0,
                },
            }
        )
    else:
        model_cfg.update(
            {
                "num_bins": NUM_BINS,
                "beam_search": {
                    "beam_size": 5,
                    "max_len_a": 0,
                    "max_len_b": 4,
                    "min_len": 4,
                    "no_repeat_ngram_size": 0,
                    # restrict decoding to the <bin_i> tokens
                    "constraint_range": f"{bin_start},{vocab_size}",
                },
            }
        )
    configuration = {
        "framework": "pytorch",
        "task": TASK_ID[a.task],
        "model": model_cfg,
        "pipeline": {"type": TASK_ID[a.task]},
        "preprocessor": {},
    }
    with open(os.path.join(a.out_dir, "configuration.json"), "w") as f:
        json.dump(configuration, f, indent=2)
    n_params = sum(p.numel() for p in model.parameters())
    print(
        json.dumps(
            {
                "out_dir": a.out_dir,
                "task": a.task,
                "base_vocab": n_base,
                "vocab_size": vocab_size,
                "bin_range": [bin_start, vocab_size],
                "params": n_params,
            }
        )
    )


if __name__ == "__main__":
    sys.exit(main())
