"""A self-contained demo: the PP-OCR text recognizer bundled with rapidocr-onnxruntime plus rendered text lines
of known content, laid out as an image folder with a PaddleOCR-style label file that ptqflow can calibrate on
and validate against (exact match and character accuracy after CTC decoding).

The recognizer is a model where INT8 pays off on a CPU (a few tens of ms per line) and where quantizing with
careless defaults destroys the output. Its lines are drawn with the font bundled in Pillow, never a system
font, so the images and with them the demo's figures are the same on every machine.

The render helpers are shared with the benchmark (``bench/``), which needs text lines with known strings
(recognition), pages with known boxes (detection) and rotated crops (direction classification).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from ptqflow.errors import InputError

# Label order of the PP-OCR cls model (rapidocr's config: label_list ['0', '180']).
CLS_LABELS = ("0", "180")

WORDS = (
    "the quick brown fox jumps over lazy dog invoice total amount due date payment received thank you "
    "customer order number shipping address street city country phone email account balance statement "
    "page report summary quarter revenue growth market share product service support team manager "
    "meeting agenda project deadline review approved pending delivered returned price quantity discount "
    "weather forecast morning evening station train platform ticket return single adult child museum "
    "open closed monday tuesday wednesday thursday friday saturday sunday january february march april "
    "library book chapter section figure table reference author title publisher edition volume issue "
    "hospital doctor patient room floor building entrance exit parking level north south east west "
    "coffee tea water juice bread cheese apple orange banana chicken salad soup menu dinner lunch"
).split()

_FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts", "/Library/Fonts", "C:/Windows/Fonts")


@dataclass
class DemoSetup:
    """What ``prepare`` made: the FP32 model, the ImageFolder and a ptqflow pipeline config dict."""

    model_path: Path
    data_dir: Path
    config: dict = field(default_factory=dict)


def rapidocr_model(kind: str) -> Path:
    """Path of the bundled rapidocr model whose file name contains ``kind`` ('cls', 'rec' or 'det')."""
    try:
        import rapidocr_onnxruntime
    except ImportError:
        raise InputError("the demo needs rapidocr-onnxruntime (pip install rapidocr-onnxruntime)") from None
    models = Path(rapidocr_onnxruntime.__file__).parent / "models"
    found = sorted(models.glob(f"*{kind}*.onnx"))
    if not found:
        raise InputError(f"no *{kind}*.onnx model in {models}")
    return found[0]


def find_fonts() -> list[str]:
    """TrueType fonts found on the system (sans/serif/mono regular faces first); may be empty."""
    fonts: list[Path] = []
    for d in _FONT_DIRS:
        p = Path(d)
        if p.is_dir():
            fonts.extend(sorted(p.rglob("*.ttf")))
    # Light/oblique/condensed faces are legible too but keep the set to ordinary ones.
    plain = [f for f in fonts if not any(k in f.name for k in ("ExtraLight", "Oblique", "Italic"))]
    return [str(f) for f in (plain or fonts)]


def load_font(size: int, rng: random.Random, fonts: list[str] | None = None) -> ImageFont.FreeTypeFont:
    """A random system font at ``size``, else Pillow's bundled default font at that size."""
    fonts = find_fonts() if fonts is None else fonts
    if fonts:
        return ImageFont.truetype(rng.choice(fonts), size)
    return ImageFont.load_default(size=size)


def random_text(rng: random.Random, min_words: int = 2, max_words: int = 6) -> str:
    """A line of real English words, sometimes capitalised, sometimes with a number."""
    words = [rng.choice(WORDS) for _ in range(rng.randint(min_words, max_words))]
    if rng.random() < 0.5:
        words[0] = words[0].capitalize()
    if rng.random() < 0.3:
        words.append(str(rng.randint(1, 9999)))
    return " ".join(words)


def _colours(rng: random.Random) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    bg = tuple(rng.randint(200, 255) for _ in range(3))
    fg = tuple(rng.randint(0, 70) for _ in range(3))
    return bg, fg  # type: ignore[return-value]


def _noise(img: Image.Image, rng: random.Random) -> Image.Image:
    arr = np.asarray(img, dtype=np.float32)
    sigma = rng.uniform(0.0, 8.0)
    noise = np.random.default_rng(rng.randint(0, 2**31)).normal(0.0, sigma, arr.shape)
    out = Image.fromarray(np.clip(arr + noise, 0, 255).astype(np.uint8))
    if rng.random() < 0.3:
        out = out.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.8)))
    return out


