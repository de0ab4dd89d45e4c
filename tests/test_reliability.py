"""Reliability, round 2: what the user asked for is what runs. One section per class of defect:
sweep files checked whole before any job; a preset that fills only what the user did not set; state on disk (the
cache, a resume, a search, an overwritten folder) that notices what changed; bad values refused in one line before
anything is loaded; disk trouble found before training; the records of a resumed run and of a user's file."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, count_training_steps, kill_after_checkpoint, write
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peftlab.errors import ConfigError
from peftlab.io import output_lock, write_json
from peftlab.lab.parsing import parse_args
from peftlab.lab.run import main as run_main
from peftlab.lab.sweep import load_sweep, run_sweep
from peftlab.lab.sweepfile import SweepFile, expand

FAST = ["--per_device_train_batch_size", "4", "--disable_tqdm", "True", "--seed", "7"]


def main(argv: list[str]):
    try:
        return run_main(argv)
    except ConfigError as err:
        assert "\n" not in str(err), str(err)
        raise


def base(model: str, glue: Path, out: Path) -> list[str]:
    return ["--model_name_or_path", model, "--task_name", "rte", "--glue_dir", str(glue), "--output_dir", str(out)]


# --------------------------------------------------------------------------------------------------------------
# 1. A sweep file is checked whole, and its runs stay under --root
# --------------------------------------------------------------------------------------------------------------
GOOD = {"name": "s", "tasks": ["rte"], "variants": {"a": {"method": "adapter@1"}}}


@pytest.mark.parametrize(
    "change,message",
    [
        ({"name": "/tmp/elsewhere"}, r"the name '/tmp/elsewhere' is not a plain folder name"),
        ({"name": "../.."}, r"the name '../..' is not a plain folder name"),
        ({"variants": {"../../x": {"method": "full"}}}, r"the variant name '../../x' is not a plain folder name"),
        ({"variants": {"a/b": {"method": "full"}}}, r"the variant name 'a/b' is not a plain folder name"),
        ({"comon": {"seed": 1}}, r"unknown key 'comon' \(did you mean 'common'\?\)"),
        ({"tasks": "rte"}, r"'tasks' is 'rte', expected a list of strings"),
        ({"seeds": 42}, r"'seeds' is 42, expected a list of whole numbers"),
        ({"seeds": [42, 42]}, r"'seeds' repeats 42"),
        ({"tasks": ["rte", "mrpc", "rte"]}, r"'tasks' repeats rte"),
        ({"tasks": ["rtee"]}, r"task 'rtee' is not a GLUE task \(did you mean 'rte'\?\)"),
        ({"variants": {"a": {"method": "adapter", "per_layer": True}}}, r"variant 'a' has per_layer but the sweep has no 'layers'"),
        ({"common": {"output_dir": "/tmp/x"}}, r"common sets 'output_dir', which the sweep sets on every run itself"),
        ({"variants": {"a": {"method": "full", "seed": 3}}}, r"variant 'a' sets 'seed'"),
        ({"task_args": {"mrpc": {"num_train_epochs": 1}}}, r"task_args names 'mrpc', which is not among its tasks"),
        ({"variants": {"a": {"lr": 1}}}, r"variant 'a' needs a 'method' string"),
    ],
)  # fmt: skip
def test_a_bad_sweep_file_is_refused_naming_the_key(tmp_path, change, message):
    with pytest.raises(ConfigError, match=message):
        expand({**GOOD, **change}, tmp_path / "root")
    assert not (tmp_path / "root").exists()


def test_repeated_layers_are_one_grid_point_given_twice(tmp_path):
    sweep = {**GOOD, "layers": [1, 1], "variants": {"a": {"method": "adapter", "per_layer": True}}}
    with pytest.raises(ConfigError, match=r"'layers' repeats 1"):
        expand(sweep, tmp_path)


NAME_PARTS = st.sampled_from(["a", "b1", "..", ".", "/", "x/../..", "/tmp", "ok-name", "n.v", "_z", "", " "])
ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 50) | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=2),
    max_leaves=5,
)
SWEEP_VALUES = {
    "name": st.lists(NAME_PARTS, min_size=1, max_size=3).map("".join) | ANY_JSON,
    "tasks": st.lists(st.sampled_from(["rte", "mrpc", "cola", "rtee"]), max_size=3) | ANY_JSON,
    "seeds": st.lists(st.integers(-2, 2**33), max_size=3) | ANY_JSON,
    "layers": st.lists(st.integers(-1, 4), max_size=3) | ANY_JSON,
    "variants": st.dictionaries(
        st.lists(NAME_PARTS, min_size=1, max_size=2).map("".join),
        st.fixed_dictionaries({"method": st.sampled_from(["adapter", "lora@1", "full"])}, optional={"per_layer": st.booleans()}),
        max_size=3,
    ) | ANY_JSON,
    "comon": ANY_JSON,
    "protocol": st.sampled_from(["paper", "quick", None]) | ANY_JSON,
}  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sweep=st.fixed_dictionaries({}, optional=SWEEP_VALUES))
def test_any_sweep_file_is_refused_in_one_line_or_writes_only_under_its_root(tmp_path, sweep):
    """Whatever a sweep file holds, either a ConfigError names what is wrong, or every run has a folder of its own
    inside --root/<name>."""
    root = tmp_path / "root"
    try:
        runs = expand(sweep, root)
    except ConfigError as err:
        assert "\n" not in str(err)
        return
    folders = [run.output_dir.resolve() for run in runs]
    assert len(set(folders)) == len(folders)
    assert all((root / sweep["name"]).resolve() in folder.parents for folder in folders)
    assert set(sweep) <= {f for f in SweepFile.__dataclass_fields__}


def test_a_typo_in_one_variant_stops_the_sweep_before_its_first_job(tmp_path):
    sweep = {**GOOD, "variants": {"ok": {"method": "adapter@1"}, "typo": {"method": "adapter@1", "bottlenek_dim": 4}}}
    runs = expand(sweep, tmp_path)
    with pytest.raises(ConfigError, match=r"variant 'typo' \(run rte/typo/seed42.*unknown argument 'bottlenek_dim' \(did you mean 'bottleneck_dim'\?\)"):  # fmt: skip
        run_sweep(runs, tmp_path / "s", log=lambda _: None)
    assert not (tmp_path / "s" / ".jobs").exists()


def test_the_dry_run_parses_every_run_and_names_the_file(tmp_path):
    bad = {**GOOD, "variants": {"a": {"method": "adapter@1", "num_train_epochs": "three"}}}
    path = write(tmp_path / "bad.json", json.dumps(bad))
    out = subprocess.run([sys.executable, "scripts/sweep.py", str(path), "--root", str(tmp_path / "r"), "--dry_run"],
                         cwd=REPO, capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert out.stderr.count("\n") == 1 and f"Sweep file {path}, variant 'a'" in out.stderr
    assert "'num_train_epochs' is \"three\"" in out.stderr and not (tmp_path / "r").exists()


def small_sweep(model: str, glue: Path, **variants) -> dict:
    common = {"model_name_or_path": model, "glue_dir": str(glue), "num_train_epochs": 1,
              "per_device_train_batch_size": 8, "max_seq_length": 64}  # fmt: skip
    return {"name": "s", "tasks": ["rte"], "common": common, "variants": variants}


def test_the_driver_prints_why_a_run_failed(tiny_bert, rte_dir, tmp_path):
    """A run that fails its checks inside its job (the data's limit) fails alone; the driver prints its reason."""
    sweep = small_sweep(tiny_bert, rte_dir, ok={"method": "probe"}, long={"method": "probe", "max_seq_length": 4096})
    runs = expand(sweep, tmp_path)
    lines: list[str] = []
    left = run_sweep(runs, tmp_path / "s", log=lines.append)
    assert [run.name for run in left] == ["rte/long/seed42"]
    assert any("failed rte/long/seed42: ConfigError: --max_seq_length 4096 exceeds the model's limit" in line for line in lines), lines  # fmt: skip
    assert any(line.startswith("  log: ") for line in lines)


def test_a_run_locked_by_another_driver_is_left_to_it_not_failed(tiny_bert, rte_dir, tmp_path):
    from peftlab.io import is_locked
    from peftlab.lab import job
    from peftlab.lab.sweep import plan_jobs, write_job_file

    runs = expand(small_sweep(tiny_bert, rte_dir, a={"method": "probe"}), tmp_path)
    (chunk,) = plan_jobs(runs, workers=1)
    path = write_job_file(chunk, tmp_path / "s")
    with output_lock(runs[0].output_dir):  # another driver's job is training it
        assert is_locked(runs[0].output_dir)
        assert job.main(str(path)) == 0
    result = json.loads(path.with_suffix(".result.json").read_text())
    assert result["runs"][0]["outcome"] == job.LOCKED
    assert not is_locked(runs[0].output_dir)


# --------------------------------------------------------------------------------------------------------------
# 2. A preset fills only what the user did not set
# --------------------------------------------------------------------------------------------------------------
def effective(spec, key):
    """What the run does for ``key``, whatever field or alias carries it."""
    t = spec.training_args
    return {
        "warmup_steps": t.warmup_steps,
        "warmup_ratio": t.warmup_steps,
        "load_best_model_at_end": t.load_best_model_at_end or t.select_best_in_memory,
        "eval_strategy": str(getattr(t.eval_strategy, "value", t.eval_strategy)),
        "evaluation_strategy": str(getattr(t.eval_strategy, "value", t.eval_strategy)),
        "learning_rate": t.learning_rate,
        "head_learning_rate": t.head_learning_rate if t.head_learning_rate is not None else t.learning_rate,
        "num_train_epochs": t.num_train_epochs,
        "per_device_train_batch_size": t.per_device_train_batch_size,
        "pooling": spec.model_args.pooling,
        "bottleneck_dim": spec.peft_args.bottleneck_dim,
        "early_stopping_patience": t.early_stopping_patience,
    }[key]


EXPLICIT = [
    ("warmup_steps", "3", 3), ("warmup_ratio", "0.2", 0.2), ("load_best_model_at_end", "false", False),
    ("eval_strategy", "no", "no"), ("evaluation_strategy", "no", "no"), ("evaluation_strategy", "steps", "steps"),
    ("learning_rate", "1e-4", 1e-4), ("num_train_epochs", "2", 2.0), ("per_device_train_batch_size", "8", 8),
    ("pooling", "cls", "cls"), ("bottleneck_dim", "8", 8), ("early_stopping_patience", "2", 2),
]  # fmt: skip


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    protocol=st.sampled_from(["paper", "quick"]),
    task=st.sampled_from(["rte", "mrpc", "stsb"]),
    method=st.sampled_from(["adapter@2", "lora@1", "full", "probe"]),
    flags=st.lists(st.sampled_from(EXPLICIT), min_size=1, max_size=2, unique_by=lambda f: f[0]),
    as_json=st.booleans(),
)
def test_every_value_the_user_gives_is_the_value_that_runs(tmp_path, protocol, task, method, flags, as_json):
    """Preset x explicit flag: the run does what the flag says, whether the preset sets that field, an alias of it
    or an option derived from it; the record says what the preset left out and why."""
    keys = {k for k, _, _ in flags}
    if {"eval_strategy", "evaluation_strategy"} <= keys or {"warmup_steps", "warmup_ratio"} <= keys:
        return  # two spellings of one option: a contradiction the user wrote
    if "early_stopping_patience" in keys and (keys & {"eval_strategy", "evaluation_strategy", "load_best_model_at_end"}):  # fmt: skip
        return  # asked for early stopping and for no best-epoch selection at once (refused: tested below)
    given_ = {"protocol": protocol, "task_name": task, "method": method, "output_dir": str(tmp_path / "o")}
    argv = [part for k, v in given_.items() for part in (f"--{k}", v)] + [p for k, v, _ in flags for p in (f"--{k}", v)]

    def parse(with_protocol: bool):
        chosen = given_ if with_protocol else {k: v for k, v in given_.items() if k != "protocol"}
        if as_json:
            values = {**chosen, **{k: value for k, _, value in flags}}
            return parse_args([str(write(tmp_path / "a.json", json.dumps(values)))])
        return parse_args([p for k, v in chosen.items() for p in (f"--{k}", v)] + argv[len(given_) * 2 :])

    try:
        spec = parse(with_protocol=True)
    except ConfigError:  # the preset may never be the cause of a refusal: the user's flags alone are refused too
        with pytest.raises(ConfigError):
            parse(with_protocol=False)
        return
    for key, _, value in flags:
        assert effective(spec, key) == pytest.approx(value) if isinstance(value, float) else effective(spec, key) == value, key  # fmt: skip
        assert key not in spec.protocol_args.applied
    if any(k in ("learning_rate",) for k in keys):
        assert effective(spec, "head_learning_rate") == effective(spec, "learning_rate")


