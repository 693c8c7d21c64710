"""Built-in image preprocessing: onnxruntime's two calibration recipes and a configurable chain.

Every function takes a PIL image and returns one sample *without* batch dim (CHW or HWC).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from ptqflow.config import PreprocessConfig

_BILINEAR = Image.Resampling.BILINEAR


def _rgb(img: Image.Image) -> Image.Image:
    return img if img.mode == "RGB" else img.convert("RGB")


def preprocess_method1(img: Image.Image, height: int, width: int) -> np.ndarray:
    """onnxruntime's recipe 1 (MobileNet, mlperf): exact resize, x/127.5 - 1, minus the image mean; CHW float32."""
    data = np.asarray(_rgb(img).resize((width, height), _BILINEAR), dtype=np.float32) / 127.5 - 1.0
    data -= np.mean(data)
    return data.transpose(2, 0, 1)


def preprocess_method2(img: Image.Image, height: int, width: int) -> np.ndarray:
    """onnxruntime's recipe 2 (ResNet50, mlperf): exact resize, minus RGB means 123.68/116.78/103.94; CHW float32."""
    data = np.asarray(_rgb(img).resize((width, height), _BILINEAR), dtype=np.float32)
    data = data - np.array([123.68, 116.78, 103.94], dtype=np.float32)
    return data.transpose(2, 0, 1)


def _resize(img: Image.Image, size, mode: str, target: tuple[int, int]) -> Image.Image:
    """Resized image per ``mode``: shorter side, exact [h, w], letterbox (centred, padded) or pad_right."""
    w, h = img.size
    if mode == "shorter" or isinstance(size, int):
        side = size if isinstance(size, int) else min(target)
        scale = side / min(w, h)
        return img.resize((max(1, round(w * scale)), max(1, round(h * scale))), _BILINEAR)
    th, tw = target
    if mode == "exact":
        return img.resize((tw, th), _BILINEAR)
    scale = min(th / h, tw / w) if mode == "letterbox" else th / h
    nw, nh = min(tw, max(1, round(w * scale))), min(th, max(1, round(h * scale)))
    canvas = Image.new("RGB", (tw, th), (0, 0, 0))
    # letterbox centres the image; pad_right (PP-OCR style) keeps it at the left edge, full height.
    offset = ((tw - nw) // 2, (th - nh) // 2) if mode == "letterbox" else (0, 0)
    canvas.paste(img.resize((nw, nh), _BILINEAR), offset)
    return canvas


def _center_crop(data: np.ndarray, crop: list[int]) -> np.ndarray:
    ch, cw = crop
    h, w = data.shape[:2]
    if ch > h or cw > w:
        raise ValueError(f"center_crop {crop} larger than the resized image {h}x{w}")
    top, left = (h - ch) // 2, (w - cw) // 2
    return data[top : top + ch, left : left + cw]


def preprocess_chain(img: Image.Image, cfg: PreprocessConfig, target: tuple[int, int] | None) -> np.ndarray:
    """The configurable chain: resize, centre crop, channel order, scale, mean, std, layout, dtype.

    ``target`` (h, w) is the model's static spatial size; ``cfg.resize`` overrides it. Returns one sample.
    """
    img = _rgb(img)
    size = cfg.resize
    if size is None and target is not None:
        size = list(target) if cfg.resize_mode != "shorter" else min(target)
    if size is not None:
        tgt = tuple(size) if isinstance(size, list) else (target or (size, size))
        img = _resize(img, size, cfg.resize_mode, tgt)
    data = np.asarray(img, dtype=np.float32)
    if cfg.center_crop is not None:
        data = _center_crop(data, cfg.center_crop)
    elif cfg.resize_mode == "shorter" and target is not None and data.shape[:2] != tuple(target):
        data = _center_crop(data, list(target))  # shorter-side resize alone rarely fits a static model
    if cfg.channel_order == "BGR":
        data = data[..., ::-1]
    data = data * np.float32(cfg.scale)
    if cfg.mean is not None:
        data = data - np.asarray(cfg.mean, dtype=np.float32)
    if cfg.std is not None:
        data = data / np.asarray(cfg.std, dtype=np.float32)
    if cfg.layout == "NCHW":
        data = data.transpose(2, 0, 1)
    return np.ascontiguousarray(data.astype(cfg.dtype))


def target_hw(shape: list, layout: str) -> tuple[int, int] | None:
    """The model input's static (h, w) for a 4-D image input, or None when unknown/dynamic."""
    if len(shape) != 4:
        return None
    h, w = (shape[2], shape[3]) if layout == "NCHW" else (shape[1], shape[2])
    return (h, w) if isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0 else None


def preprocess_image(img: Image.Image, cfg: PreprocessConfig, shape: list) -> np.ndarray:
    """One image -> one sample for an input of ``shape`` per ``cfg.method``; ValueError when no size is known."""
    if cfg.method in ("preprocess_method1", "preprocess_method2"):
        hw = target_hw(shape, "NCHW")
        if cfg.resize is not None:
            hw = tuple(cfg.resize) if isinstance(cfg.resize, list) else (cfg.resize, cfg.resize)
        if hw is None:
            raise ValueError(f"{cfg.method} needs a static NCHW input shape or data.preprocess.resize, got {shape}")
        fn = preprocess_method1 if cfg.method == "preprocess_method1" else preprocess_method2
        return fn(img, hw[0], hw[1])
    return preprocess_chain(img, cfg, target_hw(shape, cfg.layout))