def render_line(text: str, rng: random.Random, size: int | None = None, fonts: list[str] | None = None) -> Image.Image:
    """An RGB crop of one text line, tight like a detector crop (a few pixels of margin)."""
    size = size or rng.randint(18, 40)
    font = load_font(size, rng, fonts)
    left, top, right, bottom = font.getbbox(text)
    pad_x, pad_y = rng.randint(2, 8), rng.randint(2, 6)
    w, h = right - left + 2 * pad_x, bottom - top + 2 * pad_y
    bg, fg = _colours(rng)
    img = Image.new("RGB", (w, h), bg)
    ImageDraw.Draw(img).text((pad_x - left, pad_y - top), text, font=font, fill=fg)
    return _noise(img, rng)


def render_page(
    rng: random.Random, width: int = 640, height: int = 480, n_lines: int | None = None, fonts: list[str] | None = None
) -> tuple[Image.Image, list[tuple[str, list[int]]]]:
    """A page of text lines; returns the image and [(text, [x0, y0, x1, y1])] for every line drawn."""
    bg, fg = _colours(rng)
    img = Image.new("RGB", (width, height), bg)
    draw = ImageDraw.Draw(img)
    boxes: list[tuple[str, list[int]]] = []
    y = rng.randint(10, 30)
    n_lines = n_lines or rng.randint(4, 9)
    for _ in range(n_lines):
        size = rng.randint(18, 32)
        font = load_font(size, rng, fonts)
        text = random_text(rng, 2, 5)
        x = rng.randint(10, 60)
        left, top, right, bottom = font.getbbox(text)
        if x + right - left > width - 10:
            continue
        if y + bottom - top > height - 10:
            break
        draw.text((x - left, y - top), text, font=font, fill=fg)
        boxes.append((text, [x, y, x + right - left, y + bottom - top]))
        y += bottom - top + rng.randint(12, 30)
    return _noise(img, rng), boxes


def render_cls_sample(rng: random.Random, fonts: list[str] | None = None) -> tuple[Image.Image, str, str]:
    """A text-line crop rotated by 0 or 180 degrees; returns (image, label, text)."""
    text = random_text(rng)
    img = render_line(text, rng, fonts=fonts)
    label = rng.choice(CLS_LABELS)
    if label == "180":
        img = img.rotate(180)
    return img, label, text


# The recognizer's input as rapidocr feeds it: height 48, width up to 320 (ratio 6.67), right-padded.
REC_HEIGHT, REC_WIDTH = 48, 320
LABEL_FILE = "labels.txt"


def render_rec_line(rng: random.Random, fonts: list[str] | None = None) -> tuple[Image.Image, str]:
    """A text line as a detector crop gives it (20-40 px glyphs, a few px of margin, varied contrast, noise,
    sometimes blur) and its text; lines wider than the recognizer's 48x320 input are drawn again, so the
    resize never squeezes one. ``fonts=[]`` draws with Pillow's bundled font, the same on every machine."""
    while True:
        words = [rng.choice(WORDS) for _ in range(rng.choice((1, 1, 2, 2, 3)))]
        if rng.random() < 0.3:
            words[0] = words[0].capitalize()
        if rng.random() < 0.3:
            words.append(str(rng.randint(1, 9999)))
        text = " ".join(words)
        font = load_font(rng.randint(20, 40), rng, fonts)
        left, top, right, bottom = font.getbbox(text)
        pad_x, pad_y = rng.randint(2, 10), rng.randint(2, 8)
        w, h = right - left + 2 * pad_x, bottom - top + 2 * pad_y
        if w / h <= REC_WIDTH / REC_HEIGHT - 0.05:
            break
    bg, fg = _colours(rng)
    img = Image.new("RGB", (w, h), bg)
    ImageDraw.Draw(img).text((pad_x - left, pad_y - top), text, font=font, fill=fg)
    return _noise(img, rng), text


def rec_config(model_path: Path, data_dir: Path) -> dict:
    """Pipeline config for the PP-OCR rec model, preprocessing as rapidocr's TextRecognizer feeds it: BGR,
    height 48 keeping aspect, right-padded to 320, (x/255 - 0.5) / 0.5; text labels from the label file and
    the OCR metrics of ``text_metrics``."""
    return {
        "model": str(model_path),
        "data": {
            "source": str(data_dir),
            "label_file": LABEL_FILE,
            "preprocess": {
                "method": "chain",
                "resize": [REC_HEIGHT, REC_WIDTH],
                "resize_mode": "pad_right",
                "scale": 1.0 / 255.0,
                "mean": [0.5, 0.5, 0.5],
                "std": [0.5, 0.5, 0.5],
                "channel_order": "BGR",
                "layout": "NCHW",
                "dtype": "float32",
            },
            "validation_size": 200,
            "seed": 0,
        },
        "quantization": {"subset_size": 300},
        "validation": {
            "metric": "ptqflow.demo:text_metrics",
            # Character accuracy moves smoothly with quantization error; exact match of whole lines is reported
            # beside it. The output is a softmax per time step, and its cosine to FP32 (about 0.95) is dominated
            # by the padding steps, which decode to blanks either way: a loose secondary check only. Speed is
            # reported, not gated: a shared 2-core machine's timings are too noisy to fail a demo on.
            "gate": {"max_accuracy_drop": 0.02, "accuracy_metric": "char_accuracy", "min_cosine": 0.9,
                     "min_speedup": None},
        },
    }