def test_the_record_says_which_preset_values_the_user_ruled_out(tmp_path):
    spec = parse_args(["--protocol", "paper", "--task_name", "rte", "--method", "adapter@2", "--warmup_steps", "3",
                       "--output_dir", str(tmp_path)])  # fmt: skip
    assert spec.training_args.warmup_steps == 3 and "warmup_ratio" not in spec.protocol_args.applied
    assert "--warmup_steps is given" in spec.protocol_args.not_applied["warmup_ratio"]
    spec = parse_args(["--protocol", "paper", "--task_name", "rte", "--method", "adapter@2", "--eval_strategy", "no",
                       "--output_dir", str(tmp_path)])  # fmt: skip
    assert not spec.training_args.select_best_in_memory and spec.training_args.early_stopping_patience is None
    assert "--eval_strategy no" in spec.protocol_args.not_applied["early_stopping_patience"]


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--load_best_model_at_end", "true"], r"--load_best_model_at_end keeps the best evaluation, but --eval_strategy is no"),
        (["--early_stopping_patience", "2", "--load_best_model_at_end", "false", "--eval_strategy", "epoch"], r"--early_stopping_patience keeps the best evaluation, and --load_best_model_at_end false"),
    ],
)  # fmt: skip
def test_a_best_epoch_selection_without_evaluations_is_refused(tmp_path, flags, message):
    with pytest.raises(ConfigError, match=message):
        parse_args(["--task_name", "rte", "--output_dir", str(tmp_path), *flags])


