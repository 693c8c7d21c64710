"""Per-model rendered data with known content, and task metrics with rapidocr's own post-processing.

Each task renders images (or sentences) into a source folder with their ground truth; ptqflow's
build-calibration step (``ptqflow.data.build``) turns the folder into calibration/validation shards, with
the matching transform of ``transforms.py`` applying the package's own preprocessing.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from ptqflow import demo

def iou(a, b) -> float:
    """IoU of two axis-aligned boxes [x0, y0, x1, y1]."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def box_f1(pred: list, truth: list, thr: float = 0.5) -> tuple[int, int, int]:
    """(true positives, #pred, #truth) with greedy one-to-one matching at IoU >= thr."""
    used, tp = set(), 0
    for p in pred:
        best, bj = 0.0, -1
        for j, t in enumerate(truth):
            if j not in used and (v := iou(p, t)) > best:
                best, bj = v, j
        if best >= thr:
            used.add(bj)
            tp += 1
    return tp, len(pred), len(truth)


def _fonts() -> list[str]:
    """The machine's regular/bold text faces (DejaVu Sans, Serif, Mono and their condensed cuts); a maths
    font's glyph shapes are not text, so it is left out."""
    return [f for f in demo.find_fonts() if "Math" not in Path(f).name]


def rec_text(rng: random.Random) -> str:
    """One to three English words (the dictionary covers them), sometimes capitalised or with a number."""
    words = [rng.choice(demo.WORDS) for _ in range(rng.choice((1, 1, 2, 2, 3)))]
    if rng.random() < 0.3:
        words[0] = words[0].capitalize()
    if rng.random() < 0.3:
        words.append(str(rng.randint(1, 9999)))
    return " ".join(words)


def render_rec_line(rng: random.Random, fonts: list[str], max_ratio: float = 6.6) -> tuple[Image.Image, str]:
    """A text line as a detector crop gives it: 20-40 px glyphs, 2-10 px of margin, dark on light at varied
    contrast, sensor-like noise, sometimes a slight blur. A line wider than ``max_ratio`` (w/h) is drawn
    again, so rapidocr's 48x320 input (ratio 6.67) never squeezes it."""
    while True:
        text, font = rec_text(rng), ImageFont.truetype(rng.choice(fonts), rng.randint(20, 40))
        left, top, right, bottom = font.getbbox(text)
        pad_x, pad_y = rng.randint(2, 10), rng.randint(2, 8)
        w, h = right - left + 2 * pad_x, bottom - top + 2 * pad_y
        if w / h <= max_ratio:
            break
    bg, fg = tuple(rng.randint(160, 255) for _ in range(3)), tuple(rng.randint(0, 90) for _ in range(3))
    img = Image.new("RGB", (w, h), bg)
    ImageDraw.Draw(img).text((pad_x - left, pad_y - top), text, font=font, fill=fg)
    noise = np.random.default_rng(rng.randint(0, 2**31)).normal(0.0, rng.uniform(0.0, 12.0), (h, w, 3))
    img = Image.fromarray(np.clip(np.asarray(img, dtype=np.float32) + noise, 0, 255).astype(np.uint8))
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
    return img, text


def _save_truth(folder: Path, truth: dict) -> dict:
    (folder.parent / f"{folder.name}-truth.json").write_text(json.dumps(truth))
    return truth


class ImageTask:
    """A task whose items are images it draws, one ``draw(rng) -> (image, truth)`` each, saved as
    ``<i>.png`` with their truth beside the folder; ``self.fonts`` holds the machine's text faces."""

    def render(self, folder: Path, n: int, seed: int) -> dict:
        rng, truth, self.fonts = random.Random(seed), {}, _fonts()
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img, truth[f"{i:05d}.png"] = self.draw(rng)
            img.save(folder / f"{i:05d}.png")
        return _save_truth(folder, truth)

    def labels(self, samples: list, sources: list, truth: dict) -> list:
        return [truth[s] for s in sources]


class Cls:
    name, kind = "cls", "cls"
    transform = "transforms:cls"

    def __init__(self):
        from rapidocr_onnxruntime.ch_ppocr_cls.utils import ClsPostProcess

        self._post = ClsPostProcess(list(demo.CLS_LABELS))
        self.model_path = demo.rapidocr_model("cls")

    def render(self, folder: Path, n: int, seed: int) -> dict:
        """Text-line crops rotated 0 or 180 degrees, ImageFolder layout ``<label>/<i>.png``."""
        rng, fonts, truth = random.Random(seed), _fonts(), {}
        for label in demo.CLS_LABELS:
            (folder / label).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img, label, _ = demo.render_cls_sample(rng, fonts)
            img.save(folder / label / f"{i:05d}.png")
            truth[f"{label}/{i:05d}.png"] = label
        return _save_truth(folder, truth)

    def labels(self, samples: list, sources: list, truth: dict) -> list:
        return [truth[s] for s in sources]

    def metrics(self, outputs: list, labels: list) -> dict:
        pred = [self._post(o[0])[0][0] for o in outputs]
        return {"accuracy": float(np.mean([p == t for p, t in zip(pred, labels)]))}


