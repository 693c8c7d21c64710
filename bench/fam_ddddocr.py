"""ddddocr's two bundled models, with data the bench renders and ddddocr's own pre/post-processing.

- ``ddddocr_det``: ``common_det.onnx``, a YOLOX-style detector (box centre/size in grid units, objectness and
  class score concatenated in one [1, 3549, 6] head) that finds the glyphs of click captchas. Data: captcha-like
  images with 3-5 large rotated glyphs on a blurred colour-noise background, each glyph's box known.
- ``ddddocr_ocr``: ``common.onnx``, CNN + LSTM + CTC on a gray 64xW image (its graph declares the output
  [1, seqlen]; the real one is [seqlen, 1, classes]). Data: captchas of known text from the ``captcha`` package.
"""

from __future__ import annotations

import random
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

import tasks

DET_SIZE = (416, 416)  # ddddocr's DetectionEngine.get_bbox letterboxes every image to this size
CAPTCHA_W, CAPTCHA_H = 320, 160
GLYPHS = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789&@#%?"


def _package_file(name: str) -> Path:
    import ddddocr

    return Path(ddddocr.__file__).parent / name


@lru_cache(maxsize=1)
def _engine():
    """ddddocr's DetectionEngine without its session: the bench calls its preproc/postprocess/NMS methods."""
    from ddddocr.core.detection_engine import DetectionEngine

    eng = object.__new__(DetectionEngine)
    eng.session = None  # its __del__ cleans up a session
    return eng


def _bgr(img: Image.Image) -> np.ndarray:
    """PIL image -> uint8 BGR, as ddddocr gets it from cv2.imdecode."""
    return np.ascontiguousarray(np.asarray(img.convert("RGB"))[:, :, ::-1])


def det(img: Image.Image) -> np.ndarray:
    """build-calibration transform: ddddocr's ``preproc`` (letterbox to 416x416 on grey 114, 0-255 floats, CHW)."""
    x, _ = _engine().preproc(_bgr(img), DET_SIZE)
    return x[None]


def _place_glyph(img: Image.Image, rng: random.Random, fonts: list[str], boxes: list) -> None:
    """Draws one rotated glyph where it overlaps no earlier one and appends its tight box; gives up quietly
    after a few tries (the image then has fewer glyphs)."""
    for _ in range(20):
        size = rng.randint(30, 48)
        font = ImageFont.truetype(rng.choice(fonts), size)
        mask = Image.new("L", (size * 2, size * 2), 0)
        ImageDraw.Draw(mask).text((size // 2, size // 2), rng.choice(GLYPHS), font=font, fill=255)
        mask = mask.rotate(rng.uniform(-30, 30), resample=Image.BICUBIC)
        if (bb := mask.getbbox()) is None:
            continue
        mask = mask.crop(bb)
        x, y = rng.randint(0, img.width - mask.width), rng.randint(0, img.height - mask.height)
        box = [x, y, x + mask.width, y + mask.height]
        if any(not (box[2] < o[0] or o[2] < box[0] or box[3] < o[1] or o[3] < box[1]) for o in boxes):
            continue
        img.paste(Image.new("RGB", mask.size, tuple(rng.randint(0, 255) for _ in range(3))), (x, y), mask)
        boxes.append(box)
        return


def render_click_captcha(rng: random.Random, fonts: list[str]) -> tuple[Image.Image, list]:
    """A click-captcha-like image: a smooth random colour background and 3-5 non-overlapping glyphs."""
    cells = np.random.default_rng(rng.randint(0, 2**31)).integers(0, 256, (CAPTCHA_H // 16 + 1, CAPTCHA_W // 16 + 1, 3))
    img = Image.fromarray(cells.astype(np.uint8)).resize((CAPTCHA_W, CAPTCHA_H), Image.BICUBIC)
    boxes: list = []
    for _ in range(rng.randint(3, 5)):
        _place_glyph(img, rng, fonts, boxes)
    return img, boxes


class DdddDet:
    name, kind = "ddddocr_det", "ddddocr_det"
    transform = "fam_ddddocr:det"

    def __init__(self):
        self.model_path = _package_file("common_det.onnx")

    def render(self, folder: Path, n: int, seed: int) -> dict:
        rng, fonts, truth = random.Random(seed), tasks._fonts(), {}
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img, boxes = render_click_captcha(rng, fonts)
            img.save(folder / f"{i:05d}.png")
            truth[f"{i:05d}.png"] = boxes
        return tasks._save_truth(folder, truth)

    def labels(self, samples: list, sources: list, truth: dict) -> list:
        return [truth[s] for s in sources]

    def boxes(self, out) -> list:
        """ddddocr's ``get_bbox`` after the session: grid decode, score = objectness x class, box xyxy in
        image pixels, class-agnostic NMS at 0.45 with score > 0.1 (clipping to the image left out)."""
        eng = _engine()
        pred = eng.demo_postprocess(np.array(out[0], copy=True), DET_SIZE)[0]
        cxcywh, scores = pred[:, :4], pred[:, 4:5] * pred[:, 5:]
        xyxy = np.concatenate([cxcywh[:, :2] - cxcywh[:, 2:] / 2, cxcywh[:, :2] + cxcywh[:, 2:] / 2], axis=1)
        xyxy /= min(DET_SIZE[0] / CAPTCHA_H, DET_SIZE[1] / CAPTCHA_W)
        dets = eng.multiclass_nms(xyxy, scores, nms_thr=0.45, score_thr=0.1)
        return [] if dets is None else dets[:, :4].tolist()

    def metrics(self, outputs: list, labels: list, refs: list) -> dict:
        return tasks.detection_metrics(self.boxes, outputs, labels, refs)


TASKS = {"ddddocr_det": DdddDet}