def test_a_trained_run_is_not_silently_trained_as_another_method(tiny_bert, rte_dir, tmp_path, monkeypatch):
    saved = tmp_path / "adapter"
    main([*base(tiny_bert, rte_dir, saved), "--method", "adapter@1", "--num_train_epochs", "1", *FAST])
    from conftest import refuse_model_loading

    refuse_model_loading(monkeypatch)
    again = [*base(saved.as_posix(), rte_dir, tmp_path / "more"), "--do_train", "--num_train_epochs", "1", *FAST]
    with pytest.raises(ConfigError, match=r"is a trained run \(method adapter@1\); --method lora@1 asks for another model.*trained further"):  # fmt: skip
        main([*again, "--method", "lora@1"])
    with pytest.raises(ConfigError, match=r"--pooling cls asks for another model"):
        main([*again, "--pooling", "cls"])
    assert not (tmp_path / "more").exists()


# --------------------------------------------------------------------------------------------------------------
# 3. State on disk notices what changed
# --------------------------------------------------------------------------------------------------------------
def test_the_cache_key_covers_the_models_config(tiny_bert, rte_dir, tmp_path):
    import copy

    from transformers import AutoModel, AutoTokenizer

    from peftlab.cache import FrozenPrefixCache, Need
    from peftlab.lab.workspace import tokenize

    backbone = AutoModel.from_pretrained(tiny_bert).eval()
    other = copy.deepcopy(backbone)
    other.config.hidden_act, other.config.layer_norm_eps = "relu", 1e-5  # the same weights, another computation
    import datasets

    data = datasets.Dataset.from_dict({"sentence1": ["a b", "c"], "sentence2": ["d", "e f"], "label": [0, 1]})
    features = tokenize(data, ("sentence1", "sentence2"), AutoTokenizer.from_pretrained(tiny_bert), 32, False)
    need = Need(1, "hidden")
    same = FrozenPrefixCache(copy.deepcopy(backbone), tmp_path).key(features, need)
    assert FrozenPrefixCache(backbone, tmp_path).key(features, need) == same
    assert FrozenPrefixCache(other, tmp_path).key(features, need) != same