class Rec:
    name, kind = "rec", "rec"
    transform = "transforms:rec"

    def __init__(self):
        import onnxruntime as ort
        from rapidocr_onnxruntime.ch_ppocr_rec.utils import CTCLabelDecode

        self.model_path = demo.rapidocr_model("rec")
        meta = ort.InferenceSession(str(self.model_path)).get_modelmeta().custom_metadata_map
        self._post = CTCLabelDecode(character=meta["character"].splitlines())

    def render(self, folder: Path, n: int, seed: int) -> dict:
        rng, fonts, truth = random.Random(seed), _fonts(), {}
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img, text = render_rec_line(rng, fonts)
            img.save(folder / f"{i:05d}.png")
            truth[f"{i:05d}.png"] = text
        return _save_truth(folder, truth)

    def labels(self, samples: list, sources: list, truth: dict) -> list:
        return [truth[s] for s in sources]

    def texts(self, outputs: list) -> list[str]:
        """Decoded lines; leading/trailing blanks (the crop margin read as a space) are not text."""
        return [self._post(o[0])[0][0].strip() for o in outputs]

    def metrics(self, outputs: list, labels: list) -> dict:
        texts = self.texts(outputs)
        exact = np.mean([p == t for p, t in zip(texts, labels)])
        chars = np.mean([max(0.0, 1 - demo.edit_distance(p, t) / max(1, len(t))) for p, t in zip(texts, labels)])
        return {"exact_match": float(exact), "char_accuracy": float(chars)}


class Det:
    name, kind = "det", "det"
    transform = "transforms:det"
    W, H = 640, 480

    def __init__(self):
        from rapidocr_onnxruntime.ch_ppocr_det.utils import DBPostProcess

        self.model_path = demo.rapidocr_model("det")
        # rapidocr's config.yaml settings (thresholds, unclip ratio, dilation).
        self._post = DBPostProcess(thresh=0.3, box_thresh=0.5, max_candidates=1000, unclip_ratio=1.6,
                                   score_mode="fast", use_dilation=True)

    def render(self, folder: Path, n: int, seed: int) -> dict:
        """640x480 pages of text lines with their boxes [x0, y0, x1, y1]."""
        rng, fonts, truth = random.Random(seed), _fonts(), {}
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img, boxes = demo.render_page(rng, self.W, self.H, fonts=fonts)
            img.save(folder / f"{i:05d}.png")
            truth[f"{i:05d}.png"] = [b for _, b in boxes]
        return _save_truth(folder, truth)

    def labels(self, samples: list, sources: list, truth: dict) -> list:
        return [truth[s] for s in sources]

    def boxes(self, out) -> list:
        quads, _ = self._post(out[0], (self.H, self.W))
        return [[float(q[:, 0].min()), float(q[:, 1].min()), float(q[:, 0].max()), float(q[:, 1].max())]
                for q in np.asarray(quads).reshape(-1, 4, 2)]

    def metrics(self, outputs: list, labels: list, ref_outputs: list | None = None) -> dict:
        return detection_metrics(self.boxes, outputs, labels, ref_outputs)


def _f1(counts: list) -> float:
    tp, npred, ntruth = (sum(c[i] for c in counts) for i in range(3))
    return 2 * tp / (npred + ntruth) if npred + ntruth else 1.0


def detection_metrics(boxes, outputs: list, labels: list, refs: list | None) -> dict:
    """Box F1 at IoU 0.5 against the ground-truth boxes and (with ``refs``) against the FP32 model's boxes;
    ``boxes`` turns one sample's model outputs into [x0, y0, x1, y1] boxes."""
    res = {"box_f1": _f1([box_f1(boxes(o), t) for o, t in zip(outputs, labels)])}
    if refs is not None:
        res["box_f1_vs_fp32"] = _f1([box_f1(boxes(o), boxes(r)) for o, r in zip(outputs, refs)])
    return res


def top1_metrics(classes, outputs: list, labels: list, refs: list) -> dict:
    """Accuracy of the predicted class against the truth and top-1 agreement with the FP32 model;
    ``classes`` turns one sample's model outputs into its predicted label."""
    pred, ref = [classes(o) for o in outputs], [classes(r) for r in refs]
    return {"accuracy": float(np.mean([p == t for p, t in zip(pred, labels)])),
            "top1_agreement": float(np.mean([p == r for p, r in zip(pred, ref)]))}


TASKS = {"cls": Cls, "rec": Rec, "det": Det}
