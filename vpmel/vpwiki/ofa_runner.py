#!/usr/bin/env python
"""Run modelscope's OFA visual-entailment / visual-grounding pipeline on a LOCAL
model folder, fully offline.

usage: python run_ofa.py MODEL_DIR [REQUESTS.jsonl|-] [--out OUT.jsonl] [--task T]

Each input line: {"image": "/path/img.jpg", "text": "...", "id": optional}
  (entailment: "text" is the hypothesis; optional "text2" = premise caption)
Each output line:
  entailment: {"id", "label", "score", "probs": {"yes":..,"no":..,"maybe":..}, "p_yes"}
  grounding:  {"id", "box": [x1, y1, x2, y2] (pixels of the input image, clipped),
               "box_raw": unclipped, "image_size": [w, h], "score"}
  on a per-request error: {"id", "error": "..."}
The task is read from MODEL_DIR/configuration.json unless --task is given.
"""

import argparse
import json
import os
import sys
import traceback

# ---- offline: never touch a hub. Set before modelscope/transformers import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault(
    "MODELSCOPE_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "ofa_offline_ms")
)
os.environ.setdefault("TORCHVISION_WARN_WHEN_EXTENSION_LOADING_FAILS", "")


def _torchvision_compat():
    """torchvision from PyPI (x86_64) is a CUDA build; beside the CPU torch wheel
    its _C.so cannot load and `import torchvision` dies with
    'operator torchvision::nms does not exist' (an unconditional register_fake).
    OFA only needs torchvision.transforms (Resize/ToTensor/Normalize), so if the
    extension is unusable we declare the two op schemas it registers fakes for.
    (setup_ofa_env.sh also patches the file; this is a no-op then.)"""
    import torch

    try:
        torch.ops.torchvision.nms  # noqa: B018  (exists if _C loaded)
        return
    except (AttributeError, RuntimeError):
        pass
    global _TV_LIB
    _TV_LIB = torch.library.Library("torchvision", "FRAGMENT")
    for op in ("nms", "qnms"):
        try:
            _TV_LIB.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        except RuntimeError:
            pass


def _install_prob_hook():
    """OfaForAllTasks._traverse_inference scores every answer in answer2label,
    softmaxes them and returns only the argmax label + its prob. Capture the
    whole softmax row so that p(yes) is available whatever the argmax is."""
    import modelscope.models.multi_modal.ofa_for_all_tasks as oft
    import torch

    class _FProxy:
        last = None

        def __getattr__(self, name):
            return getattr(torch.nn.functional, name)

        def softmax(self, *a, **k):
            out = torch.nn.functional.softmax(*a, **k)
            _FProxy.last = out.detach().cpu()
            return out

    oft.F = _FProxy()
    return _FProxy


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("requests", nargs="?", default="-")
    ap.add_argument("--out", default="-")
    ap.add_argument("--task", default=None, choices=[None, "visual-entailment", "visual-grounding"])
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()

    model_dir = os.path.abspath(a.model_dir)  # abs path: never looked up on a hub
    with open(os.path.join(model_dir, "configuration.json")) as f:
        task = a.task or json.load(f)["task"]

    _torchvision_compat()
    from modelscope.outputs import OutputKeys
    from modelscope.pipelines import pipeline
    from modelscope.utils.constant import Tasks
    from PIL import Image

    probs_hook = _install_prob_hook()
    pipe = pipeline(task, model=model_dir, device=a.device)
    model = pipe.model
    if task == Tasks.visual_entailment:
        # use the scoring ('traverse') path so that every label gets a prob
        if model.ans2label_dict and model.gen_type != "traverse":
            model.gen_type = "traverse"
            model.task_inference_mapping[Tasks.visual_entailment] = model._traverse_inference
        labels = [model.index2ans[i] for i in range(len(model.index2ans))]
        probs_hook.last = None

    fin = sys.stdin if a.requests == "-" else open(a.requests)
    fout = sys.stdout if a.out == "-" else open(a.out, "w")
    for n, line in enumerate(fin):
        line = line.strip()
        if not line:
            continue
        req = json.loads(line)
        rid = req.get("id", n)
        try:
            img = Image.open(req["image"]).convert("RGB")
            inp = {"image": img, "text": req["text"]}
            if req.get("text2"):
                inp["text2"] = req["text2"]
            res = pipe(inp)
            if task == Tasks.visual_entailment:
                label = res[OutputKeys.LABELS]
                label = label[0] if isinstance(label, list) else label
                score = res[OutputKeys.SCORES]
                score = score[0] if isinstance(score, list) else score
                probs = {}
                if probs_hook.last is not None:
                    probs = dict(zip(labels, probs_hook.last[0].tolist(), strict=True))
                    probs_hook.last = None
                out = {
                    "id": rid,
                    "label": label,
                    "score": float(score),
                    "probs": probs,
                    "p_yes": probs.get("yes"),
                }
            else:
                raw = [float(v) for v in res[OutputKeys.BOXES][0]]
                w, h = img.size
                box = [
                    min(max(raw[0], 0.0), w),
                    min(max(raw[1], 0.0), h),
                    min(max(raw[2], 0.0), w),
                    min(max(raw[3], 0.0), h),
                ]
                out = {
                    "id": rid,
                    "box": box,
                    "box_raw": raw,
                    "image_size": [w, h],
                    "score": float(res[OutputKeys.SCORES][0]),
                }
        except Exception as e:  # keep going; report per request
            traceback.print_exc(file=sys.stderr)
            out = {"id": rid, "error": f"{type(e).__name__}: {e}"}
        fout.write(json.dumps(out) + "\n")
        fout.flush()


if __name__ == "__main__":
    main()
