"""Shared fixtures: a tiny random BERT saved to disk, small GLUE folders written by the tests, the shared data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_GLUE = (REPO.parent / "shared" / "glue").resolve()

requires_shared_glue = pytest.mark.skipif(
    not SHARED_GLUE.is_dir(), reason=f"the shared GLUE folder {SHARED_GLUE} is absent on this machine"
)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> str:
    """A randomly initialised 2-layer BERT (hidden 32) with the bundled model's tokenizer, saved to a folder."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from peftlab.modeling import resolve_model_path

    path = tmp_path_factory.mktemp("tiny-bert")
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(resolve_model_path(None)).save_pretrained(path)
    return str(path)


def load_script(name: str):
    """A module of ``scripts/`` (they are not a package), e.g. ``load_script("compare_precision")``."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write(path: Path, text: str, *, bom: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(("\ufeff" if bom else "") + text, encoding="utf-8")
    return path


RTE_ROWS = [
    ("The cat sat on the mat.", "A cat is sitting.", "entailment"),
    ('He said "hello to everyone.', "He greeted people.", "entailment"),
    ("Paris is the capital of France.", "Berlin is in France.", "not_entailment"),
    ("The sky is green.", 'The sky " is blue.', "not_entailment"),
]


@pytest.fixture
def rte_dir(tmp_path) -> Path:
    """A GLUE folder holding a small RTE in its original TSV format (train, dev and unlabelled test)."""
    root = tmp_path / "glue"
    rows = RTE_ROWS * 4
    header = "index\tsentence1\tsentence2\tlabel\n"
    body = "".join(f"{i}\t{a}\t{b}\t{label}\n" for i, (a, b, label) in enumerate(rows))
    write(root / "RTE" / "train.tsv", header + body)
    write(root / "RTE" / "dev.tsv", header + body)
    test = "".join(f"{i}\t{a}\t{b}\n" for i, (a, b, _) in enumerate(rows[:6]))
    write(root / "RTE" / "test.tsv", "index\tsentence1\tsentence2\n" + test)
    return root


@pytest.fixture(scope="session")
def tiny_bert_no_dropout(tiny_bert, tmp_path_factory) -> str:
    """The tiny BERT without dropout, for runs that must agree exactly (cache, DDP)."""
    from transformers import AutoModel, AutoTokenizer

    path = tmp_path_factory.mktemp("tiny-bert-no-dropout")
    AutoModel.from_pretrained(tiny_bert, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0).save_pretrained(
        path
    )
    AutoTokenizer.from_pretrained(tiny_bert).save_pretrained(path)
    return str(path)


def refuse_model_loading(monkeypatch) -> None:
    """From now on, fail the test if a run gets as far as loading model weights."""
    from peftlab.lab import stages as stages_module

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad input was detected")

    monkeypatch.setattr(stages_module, "make_model", refuse)


@pytest.fixture
def no_model_loading(monkeypatch):
    """Fail the test if a run gets as far as loading model weights."""
    refuse_model_loading(monkeypatch)


def count_training_steps(monkeypatch) -> list[int]:
    """A list that gets one item per training step the Trainer takes from now on."""
    from peftlab.trainer import GlueTrainer

    steps, step = [], GlueTrainer.training_step
    monkeypatch.setattr(GlueTrainer, "training_step", lambda self, *a, **k: steps.append(1) or step(self, *a, **k))
    return steps


def kill_after_checkpoint(monkeypatch, step: int) -> None:
    """From now on, every run is killed (KeyboardInterrupt) right after it writes its checkpoint at ``step``."""
    from transformers import TrainerCallback

    from peftlab.trainer import GlueTrainer

    class Kill(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == step:
                raise KeyboardInterrupt

    build = GlueTrainer.__init__
    monkeypatch.setattr(
        GlueTrainer, "__init__", lambda self, *a, **k: build(self, *a, **k) or self.add_callback(Kill())
    )
