"""Per-model data rendering, preprocessing and task metrics, using rapidocr's own pre/post-processing."""

from __future__ import annotations

import random
from types import SimpleNamespace

import numpy as np

from ptqflow import demo


def _bgr(img) -> np.ndarray:
    """PIL RGB image -> uint8 BGR array, as rapidocr gets it from cv2.imread."""
    return np.ascontiguousarray(np.asarray(img.convert("RGB"))[:, :, ::-1])


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance between two strings."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


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


class Cls:
    name, kind = "cls", "cls"

    def __init__(self):
        from rapidocr_onnxruntime.ch_ppocr_cls.text_cls import TextClassifier
        from rapidocr_onnxruntime.ch_ppocr_cls.utils import ClsPostProcess

        self._pre = lambda img: TextClassifier.resize_norm_img(SimpleNamespace(cls_image_shape=[3, 48, 192]), img)
        self._post = ClsPostProcess(list(demo.CLS_LABELS))
        self.model_path = demo.rapidocr_model("cls")

    def samples(self, n: int, seed: int):
        rng, fonts = random.Random(seed), demo.find_fonts()
        for _ in range(n):
            img, label, _ = demo.render_cls_sample(rng, fonts)
            yield {"x": self._pre(_bgr(img))[None].astype(np.float32)}, label

    def metrics(self, outputs: list, labels: list) -> dict:
        pred = [self._post(o[0])[0][0] for o in outputs]
        return {"accuracy": float(np.mean([p == t for p, t in zip(pred, labels)]))}


class Rec:
    name, kind = "rec", "rec"

    def __init__(self):
        import onnxruntime as ort
        from rapidocr_onnxruntime.ch_ppocr_rec.text_recognize import TextRecognizer
        from rapidocr_onnxruntime.ch_ppocr_rec.utils import CTCLabelDecode

        self.model_path = demo.rapidocr_model("rec")
        meta = ort.InferenceSession(str(self.model_path)).get_modelmeta().custom_metadata_map
        self._post = CTCLabelDecode(character=meta["character"].splitlines())
        self._pre = lambda img: TextRecognizer.resize_norm_img(SimpleNamespace(rec_image_shape=[3, 48, 320]), img, 320 / 48)

    def samples(self, n: int, seed: int):
        rng, fonts = random.Random(seed), demo.find_fonts()
        for _ in range(n):
            text = demo.random_text(rng, 1, 3)
            img = demo.render_line(text, rng, size=rng.randint(24, 40), fonts=fonts)
            yield {"x": self._pre(_bgr(img))[None].astype(np.float32)}, text

    def metrics(self, outputs: list, labels: list) -> dict:
        texts = [self._post(o[0])[0][0] for o in outputs]
        exact = np.mean([p == t for p, t in zip(texts, labels)])
        chars = np.mean([max(0.0, 1 - edit_distance(p, t) / max(1, len(t))) for p, t in zip(texts, labels)])
        return {"exact_match": float(exact), "char_accuracy": float(chars)}


class Det:
    name, kind = "det", "det"
    W, H = 640, 480

    def __init__(self):
        from rapidocr_onnxruntime.ch_ppocr_det.utils import DBPostProcess, DetPreProcess

        self.model_path = demo.rapidocr_model("det")
        # limit_type "max" at 640 keeps the 640x480 pages at their size (2-core budget); rapidocr's other
        # settings (thresholds, unclip ratio, dilation) as in its config.yaml.
        self._pre = DetPreProcess(640, "max", [0.5] * 3, [0.5] * 3)
        self._post = DBPostProcess(thresh=0.3, box_thresh=0.5, max_candidates=1000, unclip_ratio=1.6,
                                   score_mode="fast", use_dilation=True)

    def samples(self, n: int, seed: int):
        rng, fonts = random.Random(seed), demo.find_fonts()
        for _ in range(n):
            img, boxes = demo.render_page(rng, self.W, self.H, fonts=fonts)
            yield {"x": self._pre(_bgr(img)).astype(np.float32)}, [b for _, b in boxes]

    def boxes(self, out) -> list:
        quads, _ = self._post(out[0], (self.H, self.W))
        return [[float(q[:, 0].min()), float(q[:, 1].min()), float(q[:, 0].max()), float(q[:, 1].max())]
                for q in np.asarray(quads).reshape(-1, 4, 2)]

    def metrics(self, outputs: list, labels: list, ref_outputs: list | None = None) -> dict:
        res = {"box_f1": _f1([box_f1(self.boxes(o), t) for o, t in zip(outputs, labels)])}
        if ref_outputs is not None:
            res["box_f1_vs_fp32"] = _f1([box_f1(self.boxes(o), self.boxes(r)) for o, r in zip(outputs, ref_outputs)])
        return res


def _f1(counts: list) -> float:
    tp, npred, ntruth = (sum(c[i] for c in counts) for i in range(3))
    return 2 * tp / (npred + ntruth) if npred + ntruth else 1.0


TASKS = {"cls": Cls, "rec": Rec, "det": Det}
