"""Issue 14's cases end to end: every bad input stops before the model is loaded (so before any training) with one
line naming the bad value and what is valid; two writers never share an output folder; resuming works from the
latest checkpoint and only into the model that wrote it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, count_training_steps, kill_after_checkpoint, refuse_model_loading, write

from peftlab.errors import ConfigError, DataError
from peftlab.io import output_lock
from peftlab.lab.run import main as run_main
from peftlab.trainer import GlueTrainer

FAST = ["--per_device_train_batch_size", "4", "--disable_tqdm", "True", "--seed", "7"]


def main(argv: list[str]):
    """A run whose error must be one line, as run_glue.py prints it."""
    try:
        return run_main(argv)
    except (ConfigError, DataError) as err:
        assert "\n" not in str(err), str(err)
        raise


def base(tiny_bert: str, glue: Path, out: Path) -> list[str]:
    return ["--model_name_or_path", tiny_bert, "--task_name", "rte", "--glue_dir", str(glue), "--output_dir", str(out)]


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--num_train_epochs", "0"], r"--num_train_epochs 0 trains nothing; give a number of epochs > 0"),
        (["--num_train_epochs", "0", "--do_train"], r"--num_train_epochs 0 trains nothing"),
        (["--num_train_epochs", "-1"], r"--num_train_epochs -1.0 is not valid; it must be > 0"),
        (["--per_device_train_batch_size", "0"], r"--per_device_train_batch_size 0 is not valid; it must be a whole number >= 1"),
        (["--per_device_eval_batch_size", "0", "--do_eval"], r"--per_device_eval_batch_size 0 is not valid"),
        (["--learning_rate=-1e-3"], r"--learning_rate -0.001 is not valid; it must be a finite number >= 0"),
        (["--learning_rate", "0"], r"--learning_rate 0 trains nothing"),
        (["--gradient_accumulation_steps", "0"], r"--gradient_accumulation_steps 0 is not valid"),
        (["--method", "bitfit", "--target_layers", "1-0"], r"Layer range '1-0' is reversed: it selects no layer. Write the lower index first: '0-1'"),
        (["--method", "bitfit@1-0"], r"Layer range '1-0' is reversed"),
        (["--method", "adapter@1-0"], r"Layer range '1-0' is reversed"),
        (["--method", "lora", "--target_layers", "1-0"], r"Layer range '1-0' is reversed"),
        (["--label_type", "regression"], r"--label_type regression is for your own files \(--train_file\)"),
    ],
)  # fmt: skip
def test_bad_training_values_stop_before_the_model_is_loaded(tiny_bert, rte_dir, tmp_path, no_model_loading, extra, message):  # fmt: skip
    out = tmp_path / "o"
    with pytest.raises(ConfigError, match=message):
        main([*base(tiny_bert, rte_dir, out), *FAST, *extra])
    assert not out.exists()


def test_num_train_epochs_zero_is_fine_when_nothing_trains(tiny_bert, rte_dir, tmp_path):
    results = main([*base(tiny_bert, rte_dir, tmp_path / "o"), "--do_eval", "--num_train_epochs", "0"])
    assert "eval_accuracy" in results and "train_loss" not in results


RTE_HEADER = "index\tsentence1\tsentence2\tlabel\n"


@pytest.mark.parametrize(
    "split,content,message",
    [
        ("dev.tsv", RTE_HEADER.encode(), r"RTE/dev.tsv has a header line and no rows: it holds no rte examples"),
        ("train.tsv", (RTE_HEADER + "0\ta\tb\tentailment\n1\ta\tb\tc\tentailment\n").encode(), r"RTE/train.tsv, line 3: 5 tab-separated fields, expected 4"),
        ("dev.tsv", (RTE_HEADER + "0\tcaf\xe9\tb\tentailment\n").encode("latin-1"), r"RTE/dev.tsv, line 2: byte 0xe9 is not UTF-8"),
    ],
)  # fmt: skip
def test_bad_glue_files_stop_before_the_model_is_loaded(tiny_bert, rte_dir, tmp_path, no_model_loading, split, content, message):  # fmt: skip
    (rte_dir / "RTE" / split).write_bytes(content)
    with pytest.raises(DataError, match=message):
        main([*base(tiny_bert, rte_dir, tmp_path / "o"), "--do_train", "--do_eval", *FAST])
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "text,message",
    [
        ("text,label\na,pos\nb,\nc,neg\n", r"d.csv, line 3: the label is missing"),
        ("text,label\na,1\nb,pos\nc,0\n", r"d.csv: labels mix numbers and names \('1' on line 2, 'pos' on line 3\)"),
        ("text,label\na,pos\nb,pos\n", r"d.csv: every label is 'pos'; classification needs at least two classes"),
    ],
)
def test_bad_user_labels_stop_before_the_model_is_loaded(tiny_bert, tmp_path, no_model_loading, text, message):
    data = write(tmp_path / "d.csv", text)
    with pytest.raises(DataError, match=message):
        main(["--model_name_or_path", tiny_bert, "--train_file", str(data), "--validation_file", str(data),
              "--output_dir", str(tmp_path / "o"), *FAST])  # fmt: skip


def test_user_regression_file_with_scores_outside_zero_to_five_trains(tiny_bert, tmp_path):
    rows = "".join(f"sentence {i},{(i - 6) * 12.5}\n" for i in range(12))
    data = write(tmp_path / "d.csv", "text,label\n" + rows)
    results = main(["--model_name_or_path", tiny_bert, "--train_file", str(data), "--validation_file", str(data),
                    "--output_dir", str(tmp_path / "o"), "--num_train_epochs", "1", *FAST])  # fmt: skip
    assert {"eval_pearson", "eval_spearmanr"} <= set(results)
    assert results["data_protocol"]["label_type"] == "regression"


@pytest.mark.parametrize(
    "values,message",
    [
        ({"num_train_epochs": "three"}, r"a.json: 'num_train_epochs' is \"three\" \(str\), expected a number\."),
        ({"num_train_epochs": [1, 2]}, r"a.json: 'num_train_epochs' is \[1, 2\] \(list\), expected a number\."),
        ({"per_device_train_batch_size": 2.5}, r"'per_device_train_batch_size' is 2.5 \(float\), expected a whole number"),
        ({"do_train": "yes"}, r"'do_train' is \"yes\" \(str\), expected true or false"),
        ({"method": ["lora"]}, r"'method' is \[\"lora\"\] \(list\), expected a string"),
        ({"split_dev": "0.25"}, r"'split_dev' is \"0.25\" \(str\), expected a number or null"),
        ({"num_train_epochs": 0}, r"--num_train_epochs 0 trains nothing.*\(argument file .*a.json\)"),
    ],
)  # fmt: skip
def test_wrong_typed_json_values_name_the_key_the_file_and_the_type(tiny_bert, rte_dir, tmp_path, no_model_loading, values, message):  # fmt: skip
    args = {"model_name_or_path": tiny_bert, "task_name": "rte", "glue_dir": str(rte_dir),
            "output_dir": str(tmp_path / "o"), **values}  # fmt: skip
    with pytest.raises(ConfigError, match=message):
        main([str(write(tmp_path / "a.json", json.dumps(args)))])


def test_a_number_where_a_string_is_expected_is_read_as_on_the_command_line(tiny_bert, rte_dir, tmp_path):
    from peftlab.lab.parsing import parse_args

    spec = parse_args(
        [str(write(tmp_path / "a.json", json.dumps({"task_name": "rte", "target_layers": 1, "output_dir": "o"})))]
    )
    assert spec.peft_args.target_layers == "1"


def test_malformed_json_argument_file_is_named(tmp_path, no_model_loading):
    path = write(tmp_path / "args.json", '{"task_name": "rte",}')
    with pytest.raises(ConfigError, match=rf"Argument file {path} is not valid JSON"):
        main([str(path)])


def test_second_process_on_a_locked_output_folder_stops_at_once(tiny_bert, rte_dir, tmp_path):
    """Two run_glue.py processes on one --output_dir: the second stops with one line and touches nothing."""
    out = tmp_path / "o"
    with output_lock(out):
        write(out / "all_results.json", '{"eval_accuracy": 0.5}')
        proc = subprocess.run(
            [sys.executable, "run_glue.py", *base(tiny_bert, rte_dir, out), "--do_eval", "--overwrite_output_dir"],
            cwd=REPO, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: --output_dir {str(out)!r} is being written by another running process; wait for it to end or "
        "choose another folder."
    )
    assert (out / "all_results.json").read_text() == '{"eval_accuracy": 0.5}'
    assert sorted(p.name for p in out.iterdir()) == [".lock", "all_results.json"]


def test_evaluating_a_trained_run_into_its_own_folder_is_refused(tiny_bert, rte_dir, tmp_path, no_model_loading):
    run = tmp_path / "trained"
    write(run / "all_results.json", "{}")
    with pytest.raises(
        ConfigError, match=r"is the trained run given as --model_name_or_path.*Choose another --output_dir"
    ):
        main(["--model_name_or_path", str(run), "--task_name", "rte", "--glue_dir", str(rte_dir),
              "--output_dir", str(run), "--do_eval", "--overwrite_output_dir"])  # fmt: skip


def test_resume_into_a_non_empty_output_folder_needs_overwrite(tiny_bert, rte_dir, tmp_path, no_model_loading):
    out = tmp_path / "o"
    write(out / "all_results.json", "{}")
    with pytest.raises(ConfigError, match=r"exists and is not empty.*--resume_from_checkpoint also needs"):
        main([*base(tiny_bert, rte_dir, out), "--resume_from_checkpoint", str(out / "checkpoint-4")])


def test_resume_from_the_latest_checkpoint_and_only_into_the_same_model(tiny_bert, rte_dir, tmp_path, monkeypatch):
    out = tmp_path / "o"
    train = [*base(tiny_bert, rte_dir, out), "--method", "adapter@0", "--save_strategy", "epoch", *FAST]
    main([*train, "--num_train_epochs", "1"])
    assert (out / "checkpoint-4" / "peftlab_model.json").is_file()
    steps = count_training_steps(monkeypatch)
    results = main([*train, "--num_train_epochs", "2", "--resume_from_checkpoint", "True", "--overwrite_output_dir"])
    assert len(steps) == 4  # steps 5..8 only: resumed at step 4, not started again
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 8 and "eval_accuracy" in results
    config = json.loads((out / "run_config.json").read_text())
    assert config["training_args"]["resume_from_checkpoint"] == str(out / "checkpoint-4")  # the latest when it ran
    # A checkpoint of adapter@0 resumed into an adapter@1 run: stopped before the model is loaded.
    refuse_model_loading(monkeypatch)
    other = [*base(tiny_bert, rte_dir, out), "--method", "adapter@1", *FAST, "--overwrite_output_dir"]
    with pytest.raises(ConfigError, match=r"checkpoint-8' is a checkpoint of another model \(method 'adapter@0' there, 'adapter@1' here\)"):  # fmt: skip
        main([*other, "--resume_from_checkpoint", "True"])
    with pytest.raises(ConfigError, match=r"checkpoint-4' is a checkpoint of another model"):
        main([*other, "--resume_from_checkpoint", str(out / "checkpoint-4")])


def test_a_run_killed_after_a_checkpoint_and_resumed_ends_as_if_never_stopped(
    tiny_bert, rte_dir, tmp_path, monkeypatch
):
    """Kill a 3-epoch run right after its epoch-2 checkpoint, resume it: the same weights, data order and dropout as
    the run that was never stopped, so the same loss to float precision (a lost sampler or random state shows)."""
    from transformers import TrainerCallback

    train = [*base(tiny_bert, rte_dir, tmp_path / "whole"), "--method", "lora@1", "--num_train_epochs", "3",
             "--save_strategy", "epoch", "--eval_strategy", "epoch", "--learning_rate", "5e-3", *FAST]  # fmt: skip
    whole = main(train)

    class Kill(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == 8:
                raise KeyboardInterrupt

    build = GlueTrainer.__init__
    monkeypatch.setattr(
        GlueTrainer, "__init__", lambda self, *a, **k: build(self, *a, **k) or self.add_callback(Kill())
    )
    killed = [*base(tiny_bert, rte_dir, tmp_path / "killed"), *train[8:]]
    with pytest.raises(KeyboardInterrupt):
        main(killed)
    monkeypatch.setattr(GlueTrainer, "__init__", build)
    assert not (tmp_path / "killed" / "all_results.json").exists()
    steps = count_training_steps(monkeypatch)
    resumed = main([*killed, "--resume_from_checkpoint", "True", "--overwrite_output_dir"])
    assert len(steps) == 4  # epoch 3 only: resumed from checkpoint-8, not trained again from the start
    assert resumed["eval_loss"] == pytest.approx(whole["eval_loss"], rel=1e-6)
    # the whole run's mean training loss (the Trainer's own is the mean over epoch 3 only, the steps after the kill)
    assert resumed["train_loss"] == pytest.approx(whole["train_loss"], rel=1e-6)


def test_a_resumable_run_killed_mid_way_resumes_by_itself_and_ends_as_if_never_stopped(
    tiny_bert, rte_dir, tmp_path, monkeypatch
):
    """--resumable (what sweeps use): the best evaluation kept in memory, the early-stopping counter and the time
    taken all survive a kill. The best epoch is made the first (the highest eval loss counts as best; training on
    the dev rows lowers it), so a best state lost at the kill would report epoch 2 or 3 instead; patience 2 stops
    the run after epoch 3, so a lost counter would train epoch 4 too."""
    train = ["--method", "adapter@1", "--num_train_epochs", "5", "--eval_strategy", "epoch", "--resumable", "true",
             "--early_stopping_patience", "2", "--metric_for_best_model", "loss", "--greater_is_better", "true",
             "--learning_rate", "1e-2", *FAST]  # fmt: skip
    whole = main([*base(tiny_bert, rte_dir, tmp_path / "whole"), *train])
    assert whole["best_evaluation"]["epoch"] == 1 and whole["last_evaluation"]["epoch"] == 3  # the premises
    assert whole["eval_loss"] == whole["best_evaluation"]["eval_loss"] and "resumed" not in whole
    assert not list((tmp_path / "whole").glob("checkpoint-*"))  # removed at the end
    killed = [*base(tiny_bert, rte_dir, tmp_path / "killed"), *train]
    kill_after_checkpoint(monkeypatch, step=8)  # after epoch 2
    with pytest.raises(KeyboardInterrupt):
        main(killed)
    monkeypatch.undo()
    kept = tmp_path / "killed" / "checkpoint-8"
    assert sorted(p.name for p in (tmp_path / "killed").glob("checkpoint-*")) == ["checkpoint-8"]  # the latest only
    assert (kept / "best_evaluation.safetensors").is_file() and (kept / "peftlab_resume.json").is_file()
    steps = count_training_steps(monkeypatch)
    resumed = main(killed)  # the same command: no --overwrite_output_dir, no --resume_from_checkpoint
    assert len(steps) == 4  # epoch 3 only, then early stopping (the counter came back at 1)
    for key in ("eval_loss", "eval_accuracy", "epoch", "train_loss"):
        assert resumed[key] == pytest.approx(whole[key], rel=1e-6), key
    assert [e["eval_loss"] for e in resumed["evaluations"]] == pytest.approx(
        [e["eval_loss"] for e in whole["evaluations"]], rel=1e-6
    )
    record = resumed["resumed"]
    assert record["step"] == 8 and record["starts"] == 1 and record["checkpoint"] == str(kept)
    assert resumed["cpu_seconds"] >= record["cpu_seconds"] > 0  # the whole run's time, both starts
    assert json.loads((tmp_path / "killed" / "run_config.json").read_text())["resumed"] == record
    assert not list((tmp_path / "killed").glob("checkpoint-*"))


MID_EPOCH = ["--method", "adapter@1", "--num_train_epochs", "3", "--eval_strategy", "epoch", "--resumable", "true",
             "--resumable_minutes", "1e-9", "--learning_rate", "1e-2", *FAST]  # fmt: skip
"""A --resumable run with a checkpoint at every step (4 steps an epoch)."""


def stop_mid_epoch_and_resume(tiny_bert, rte_dir, tmp_path, monkeypatch, train):
    """(the run never stopped, the run killed at step 6 and resumed, whether its checkpoint recorded the random
    state of the epoch's order)."""
    whole = main([*base(tiny_bert, rte_dir, tmp_path / "whole"), *train])
    killed = [*base(tiny_bert, rte_dir, tmp_path / "killed"), *train]
    kill_after_checkpoint(monkeypatch, step=6)  # epoch 2 is steps 5-8
    with pytest.raises(KeyboardInterrupt):
        main(killed)
    monkeypatch.undo()
    kept = tmp_path / "killed" / "checkpoint-6"
    assert sorted(p.name for p in (tmp_path / "killed").glob("checkpoint-*")) == ["checkpoint-6"]
    ordered = (kept / "epoch_order_rng.safetensors").is_file()
    steps = count_training_steps(monkeypatch)
    resumed = main(killed)
    assert len(steps) == 6 and resumed["resumed"]["step"] == 6  # steps 7-12
    assert [e["eval_loss"] for e in resumed["evaluations"]] == pytest.approx(
        [e["eval_loss"] for e in whole["evaluations"]], rel=1e-6
    )
    assert resumed["eval_loss"] == pytest.approx(whole["eval_loss"], rel=1e-6)
    assert resumed["train_loss"] == pytest.approx(whole["train_loss"], rel=1e-6)  # killed between two loss logs
    return whole, resumed, ordered


def test_a_resumable_run_stopped_in_the_middle_of_an_epoch_resumes_there_exactly(
    tiny_bert, rte_dir, tmp_path, monkeypatch
):
    """--resumable_minutes: checkpoints between evaluations too (here at every step). Killed in the middle of epoch
    2, the run resumes at that step: the batches of the rest of epoch 2 are the ones it would have had (their
    length-grouped order was drawn again from the random state the checkpoint records; with another order the
    evaluations would differ), and every evaluation is the uninterrupted run's."""
    whole, _, ordered = stop_mid_epoch_and_resume(tiny_bert, rte_dir, tmp_path, monkeypatch, MID_EPOCH)
    assert ordered
    # on an epoch's last step the checkpoint is the one written after that epoch's evaluation (a timed one before it
    # would be resumed past the evaluation, which would then be missing)
    at_end = [*base(tiny_bert, rte_dir, tmp_path / "at_end"), *MID_EPOCH]
    kill_after_checkpoint(monkeypatch, step=4)
    with pytest.raises(KeyboardInterrupt):
        main(at_end)
    monkeypatch.undo()
    assert not (tmp_path / "at_end" / "checkpoint-4" / "epoch_order_rng.safetensors").exists()
    again = main(at_end)
    assert [e["eval_loss"] for e in again["evaluations"]] == pytest.approx(
        [e["eval_loss"] for e in whole["evaluations"]], rel=1e-6
    )
    # a bad value is refused before anything loads
    refuse_model_loading(monkeypatch)
    with pytest.raises(ConfigError, match=r"--resumable_minutes -1.0 is not valid; give minutes >= 0"):
        main([*base(tiny_bert, rte_dir, tmp_path / "bad"), *MID_EPOCH, "--resumable_minutes", "-1"])


def test_a_run_in_random_order_stopped_in_the_middle_of_an_epoch_resumes_there_exactly(
    tiny_bert, rte_dir, tmp_path, monkeypatch
):
    """The same with --train_sampling_strategy random: the Trainer's seedable sampler draws an epoch's order from the
    seed and the epoch, so the checkpoint needs no random state of its own for it."""
    train = [*MID_EPOCH, "--train_sampling_strategy", "random"]
    _, _, ordered = stop_mid_epoch_and_resume(tiny_bert, rte_dir, tmp_path, monkeypatch, train)
    assert not ordered


def test_a_resumable_checkpoint_is_resumed_only_with_the_same_arguments(tiny_bert, rte_dir, tmp_path, monkeypatch):
    out = tmp_path / "o"
    train = [*base(tiny_bert, rte_dir, out), "--method", "lora@1", "--num_train_epochs", "3", "--resumable", "true",
             *FAST]  # fmt: skip
    kill_after_checkpoint(monkeypatch, step=4)
    with pytest.raises(KeyboardInterrupt):
        main(train)
    monkeypatch.undo()
    refuse_model_loading(monkeypatch)
    with pytest.raises(
        ConfigError,
        match=r"--resumable: '.*checkpoint-4' is a checkpoint of a run with other arguments \(learning_rate 5e-05 there, 0\.001 here\)"
        r"\. Resume with the arguments it was trained with, or delete that folder",
    ):
        main([*train, "--learning_rate", "1e-3"])
    with pytest.raises(ConfigError, match=r"checkpoint-4' is a checkpoint of a run with other arguments \(method 'lora@1' there, 'lora@0' here[;)]"):  # fmt: skip
        main([*base(tiny_bert, rte_dir, out), "--method", "lora@0", "--num_train_epochs", "3", "--resumable", "true",
              *FAST])  # fmt: skip
    # Without --resumable the folder is an ordinary non-empty one.
    with pytest.raises(ConfigError, match=r"exists and is not empty"):
        main([*base(tiny_bert, rte_dir, out), "--method", "lora@1", "--num_train_epochs", "3", *FAST])


def test_a_checkpoint_made_without_the_cache_is_not_resumed_under_the_cache_default(tiny_bert, rte_dir, tmp_path, monkeypatch):  # fmt: skip
    """A run whose frozen layers ran in train mode (checkpoints of runs from before the cache became the default, or
    with --cache_frozen_prefix false) does not go on with them cached: it is refused, naming the setting."""
    out = tmp_path / "o"
    train = [*base(tiny_bert, rte_dir, out), "--method", "lora@1", "--num_train_epochs", "3", "--resumable", "true",
             "--frozen_cache_dir", str(tmp_path / "cache"), *FAST]  # fmt: skip
    kill_after_checkpoint(monkeypatch, step=4)
    with pytest.raises(KeyboardInterrupt):
        main([*train, "--cache_frozen_prefix", "false"])
    monkeypatch.undo()
    with pytest.raises(ConfigError, match=r"other arguments \(cache_frozen_prefix False there, True here\)"):
        main(train)
    assert main([*train, "--cache_frozen_prefix", "false"])["resumed"]["step"] == 4


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--save_strategy", "epoch"], r"--resumable writes its own checkpoints .*: drop --save_strategy epoch"),
        (["--save_only_model", "true"], r"--resumable writes its own checkpoints .*: drop --save_only_model"),
        (
            ["--hp_search", "optuna", "--hp_space", '{"learning_rate": {"type": "float", "low": 0.001, "high": 0.01}}'],
            r"--resumable resumes one training run; a --hp_search has many",
        ),
    ],
)
def test_resumable_with_what_it_cannot_serve_is_refused(tiny_bert, rte_dir, tmp_path, no_model_loading, extra, message):
    with pytest.raises(ConfigError, match=message):
        main([*base(tiny_bert, rte_dir, tmp_path / "o"), "--resumable", "true", *extra])


def test_resume_without_a_checkpoint_is_a_clear_error(tiny_bert, rte_dir, tmp_path, no_model_loading):
    out = tmp_path / "o"
    write(out / "checkpoint-3" / "half-written.bin", "")  # no trainer_state.json: incomplete, never resumed from
    with pytest.raises(
        ConfigError, match=r"--resume_from_checkpoint True: --output_dir .* holds no complete checkpoint"
    ):
        main([*base(tiny_bert, rte_dir, out), "--resume_from_checkpoint", "True", "--overwrite_output_dir"])
    with pytest.raises(ConfigError, match=r"--resume_from_checkpoint '.*checkpoint-3' is not a checkpoint folder"):
        main([*base(tiny_bert, rte_dir, out), "--resume_from_checkpoint", str(out / "checkpoint-3"),
              "--overwrite_output_dir"])  # fmt: skip