def killed_resumable_run(model: str, glue: Path, out: Path, monkeypatch, step: int) -> list[str]:
    """A 3-epoch --resumable run killed right after its checkpoint at ``step``; returns its command."""
    args = [*base(model, glue, out), "--method", "adapter@1", "--num_train_epochs", "3", "--eval_strategy", "epoch",
            "--resumable", "true", *FAST]  # fmt: skip
    kill_after_checkpoint(monkeypatch, step=step)
    with pytest.raises(KeyboardInterrupt):
        main(args)
    monkeypatch.undo()
    return args


def test_a_resumable_run_is_not_resumed_on_other_data(tiny_bert, rte_dir, tmp_path, monkeypatch):
    """After its checkpoint: a training file edited, or another --max_eval_samples, is another run."""
    killed = killed_resumable_run(tiny_bert, rte_dir, tmp_path / "r", monkeypatch, step=4)
    with pytest.raises(ConfigError, match=r"a checkpoint of a run with other arguments \(max_eval_samples None there, 8 here"):  # fmt: skip
        main([*killed, "--max_eval_samples", "8"])
    train = rte_dir / "RTE" / "train.tsv"
    train.write_text(train.read_text().replace("The cat sat", "The dog sat"))
    with pytest.raises(ConfigError, match=r"a checkpoint of a run with other arguments \(data_digest"):
        main(killed)


