"""magika's bundled content-type model (int32 byte input [N, 2048], Conv + MatMul + LayerNorm, 214 types) on
files of known type that the bench writes, with magika's own feature extraction and label logic.

The bench writes each file with the standard library, Pillow or numpy (random content, a known format), keeps it
in ``<source>-files/``, and stores magika's features of it (the first and last 1024 bytes after stripping
whitespace, padded with token 256: ``Magika._extract_features_from_seekable``) as one int32 ``.npy`` per file,
which ptqflow's build-calibration step reads as is.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import lzma
import random
import sqlite3
import tarfile
import time
import tempfile
import wave
import zipfile
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

import tasks
from ptqflow import demo


def _words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(demo.WORDS) for _ in range(n))


def _name(rng: random.Random) -> str:
    return "_".join(rng.choice(demo.WORDS) for _ in range(rng.randint(1, 3)))


def _python(rng):
    funcs = [f"def {_name(rng)}({', '.join(_name(rng) for _ in range(rng.randint(0, 3)))}):\n"
             f"    \"\"\"{_words(rng, 8).capitalize()}.\"\"\"\n    {_name(rng)} = {rng.randint(0, 99)}\n"
             f"    return {_name(rng)}\n" for _ in range(rng.randint(2, 6))]
    return ("import os\nimport sys\n\n\n" + "\n\n".join(funcs) + "\n\nif __name__ == \"__main__\":\n    main()\n").encode()


def _c(rng):
    funcs = [f"static int {_name(rng)}(int {_name(rng)}) {{\n    int x = {rng.randint(0, 99)};\n"
             f"    for (int i = 0; i < x; i++) {{ x += i; }}\n    return x;\n}}\n" for _ in range(rng.randint(2, 6))]
    return ("#include <stdio.h>\n#include <stdlib.h>\n\n" + "\n".join(funcs)
            + "\nint main(void) {\n    printf(\"%d\\n\", 0);\n    return 0;\n}\n").encode()


def _shell(rng):
    lines = [f"{_name(rng).upper()}=\"{_words(rng, 2)}\"" for _ in range(rng.randint(2, 5))]
    lines += [f"if [ -f \"$1\" ]; then\n  echo \"{_words(rng, 4)}\"\nfi", f"for f in *.txt; do\n  cp \"$f\" /tmp/\ndone"]
    return ("#!/bin/bash\nset -euo pipefail\n\n" + "\n".join(lines) + "\n").encode()


def _json(rng):
    rows = [{_name(rng): rng.choice([rng.randint(0, 9999), _words(rng, 3), rng.random() < 0.5, None])
             for _ in range(rng.randint(2, 6))} for _ in range(rng.randint(2, 12))]
    return json.dumps(rows, indent=rng.choice([None, 2, 4])).encode()


def _csv(rng):
    buf = io.StringIO()
    writer = csv.writer(buf)
    cols = rng.randint(3, 7)
    writer.writerow([_name(rng) for _ in range(cols)])
    for _ in range(rng.randint(10, 60)):
        writer.writerow([rng.choice([rng.randint(0, 9999), f"{rng.uniform(0, 100):.2f}", _words(rng, 1)])
                         for _ in range(cols)])
    return buf.getvalue().encode()


def _html(rng):
    body = "\n".join(f"<p>{_words(rng, rng.randint(5, 20))}</p>" for _ in range(rng.randint(2, 8)))
    return (f"<!DOCTYPE html>\n<html>\n<head>\n<meta charset=\"utf-8\">\n<title>{_words(rng, 3)}</title>\n</head>\n"
            f"<body>\n<h1>{_words(rng, 3)}</h1>\n{body}\n</body>\n</html>\n").encode()


def _xml(rng):
    items = "\n".join(f"  <item id=\"{i}\"><name>{_words(rng, 2)}</name><value>{rng.randint(0, 999)}</value></item>"
                      for i in range(rng.randint(3, 15)))
    return f"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<{_name(rng)}>\n{items}\n</{'root'}>\n".encode()


def _markdown(rng):
    parts = [f"# {_words(rng, 3).title()}\n"]
    for _ in range(rng.randint(2, 5)):
        parts += [f"## {_words(rng, 2).title()}\n", _words(rng, rng.randint(10, 30)) + ".\n",
                  "\n".join(f"- {_words(rng, 4)}" for _ in range(rng.randint(2, 5))) + "\n"]
    return "\n".join(parts).encode()


def _ini(rng):
    return "\n".join(f"[{_name(rng)}]\n" + "\n".join(f"{_name(rng)} = {_words(rng, 1)}" for _ in range(rng.randint(2, 5)))
                     + "\n" for _ in range(rng.randint(2, 5))).encode()


def _image(fmt: str):
    def write(rng):
        w, h = rng.randint(32, 256), rng.randint(32, 256)
        cells = np.random.default_rng(rng.randint(0, 2**31)).integers(0, 256, (h // 8 + 1, w // 8 + 1, 3))
        img = Image.fromarray(cells.astype(np.uint8)).resize((w, h), Image.BILINEAR)
        buf = io.BytesIO()
        # a PDF carries its creation time unless told one: a fixed one keeps a draw's bytes the same in every run
        dates = {"creationDate": time.gmtime(0), "modDate": time.gmtime(0)} if fmt == "PDF" else {}
        img.convert("P" if fmt == "GIF" else "RGB").save(buf, format=fmt, **dates)
        return buf.getvalue()
    return write


def _text_blob(rng) -> bytes:
    return "\n".join(_words(rng, rng.randint(5, 15)) for _ in range(rng.randint(20, 80))).encode()


def _zip(rng):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for _ in range(rng.randint(1, 4)):
            # a member's time is the clock's unless given (and a draw's bytes would differ from run to run)
            z.writestr(zipfile.ZipInfo(f"{_name(rng)}.txt", date_time=(2020, 1, 1, 0, 0, 0)), _text_blob(rng),
                       compress_type=zipfile.ZIP_DEFLATED)
    return buf.getvalue()


def _tar(rng):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for _ in range(rng.randint(1, 3)):
            data = _text_blob(rng)
            info = tarfile.TarInfo(f"{_name(rng)}.txt")
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _npy(rng):
    buf = io.BytesIO()
    shape = tuple(rng.randint(2, 40) for _ in range(rng.randint(1, 3)))
    np.save(buf, np.random.default_rng(rng.randint(0, 2**31)).normal(size=shape).astype(rng.choice(["f4", "f8", "i4"])))
    return buf.getvalue()


def _sqlite(rng):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "db.sqlite"
        con = sqlite3.connect(path)
        con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, value REAL)")
        con.executemany("INSERT INTO t (name, value) VALUES (?, ?)",
                        [(_words(rng, 2), rng.random()) for _ in range(rng.randint(5, 50))])
        con.commit()
        con.close()
        return path.read_bytes()


def _wav(rng):
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(rng.choice([8000, 16000, 22050]))
        t = np.arange(rng.randint(2000, 20000))
        w.writeframes((np.sin(t * rng.uniform(0.01, 0.2)) * 8000).astype("<i2").tobytes())
    return buf.getvalue()


# magika label -> writer of one file of that type (random content, seeded by the rng passed in).
WRITERS = {
    "python": _python, "c": _c, "shell": _shell, "json": _json, "csv": _csv, "html": _html, "xml": _xml,
    "markdown": _markdown, "ini": _ini, "png": _image("PNG"), "jpeg": _image("JPEG"), "gif": _image("GIF"),
    "bmp": _image("BMP"), "tiff": _image("TIFF"), "webp": _image("WEBP"), "pdf": _image("PDF"), "zip": _zip,
    "tar": _tar, "gzip": lambda rng: gzip.compress(_text_blob(rng), mtime=0), "bzip": lambda rng: bz2.compress(_text_blob(rng)),
    "xz": lambda rng: lzma.compress(_text_blob(rng)), "npy": _npy, "sqlite": _sqlite, "wav": _wav,
}


@lru_cache(maxsize=1)
def _magika():
    from magika import Magika

    return Magika()


def features(data: bytes) -> np.ndarray:
    """magika's model input for one file: its feature extraction (beg + end, 2048 ints) as int32 [1, 2048]."""
    from magika.magika import Magika
    from magika.types.seekable import Seekable

    cfg = _magika()._model_config
    fs = Magika._extract_features_from_seekable(Seekable(io.BytesIO(data)), cfg.beg_size, cfg.mid_size, cfg.end_size,
                                                cfg.padding_token, cfg.block_size, cfg.use_inputs_at_offsets)
    return np.asarray([fs.beg[: cfg.beg_size] + fs.end[-cfg.end_size:]], dtype=np.int32)