def prepare(output_dir: Path, n_images: int = 500, seed: int = 0) -> DemoSetup:
    """Render ``n_images`` text lines into ``output_dir/data/lines/`` with their texts in
    ``output_dir/data/labels.txt``; return the bundled rec model, the data dir and a config dict."""
    if n_images < 2:
        raise InputError(f"n_images must be at least 2 (got {n_images})")
    output_dir = Path(output_dir)
    model_path = rapidocr_model("rec")
    data_dir = output_dir / "data"
    (data_dir / "lines").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    labels = []
    for i in range(n_images):
        img, text = render_rec_line(rng, fonts=[])
        img.save(data_dir / "lines" / f"{i:05d}.png")
        labels.append(f"lines/{i:05d}.png\t{text}\n")
    (data_dir / LABEL_FILE).write_text("".join(labels), encoding="utf-8")
    return DemoSetup(model_path=model_path, data_dir=data_dir, config=rec_config(model_path, data_dir))


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance between two strings."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


@lru_cache(maxsize=1)
def _rec_characters() -> tuple[str, ...]:
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(rapidocr_model("rec")), load_external_data=False).metadata_props}
    return tuple(meta["character"].splitlines())


def ctc_decode(probs: np.ndarray) -> str:
    """Greedy CTC decoding of one [T, C] output of the bundled recognizer (class 0 is the blank, the last a
    space), as rapidocr decodes it; the crop margin read as leading/trailing spaces is not text."""
    chars = ("",) + _rec_characters() + (" ",)
    best = np.argmax(probs, axis=-1)
    keep = np.r_[True, best[1:] != best[:-1]] & (best != 0)
    return "".join(chars[i] for i in best[keep] if i < len(chars)).strip()


def text_metrics(outputs: dict[str, np.ndarray], labels: list[str]) -> dict[str, float]:
    """OCR metrics of the recognizer's output against the label strings: exact_match (share of lines read
    exactly) and char_accuracy (mean of 1 - edit distance / label length, floored at 0)."""
    probs = next(iter(outputs.values()))
    texts = [ctc_decode(p) for p in probs]
    exact = np.mean([t == y for t, y in zip(texts, labels)])
    chars = np.mean([max(0.0, 1.0 - edit_distance(t, y) / max(1, len(y))) for t, y in zip(texts, labels)])
    return {"exact_match": float(exact), "char_accuracy": float(chars)}


def summary(pipeline_dir: Path) -> list[str]:
    """The demo's headline figures, one line each, from the validate and export-ir manifests that exist: the
    task metrics of FP32 and INT8, the OpenVINO speedup against the FP32 IR at f32 and at the CPU's default
    precision (bf16 on CPUs with AMX or AVX512-BF16), and the IR's size."""
    from ptqflow.artifacts.manifest import read_manifest

    lines = []
    validate = read_manifest(pipeline_dir / "validate")
    if validate is not None:
        m = validate.metrics
        metrics = [k[len("fp32_"):] for k in m if k.startswith("fp32_") and f"int8_{k[len('fp32_'):]}" in m]
        task = ", ".join(f"{k} FP32 {m[f'fp32_{k}']:.3f} / INT8 {m[f'int8_{k}']:.3f}" for k in metrics)
        lines.append(f"on {m['samples']} held-out samples: {task or 'no task metric'}; "
                     f"output cosine >= {m['min_cosine']:.4f}")
        if m.get("speedup_openvino") is not None:
            line = (f"OpenVINO CPU speedup of INT8 over the FP32 IR, batch-1 latency: {m['speedup_openvino']:.2f}x "
                    f"against {m.get('openvino_fp32_precision', 'f32')}")
            if m.get("speedup_openvino_default_precision") is not None:
                line += (f", {m['speedup_openvino_default_precision']:.2f}x against this CPU's default "
                         f"{m['openvino_default_precision']}")
            else:
                line += " (this CPU's default precision)"
            lines.append(line + " on this machine")
    export = read_manifest(pipeline_dir / "export-ir")
    if export is not None:
        m = export.metrics
        lines.append(f"INT8 IR: {m['fake_quantize']} FakeQuantize, weights {m['bin_bytes'] / 1024:.0f} KiB "
                     f"({m['size_ratio']:.2f} of FP32); IR vs FP32 relative L2 {m['parity_ir_vs_fp32']:.3f}")
    return lines