def test_a_second_search_in_one_folder_does_not_continue_another_search(tiny_bert, rte_dir, tmp_path, monkeypatch):
    pytest.importorskip("optuna")
    search = [*base(tiny_bert, rte_dir, tmp_path / "s"), "--method", "lora@1", "--num_train_epochs", "1",
              "--hp_search", "optuna", "--hp_trials", "1", *FAST]  # fmt: skip
    space = '{"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-3}}'
    first = main([*search, "--hp_space", space])
    assert "hp_search_best" in first
    from conftest import refuse_model_loading

    refuse_model_loading(monkeypatch)
    other = '{"learning_rate": {"type": "float", "low": 0.1, "high": 0.2}}'
    with pytest.raises(ConfigError, match=r"the study 'peftlab' in sqlite:///.*holds 1 trials of another search"):
        main([*search, "--hp_space", other, "--overwrite_output_dir"])
    monkeypatch.undo()
    again = main(
        [*search, "--hp_space", space, "--overwrite_output_dir", "--hp_trials", "2"]
    )  # the same search goes on
    assert len(json.loads((tmp_path / "s" / "hp_search.json").read_text())["trials"]) == 2
    assert again["hp_search_best"]["value"] >= first["hp_search_best"]["value"]


def test_an_overwritten_folder_holds_no_old_results_while_the_new_run_trains(tiny_bert, rte_dir, tmp_path, monkeypatch):  # fmt: skip
    from peftlab.trainer import GlueTrainer

    out = tmp_path / "o"
    args = [*base(tiny_bert, rte_dir, out), "--method", "probe", "--num_train_epochs", "1", *FAST]
    main(args)
    assert (out / "all_results.json").is_file()

    def killed(self, *a, **k):
        assert not (out / "all_results.json").exists() and not (out / "run_config.json").exists()
        raise KeyboardInterrupt

    monkeypatch.setattr(GlueTrainer, "train", killed)
    with pytest.raises(KeyboardInterrupt):
        main([*args, "--overwrite_output_dir"])
    assert not (out / "all_results.json").exists()  # killed part-way: it does not look finished