class MagikaTask:
    name, kind = "magika", "magika"
    transform = None  # the rendered .npy files are the model input already

    def __init__(self):
        import magika

        self.model_path = Path(magika.__file__).parent / "models" / "standard_v3_3" / "model.onnx"
        self._labels = _magika()._model_config.target_labels_space

    def render(self, folder: Path, n: int, seed: int) -> dict:
        """``n`` files of types drawn evenly from WRITERS into ``<folder>-files/``, their features as
        ``<folder>/<i>.npy``; the truth is the type each was written as."""
        rng, truth = random.Random(seed), {}
        files = folder.parent / f"{folder.name}-files"
        for d in (folder, files):
            d.mkdir(parents=True, exist_ok=True)
        kinds = sorted(WRITERS)
        for i in range(n):
            kind = kinds[i % len(kinds)] if i < len(kinds) else rng.choice(kinds)
            data = WRITERS[kind](rng)
            (files / f"{i:05d}.{kind}").write_bytes(data)
            np.save(folder / f"{i:05d}.npy", features(data))
            truth[f"{i:05d}.npy"] = kind
        return tasks._save_truth(folder, truth)

    def labels(self, samples: list, sources: list, truth: dict) -> list:
        return [truth[s.split("[")[0]] for s in sources]  # "<i>.npy[0]": the one sample of that file

    def label(self, out) -> str:
        """magika's answer for one file: the model's top label, then its per-type confidence thresholds
        (``_get_output_label_from_dl_label_and_score``: below them a text file reads 'txt', a binary 'unknown')."""
        from magika.types import ContentTypeLabel

        scores = out[0][0]
        top = int(np.argmax(scores))
        label, _ = _magika()._get_output_label_from_dl_label_and_score(ContentTypeLabel(self._labels[top]),
                                                                       float(scores[top]))
        return str(label)

    def metrics(self, outputs: list, labels: list, refs: list) -> dict:
        res = tasks.top1_metrics(self.label, outputs, labels, refs)
        res["top1_agreement"] = float(np.mean([np.argmax(o[0]) == np.argmax(r[0]) for o, r in zip(outputs, refs)]))
        return res


TASKS = {"magika": MagikaTask}
