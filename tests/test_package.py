"""The package as a user gets it: the library/lab boundary, the public API on its own (a plain PyTorch loop, no
run_glue.py), the size rules of the code, and an install into a fresh virtual environment run from elsewhere."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO
from transformers import AutoModel, BertConfig, BertForSequenceClassification

import peftlab
from peftlab.errors import ConfigError

LIBRARY = [p for p in (REPO / "peftlab").rglob("*.py") if p.relative_to(REPO / "peftlab").parts[0] != "lab"]


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside a function (lazy imports count too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module" and node.args:
            if isinstance(node.args[0], ast.Constant):
                names.add(str(node.args[0].value))
    return names


def test_no_library_module_imports_the_lab():
    assert len(LIBRARY) > 15, LIBRARY  # the walk found the library
    crossing = {
        str(path.relative_to(REPO)): sorted(n for n in imported_modules(path) if n.startswith("peftlab.lab"))
        for path in LIBRARY
    }
    assert not {k: v for k, v in crossing.items() if v}


def test_the_boundary_check_sees_a_lazy_import(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from peftlab.lab.run import main\n    return main\n")
    assert "peftlab.lab.run" in imported_modules(module)


def test_no_module_over_500_lines_and_no_function_over_60():
    long_modules, long_functions = [], []
    for path in (REPO / "peftlab").rglob("*.py"):
        text = path.read_text()
        if text.count("\n") > 500:
            long_modules.append(f"{path.relative_to(REPO)} ({text.count(chr(10))} lines)")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                long_functions.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}")
    assert not long_modules and not long_functions, (long_modules, long_functions)


MONTH = (r"(?:January|February|March|April|May|June|July|August|September|October|November|December"
         r"|Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sept?|Oct|Nov|Dec)\.?")  # fmt: skip
DAY = r"\d{1,2}(?:st|nd|rd|th)?"
YEAR = re.compile(r"(?<![\w./-])(?:19[89]\d|20[0-3]\d)(?![\w]|[./]\d)")
# A paper's year in its citation is what, not when: "ICLR 2022", "Hu et al. 2022", "Li and Liang 2021".
CITED = re.compile(r"(?:\b(?:ACL|EACL|NAACL|EMNLP|COLING|TACL|ICLR|ICML|NeurIPS|NIPS|AAAI|IJCAI|JMLR|arXiv)"
                   r"|\bet al\.|\b[A-Z][a-z]+ and [A-Z][a-z]+),? $")  # fmt: skip
STORY = [
    re.compile(rf"\b{MONTH} {DAY}\b|\b{DAY} (?:of )?{MONTH}(?!\w)"),  # a date: "4 December", "December 4th"
    re.compile(r"\bissues? #?\d+", re.I),  # a tracker's issue
    re.compile(r"\b(?:last|this) turn\b", re.I),  # a session's history
]


def dated_or_story(text: str) -> list[str]:
    """The parts of ``text`` that date it or tell its history: a year (not a cited paper's), a day of a month,
    an issue number, "last turn" or "this turn"."""
    found = [m.group() for m in YEAR.finditer(text) if not CITED.search(text[max(0, m.start() - 40) : m.start()])]
    return found + [m.group() for pattern in STORY for m in pattern.finditer(text)]


def docstrings(path: Path) -> list[tuple[int, str]]:
    """``(line, text)`` of every docstring in ``path``: of the module, each class and function, and the bare
    strings under an assignment that document a constant or a field."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            found.append((node.lineno, node.value.value))
    return found


@pytest.mark.parametrize(
    ("text", "flagged"),
    [
        ("Measured on 4 December 2026: 1.8x faster.", ["2026", "4 December"]),
        ("As of December 4th, the cache is smaller.", ["December 4th"]),
        ("Written 2026-12-04.", ["2026"]),
        ("The bug of issue 36 is gone.", ["issue 36"]),
        ("What the last turn found.", ["last turn"]),
        ("Hu et al., ICLR 2022; Houlsby et al. 2019; Li and Liang 2021.", []),
        ("2**32 seeds, hidden 2048, arxiv.org/abs/2006.12345, 15-bit values, the next turn.", []),
        ("A run may 2 ways: the 10 s cost of a job on one core.", []),
    ],
)
def test_the_docstring_check_flags_dates_and_stories_only(text, flagged):
    assert sorted(dated_or_story(text)) == sorted(flagged)


def test_docstrings_hold_no_dates_or_stories():
    """Docstrings say what and why; when something was measured or changed belongs in the manual and the log."""
    modules = sorted((REPO / "peftlab").rglob("*.py"))
    assert len(modules) > 30, modules  # the walk found the package
    offending = [
        f"{path.relative_to(REPO)}:{line + text[: text.find(hit)].count(chr(10))}: {hit!r}"
        for path in modules
        for line, text in docstrings(path)
        for hit in dated_or_story(text)
    ]
    assert not offending, "\n".join(offending)


def tiny_backbone() -> torch.nn.Module:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32)  # fmt: skip
    return AutoModel.from_config(config)