# --------------------------------------------------------------------------------------------------------------
# 4. Bad values: one line naming the value, before anything is loaded
# --------------------------------------------------------------------------------------------------------------
def saved_without_weights(tiny_bert, glue, tmp_path) -> str:
    out = tmp_path / "scores-only"
    main([*base(tiny_bert, glue, out), "--method", "probe", "--num_train_epochs", "1", "--save_model", "false", *FAST])
    return str(out)


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--seed", "-1"], r"--seed -1 is not valid; it must be a whole number from 0 to 2\*\*32 - 1"),
        (["--data_seed", "4294967296"], r"--data_seed 4294967296 is not valid"),
        (["--split_seed", "-3", "--split_dev", "0.25"], r"--split_seed -3 is not valid"),
        (["--model_name_or_path", "FILE"], r"--model_name_or_path '.*a-file.txt' is a file"),
        (["--model_name_or_path", "EMPTY"], r"--model_name_or_path '.*empty' is not a model folder \(no config.json"),
        (["--model_name_or_path", "SCORES"], r"is the folder of a run that saved no weights \(--save_model false"),
        (["--model_name_or_path", "no-such/model-anywhere"], r"--model_name_or_path 'no-such/model-anywhere': cannot load it"),
        (["--cache_frozen_prefix", "--method", "adapter@1", "--frozen_cache_dir", "FILE/sub"], r"The frozen-prefix cache folder .* cannot be made: '.*a-file.txt' is a file"),
        (["--output_dir", "FILE/run"], r"--output_dir '.*a-file.txt/run' cannot be made: '.*a-file.txt' is a file"),
        (["--hp_search", "optuna", "--hp_space", '{"learning_rate": {"type": "float", "low": 1e-2, "high": 1e-4}}'], r"--hp_space 'learning_rate': low 0.01 is above high 0.0001"),
        (["--hp_search", "optuna", "--hp_space", '{"learning_rate": {"type": "float", "low": 0, "high": 1, "log": true}}'], r"a log scale needs low > 0"),
    ],
)  # fmt: skip
def test_bad_values_are_one_line_before_the_model_loads(tiny_bert, rte_dir, tmp_path, monkeypatch, flags, message):
    (tmp_path / "a-file.txt").write_text("not a model")
    (tmp_path / "empty").mkdir()
    names = {"FILE": str(tmp_path / "a-file.txt"), "EMPTY": str(tmp_path / "empty")}
    if "SCORES" in flags:
        names["SCORES"] = saved_without_weights(tiny_bert, rte_dir, tmp_path)
    flags = [next((f.replace(k, v) for k, v in names.items() if f.startswith(k)), f) for f in flags]
    from conftest import refuse_model_loading

    refuse_model_loading(monkeypatch)
    with pytest.raises(ConfigError, match=message):
        main([*base(tiny_bert, rte_dir, tmp_path / "o"), *FAST, *flags])
    assert not (tmp_path / "o").exists()


def test_peftlab_cache_at_a_file_is_named(tiny_bert, rte_dir, tmp_path, monkeypatch, no_model_loading):
    monkeypatch.setenv("PEFTLAB_CACHE", str(write(tmp_path / "cache-file", "x")))
    with pytest.raises(ConfigError, match=r"\(PEFTLAB_CACHE\) cannot be made: '.*cache-file' is a file"):
        main([*base(tiny_bert, rte_dir, tmp_path / "o"), "--method", "adapter@1", "--cache_frozen_prefix", *FAST])


def test_a_read_only_output_filesystem_is_refused_first(tiny_bert, rte_dir, tmp_path, monkeypatch, no_model_loading):
    real = os.statvfs

    class ReadOnly:
        def __init__(self, result):
            self.f_flag = result.f_flag | os.ST_RDONLY

    monkeypatch.setattr(os, "statvfs", lambda p: ReadOnly(real(p)) if str(p).startswith(str(tmp_path / "ro")) else real(p))  # fmt: skip
    (tmp_path / "ro").mkdir()
    with pytest.raises(ConfigError, match=r"--output_dir '.*ro/run' is on a read-only filesystem"):
        main([*base(tiny_bert, rte_dir, tmp_path / "ro" / "run"), *FAST])


