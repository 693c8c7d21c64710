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
from types import SimpleNamespace
from unittest import mock

import numpy as np
from PIL import Image, ImageDraw, ImageFont

import tasks
from transforms import _bgr
from ptqflow import demo

DET_SIZE = (416, 416)  # ddddocr's DetectionEngine.get_bbox letterboxes every image to this size
CAPTCHA_W, CAPTCHA_H = 320, 160
GLYPHS = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789&@#%?"
OCR_ALPHABET = "abcdefghijkmnpqrstuvwxyz23456789"  # the captcha package's usual alphabet, no look-alikes
OCR_HEIGHT = 64  # ddddocr resizes every image to height 64, width scaled alike


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


def det(img: Image.Image) -> np.ndarray:
    """build-calibration transform: ddddocr's ``preproc`` (letterbox to 416x416 on grey 114, 0-255 floats, CHW)."""
    x, _ = _engine().preproc(_bgr(img), DET_SIZE)  # BGR, as ddddocr's cv2.imdecode gives it
    return x[None]


def ocr(img: Image.Image) -> np.ndarray:
    """build-calibration transform: ddddocr's ``OCREngine._preprocess_image`` for the bundled models (Lanczos
    resize to height 64, grey, /255, NCHW)."""
    from ddddocr.preprocessing.image_processor import ImageProcessor

    img = ImageProcessor.resize_image(img, (int(img.size[0] * OCR_HEIGHT / img.size[1]), OCR_HEIGHT))
    return (np.asarray(img.convert("L"), dtype=np.float32) / 255.0)[None, None]


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


class DdddDet(tasks.ImageTask):
    name, kind = "ddddocr_det", "ddddocr_det"
    transform = "fam_ddddocr:det"

    def __init__(self):
        self.model_path = _package_file("common_det.onnx")

    def draw(self, rng: random.Random) -> tuple[Image.Image, list]:
        return render_click_captcha(rng, self.fonts)

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


def _captcha_generator():
    """The captcha package's ImageCaptcha at 200x64 with milder glyph distortion (rotation +-10 degrees, less
    warp and offset) than its default, which FP32 ddddocr reads only about half the time at 160x60; its noise
    dots and curve are kept."""
    from captcha.image import ImageCaptcha

    class Mild(ImageCaptcha):
        character_rotate = (-10, 10)
        character_warp_dx = character_warp_dy = (0.05, 0.1)
        character_offset_dx, character_offset_dy = (0, 2), (0, 3)

    return Mild(width=200, height=64)


class DdddOcr(tasks.ImageTask):
    name, kind = "ddddocr_ocr", "ddddocr_ocr"
    transform = "fam_ddddocr:ocr"
    dynamic = True  # its bidirectional LSTM (hidden 512): the dynamic methods' recurrent model

    def __init__(self):
        from ddddocr.core.ocr_engine import OCREngine
        from ddddocr.models.charset_manager import CharsetManager

        self.model_path = _package_file("common.onnx")  # ddddocr's beta model, with the beta charset
        self._engine = object.__new__(OCREngine)  # its CTC decode, without loading a session
        self._engine.session, self._engine.charset_manager = None, CharsetManager()
        self._engine.charset_manager.load_default_charset(old=False, beta=True)

    def render(self, folder: Path, n: int, seed: int) -> dict:
        """Captchas of 4 characters of known text (the captcha package draws them, seeded)."""
        import captcha.image

        rng, gen, truth = random.Random(seed), _captcha_generator(), {}
        folder.mkdir(parents=True, exist_ok=True)
        drawn = random.Random(seed + 1)
        # The package draws fonts, distortions and noise from `secrets`; a seeded stand-in makes a draw repeatable.
        with mock.patch.object(captcha.image, "secrets", SimpleNamespace(
                randbelow=drawn.randrange, randbits=drawn.getrandbits, choice=drawn.choice)):
            for i in range(n):
                text = "".join(rng.choice(OCR_ALPHABET) for _ in range(4))
                gen.generate_image(text).save(folder / f"{i:05d}.png")
                truth[f"{i:05d}.png"] = text
        return tasks._save_truth(folder, truth)

    def text(self, out) -> str:
        """ddddocr's ``_process_text_output``: argmax per step, CTC collapse, beta charset; compared
        case-insensitively (the charset has both cases, the captchas are drawn in one)."""
        return self._engine._process_text_output(out[0]).lower()

    def metrics(self, outputs: list, labels: list, refs: list) -> dict:
        texts, ref_texts = [self.text(o) for o in outputs], [self.text(r) for r in refs]
        chars = [max(0.0, 1 - demo.edit_distance(p, t) / len(t)) for p, t in zip(texts, labels)]
        return {"exact_match": float(np.mean([p == t for p, t in zip(texts, labels)])),
                "char_accuracy": float(np.mean(chars)),
                "text_agreement": float(np.mean([p == r for p, r in zip(texts, ref_texts)]))}


TASKS = {"ddddocr_det": DdddDet, "ddddocr_ocr": DdddOcr}