def batch(n: int = 8) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return {"input_ids": torch.randint(1, 100, (n, 10), generator=generator), "attention_mask": torch.ones(n, 10, dtype=torch.long)}  # fmt: skip


def test_a_plain_loop_trains_only_the_method_and_the_head(tiny_bert, tmp_path):
    backbone = AutoModel.from_pretrained(tiny_bert)
    model = peftlab.classifier(backbone, "adapter@1", num_labels=2, pooling="mean", head="mlp", bottleneck_dim=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trained = peftlab.trainable_state_dict(model)
    assert trained and all(k.startswith("head.") or "adapter" in k for k in trained), sorted(trained)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    inputs, labels = batch(), torch.tensor([0, 1] * 4)
    for _ in range(3):
        model(**inputs, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and changed <= set(trained), changed - set(trained)
    model.eval()
    with torch.no_grad():
        logits = model(**inputs).logits
    folder = peftlab.save(model, tmp_path / "run")
    reloaded = peftlab.load(folder).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(**inputs).logits, logits)


def test_inject_on_a_model_with_its_own_head_keeps_that_head_training():
    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32, num_labels=3)  # fmt: skip
    model = BertForSequenceClassification(config)
    injection = peftlab.inject(model, "lora@0,2", lora_rank=2)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert injection.methods == [("lora", [0, 2])]
    assert {n for n in trainable if n.startswith("classifier.")} == {"classifier.weight", "classifier.bias"}
    assert all("lora" in n for n in trainable if n.startswith("bert.")), trainable
    assert model(**batch()).logits.shape == (8, 3)


def test_a_bad_option_or_method_leaves_the_model_untouched():
    backbone = tiny_backbone()
    state = {k: v.clone() for k, v in backbone.state_dict().items()}
    with pytest.raises(ConfigError, match=r"'botleneck_dim' \(did you mean 'bottleneck_dim'\?\)"):
        peftlab.inject(backbone, "adapter@1", botleneck_dim=2)
    with pytest.raises(ConfigError, match="out of range"):
        peftlab.inject(backbone, "adapter@7")
    assert all(p.requires_grad for p in backbone.parameters())
    assert backbone.state_dict().keys() == state.keys()


def test_a_backbone_built_from_a_config_is_not_saved_as_if_it_could_be_reloaded(tmp_path):
    model = peftlab.classifier(tiny_backbone(), "bitfit")
    with pytest.raises(ValueError, match="built from a config"):
        peftlab.save(model, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_the_methods_are_listed_with_their_options():
    methods = peftlab.available_methods()
    assert {"adapter", "lora", "prefix", "bitfit", "probe", "full"} <= set(methods)
    assert methods["lora"].options_class is not None


def code_blocks(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, flags=re.S)


def test_the_library_page_runs_as_written(tmp_path, monkeypatch):
    """Every Python block of docs/library.md, on the bundled MiniLM, in a fresh folder."""
    blocks = code_blocks((REPO / "docs" / "library.md").read_text())
    assert len(blocks) >= 3
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        exec(compile(block, "docs/library.md", "exec"), {})
    assert (tmp_path / "adapter_run" / "model.safetensors").stat().st_size < 2_000_000


@pytest.mark.slow
def test_installed_in_a_fresh_venv_the_command_runs_from_another_folder(tiny_bert, rte_dir, tmp_path):
    """``pip install .`` (no deps: the venv sees this environment's packages, its pip and setuptools among them), then ``peftlab train`` from elsewhere:
    the console script, the package data and the imports work without the checkout on the path."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "peftlab", source / "peftlab", ignore=shutil.ignore_patterns("__pycache__"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", str(source)]
    subprocess.run(pip, check=True, capture_output=True, timeout=600)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    command = str(venv / "bin" / "peftlab")
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import peftlab; print(peftlab.__file__)"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, check=True)  # fmt: skip
    assert where.stdout.startswith(str(venv)), where.stdout  # the installed copy, not the checkout
    helped = subprocess.run([command, "train", "--help"], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert helped.returncode == 0 and "--cache_frozen_prefix" in helped.stdout, helped.stderr[-2000:]
    assert helped.stdout.startswith("usage: peftlab train"), helped.stdout[:200]
    run = subprocess.run(
        [command, "train", "--task_name", "rte", "--glue_dir", str(rte_dir), "--model_name_or_path", tiny_bert,
         "--method", "adapter@1", "--protocol", "paper", "--cache_frozen_prefix", "--frozen_cache_dir",
         str(tmp_path / "cache"), "--max_train_samples", "8", "--num_train_epochs", "1", "--output_dir", "out",
         "--save_model", "false"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert (elsewhere / "out" / "all_results.json").is_file()