def test_an_argument_file_without_output_dir_is_refused(tiny_bert, rte_dir, tmp_path, monkeypatch, no_model_loading):
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path / "a.json", json.dumps({"model_name_or_path": tiny_bert, "task_name": "rte", "glue_dir": str(rte_dir)}))  # fmt: skip
    with pytest.raises(ConfigError, match=r"No --output_dir \(or \"output_dir\" in the argument file\)"):
        main([str(path)])
    assert not (tmp_path / "trainer_output").exists()


def test_an_unknown_json_key_says_what_was_meant(tmp_path, no_model_loading):
    path = write(tmp_path / "a.json", json.dumps({"task_name": "rte", "output_dir": str(tmp_path), "learnig_rate": 1}))
    with pytest.raises(ConfigError, match=r"unknown argument 'learnig_rate' \(did you mean 'learning_rate'"):
        main([str(path)])


# --------------------------------------------------------------------------------------------------------------
# 5. Disk trouble is found before training; the cache falls back to memory
# --------------------------------------------------------------------------------------------------------------
def test_too_little_free_space_stops_before_the_first_step(tiny_bert, rte_dir, tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(2**30, 2**30 - 2**20, 2**20))
    steps = count_training_steps(monkeypatch)
    with pytest.raises(ConfigError, match=r"--output_dir '.*': 1 MiB free on its disk, and this run writes up to about \d+ MiB"):  # fmt: skip
        main([*base(tiny_bert, rte_dir, tmp_path / "o"), "--method", "probe", *FAST])
    assert steps == []


def test_a_cache_that_cannot_be_written_stays_in_memory(tiny_bert, rte_dir, tmp_path, monkeypatch, caplog):
    from peftlab import cache

    def full(path, key, tensors):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache, "write_tensors", full)
    args = [*base(tiny_bert, rte_dir, tmp_path / "o"), "--method", "adapter@1", "--cache_frozen_prefix",
            "--frozen_cache_dir", str(tmp_path / "c"), "--num_train_epochs", "1", *FAST]  # fmt: skip
    results = main(args)
    assert "eval_accuracy" in results
    assert "kept in memory for this process only" in caplog.text


# --------------------------------------------------------------------------------------------------------------
# 6. Records: a resumed run's speed, a user file's text columns
# --------------------------------------------------------------------------------------------------------------
def test_a_resumed_run_reports_the_whole_runs_time_and_speed(tiny_bert, rte_dir, tmp_path, monkeypatch):
    args = killed_resumable_run(tiny_bert, rte_dir, tmp_path / "r", monkeypatch, step=8)
    results = main(args)
    before = results["resumed"]["train_seconds"]
    assert results["train_runtime"] > before > 0
    samples = 3 * 16  # 3 epochs of the 16 training examples
    assert results["train_samples_per_second"] * results["train_runtime"] == pytest.approx(samples, rel=0.02)
    assert results["train_steps_per_second"] * results["train_runtime"] == pytest.approx(12, rel=0.02)


def test_the_text_columns_of_a_users_file_are_recorded(tiny_bert, tmp_path):
    data = write(tmp_path / "d.csv", "review,extra,label\n" + "".join(f"text {i},x,{'pos' if i % 2 else 'neg'}\n" for i in range(8)))  # fmt: skip
    results = main(["--model_name_or_path", tiny_bert, "--train_file", str(data), "--validation_file", str(data),
                    "--output_dir", str(tmp_path / "o"), "--num_train_epochs", "1", *FAST])  # fmt: skip
    assert results["data_protocol"]["text_columns"] == ["review", "extra"]
    record = json.loads((tmp_path / "o" / "run_config.json").read_text())
    assert record["data_protocol"]["text_columns"] == ["review", "extra"]


