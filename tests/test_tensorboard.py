"""``--report_to tensorboard``: every run's events in its own folder (``<output_dir>/tensorboard``), read back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import write

from peftlab.lab.run import cli, main

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer  # noqa: E402

# 16 training rows, batch 4: 4 steps an epoch, a loss logged at each
RUN = ["--task_name", "rte", "--num_train_epochs", "2", "--per_device_train_batch_size", "4", "--eval_strategy",
       "epoch", "--logging_steps", "1", "--report_to", "tensorboard", "--disable_tqdm", "True", "--seed", "7",
       "--save_model", "false"]  # fmt: skip


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the TensorBoard run in ``folder``: tag -> [(step, value)]."""
    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


@pytest.mark.parametrize(
    "method", ["adapter@1 --cache_frozen_prefix false", "lora@1", "adapter@1 --cache_frozen_prefix"]
)
def test_a_run_logs_its_training_and_evaluations_into_its_own_folder(tiny_bert, rte_dir, tmp_path, monkeypatch, method):
    monkeypatch.chdir(tmp_path)  # the Trainer's own callback would write a run that only evaluates into ./runs
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "elsewhere"))  # one folder for every run: unused
    out = tmp_path / "run"
    name, *extra = method.split()
    results = main(["--model_name_or_path", tiny_bert, "--glue_dir", str(rte_dir), "--output_dir", str(out),
                    "--method", name, *extra, "--frozen_cache_dir", str(tmp_path / "cache"), *RUN,
                    "--save_model", "true"])  # fmt: skip
    logged = scalars(out / "tensorboard")
    assert [step for step, _ in logged["train/loss"]] == list(range(1, 9))
    assert [step for step, _ in logged["eval/accuracy"]] == [4, 8]
    assert logged["eval/accuracy"][-1][1] == pytest.approx(results["eval_accuracy"])
    assert logged["eval/loss"][-1][1] == pytest.approx(results["eval_loss"])
    assert logged["train/train_loss"][0][1] == pytest.approx(results["train_loss"])
    assert not (out / "runs").exists() and not (tmp_path / "runs").exists() and not (tmp_path / "elsewhere").exists()
    # a run that only evaluates (the trained folder) logs into its own folder too, not ./runs
    main(["--model_name_or_path", str(out), "--glue_dir", str(rte_dir), "--output_dir", str(tmp_path / "eval"),
          "--task_name", "rte", "--do_eval", "--report_to", "tensorboard", "--disable_tqdm", "True"])  # fmt: skip
    assert scalars(tmp_path / "eval" / "tensorboard")["eval/accuracy"] == [(0, pytest.approx(results["eval_accuracy"]))]
    assert not (tmp_path / "runs").exists()


def test_the_runs_of_one_process_are_one_tensorboard_run_each_under_their_root(tiny_bert, rte_dir, tmp_path):
    """``run_glue.py a.json b.json`` (how a sweep runs its jobs): ``tensorboard --logdir <root>`` shows both."""
    root = tmp_path / "sweep"
    common = {"model_name_or_path": tiny_bert, "glue_dir": str(rte_dir), "frozen_cache_dir": str(tmp_path / "cache"),
              "task_name": "rte", "num_train_epochs": 1, "per_device_train_batch_size": 4, "eval_strategy": "epoch",
              "logging_steps": 1, "report_to": "tensorboard", "disable_tqdm": True, "save_model": False}  # fmt: skip
    files = [
        write(tmp_path / "a.json", json.dumps({**common, "method": "lora@1", "output_dir": str(root / "rte" / "lora")})),
        write(tmp_path / "b.json", json.dumps({**common, "method": "adapter@1", "cache_frozen_prefix": True,
                                                "output_dir": str(root / "rte" / "adapter")})),
    ]  # fmt: skip
    assert cli([str(f) for f in files]) == 0
    runs = EventMultiplexer().AddRunsFromDirectory(str(root))
    runs.Reload()
    assert sorted(runs.Runs()) == ["rte/adapter/tensorboard", "rte/lora/tensorboard"]
    for run in runs.Runs():
        events = runs.GetAccumulator(run)
        assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]
        assert [e.step for e in events.Scalars("eval/accuracy")] == [4]
        result = json.loads((root / Path(run).parent / "all_results.json").read_text())
        assert events.Scalars("eval/accuracy")[0].value == pytest.approx(result["eval_accuracy"])


def test_a_resumed_run_goes_on_in_the_same_tensorboard_run(tiny_bert, rte_dir, tmp_path, monkeypatch):
    """Killed at step 6 (its checkpoint at step 4, the loss of step 5 logged), then started again on its folder with
    the same arguments (--resumable --overwrite_output_dir, as sweeps run): one TensorBoard run, each step once
    (what the stopped start logged after its checkpoint is dropped). Started again once finished, it trains anew and
    its events replace the earlier run's."""
    from transformers import TrainerCallback

    from peftlab.trainer import GlueTrainer

    class Kill(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 6:
                raise KeyboardInterrupt

    out = tmp_path / "run"
    argv = ["--model_name_or_path", tiny_bert, "--glue_dir", str(rte_dir), "--output_dir", str(out),
            "--method", "adapter@1", "--resumable", "true", "--overwrite_output_dir", *RUN]  # fmt: skip
    build = GlueTrainer.__init__
    monkeypatch.setattr(
        GlueTrainer, "__init__", lambda self, *a, **k: build(self, *a, **k) or self.add_callback(Kill())
    )
    with pytest.raises(KeyboardInterrupt):
        main(argv)
    monkeypatch.undo()
    assert [step for step, _ in scalars(out / "tensorboard")["train/loss"]] == [1, 2, 3, 4, 5]
    results = main(argv)
    assert results["resumed"]["step"] == 4
    logged = scalars(out / "tensorboard")
    assert [step for step, _ in logged["train/loss"]] == list(range(1, 9))
    assert [step for step, _ in logged["eval/accuracy"]] == [4, 8]
    assert logged["eval/accuracy"][-1][1] == pytest.approx(results["eval_accuracy"])
    again = main(argv)
    assert "resumed" not in again
    assert [step for step, _ in scalars(out / "tensorboard")["train/loss"]] == list(range(1, 9))