# --------------------------------------------------------------------------------------------------------------
# The Trainer's private methods we override still exist
# --------------------------------------------------------------------------------------------------------------
def test_every_private_trainer_method_glue_trainer_overrides_exists_in_transformers():
    """An upgrade of transformers that renames or drops one would make our override dead code, silently."""
    from transformers import Trainer

    from peftlab.trainer import GlueTrainer

    private = [n for n, v in vars(GlueTrainer).items() if n.startswith("_") and not n.startswith("__") and inspect.isfunction(v)]  # fmt: skip
    ours_only = {"_classifier", "_loss_so_far", "_whole_run_loss"}  # helpers of our own, not overrides
    overrides = [n for n in private if n not in ours_only]
    assert overrides, "no override found: the test would check nothing"
    missing = [n for n in overrides if not hasattr(Trainer, n)]
    assert not missing, f"GlueTrainer overrides {missing}, which transformers' Trainer no longer has"
    for name in overrides:  # and with a signature the Trainer's callers still fit
        theirs = inspect.signature(getattr(Trainer, name)).parameters
        ours = inspect.signature(getattr(GlueTrainer, name)).parameters
        assert list(theirs)[: len(ours)] == list(ours)[: len(theirs)] or any(
            p.kind is p.VAR_POSITIONAL for p in ours.values()
        ), name


def test_check_sweep_accepts_every_sweep_file_of_the_repository():
    for path in sorted((REPO / "scripts" / "sweeps").rglob("*.json")):
        load_sweep(path)


def test_an_extending_sweep_file_is_its_base_with_its_own_name_and_options(tmp_path):
    base = {**GOOD, "description": "the base", "seeds": [1, 2], "common": {"bf16": False, "num_train_epochs": 2},
            "variants": {"a": {"method": "adapter@1"}, "b": {"method": "lora@1"}}}  # fmt: skip
    write_json(tmp_path / "base.json", base)
    write_json(tmp_path / "sub" / "x.json", {"extends": "../base.json", "name": "x", "seeds": [3],
               "common": {"bf16": True}, "variants": {"a": {"adapter_dim": 8}, "c": {"method": "full"}}})  # fmt: skip
    assert load_sweep(tmp_path / "sub" / "x.json") == {
        "name": "x", "tasks": ["rte"], "seeds": [3], "common": {"bf16": True, "num_train_epochs": 2},
        "variants": {"a": {"method": "adapter@1", "adapter_dim": 8}, "b": {"method": "lora@1"}, "c": {"method": "full"}},
    }  # fmt: skip
    # the repository's bf16 Table 1 is the float32 one with the bf16 options, run for run
    paper = {r.name: r.args for r in expand(load_sweep(REPO / "scripts/sweeps/table1_paper.json"), tmp_path)}
    bf16 = {r.name: r.args for r in expand(load_sweep(REPO / "scripts/sweeps/table1_paper_bf16_fast.json"), tmp_path)}
    assert paper.keys() == bf16.keys()
    for name, args in bf16.items():
        extra = {k: v for k, v in args.items() if paper[name].get(k) != v and k != "output_dir"}
        frozen = "model_dtype" in extra
        assert extra == {"bf16": True, "cache_dtype": "bfloat16", "fast_dropout": True} | (
            {"model_dtype": "bfloat16"} if frozen else {}
        ), name
        assert frozen == (args["method"] not in ("full", "bitfit@5")), name


@pytest.mark.parametrize(
    "child,message",
    [
        ({"extends": "base.json"}, r"extends the sweep 's' and needs a 'name' of its own .*not None"),
        ({"extends": "base.json", "name": "s"}, r"needs a 'name' of its own .*not 's'"),
        ({"extends": "missing.json", "name": "x"}, r"Cannot read sweep file .*missing.json"),
        ({"extends": 3, "name": "x"}, r"'extends' is 3; give the path of another sweep file"),
        ({"extends": "child.json", "name": "x"}, r"child.json extends itself"),
        ({"extends": "base.json", "name": "x", "variants": {"a": {"seed": 3}}}, r"child.json: variant 'a' sets 'seed'"),
    ],
)  # fmt: skip
def test_a_bad_extending_sweep_file_is_refused(tmp_path, child, message):
    write_json(tmp_path / "base.json", GOOD)
    write_json(tmp_path / "child.json", child)
    with pytest.raises(ConfigError, match=message):
        expand(load_sweep(tmp_path / "child.json"), tmp_path / "root")
    assert not (tmp_path / "root").exists()
