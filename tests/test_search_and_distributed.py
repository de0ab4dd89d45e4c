"""Hyper-parameter search (Optuna, Ray Tune PBT) and distributed data-parallel training on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO, write

from peftlab.errors import ConfigError
from peftlab.lab.run import main

SPACE = {
    "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
    "bottleneck_dim": {"type": "int", "low": 1, "high": 8},
}


def base_args(model: str, glue: str, out: str) -> list[str]:
    return ["--model_name_or_path", model, "--task_name", "rte", "--glue_dir", glue, "--output_dir", out,
            "--method", "adapter@1", "--do_train", "--do_eval", "--num_train_epochs", "1",
            "--per_device_train_batch_size", "4", "--disable_tqdm", "True"]  # fmt: skip


def test_optuna_search_resumes_and_its_best_trial_reruns_to_the_same_metric(tiny_bert, rte_dir, tmp_path):
    out = tmp_path / "search"
    space = {**SPACE, "warmup_steps": {"type": "categorical", "choices": [0.2]}}
    args = [*base_args(tiny_bert, str(rte_dir), str(out)), "--warmup_ratio", "0.06", "--hp_search", "optuna",
            "--hp_space", json.dumps(space)]  # fmt: skip
    first = main([*args, "--hp_trials", "2"])
    summary = json.loads((out / "hp_search.json").read_text())
    assert [t["state"] for t in summary["trials"]] == ["COMPLETE", "COMPLETE"]
    # Interrupted or extended: the study in optuna.db resumes, running only the missing trials.
    main([*args, "--hp_trials", "3", "--overwrite_output_dir"])
    summary = json.loads((out / "hp_search.json").read_text())
    assert len(summary["trials"]) == 3 and (out / "optuna.db").is_file()
    assert summary["best"]["value"] >= first["hp_search_best"]["value"]
    assert set(summary["best"]["hyperparameters"]) == set(space)
    best = json.loads((out / "best_run.json").read_text())
    assert best["warmup_steps"] == 0.2 and "warmup_ratio" not in best  # the alias must not override the trial
    assert best["bottleneck_dim"] == summary["best"]["hyperparameters"]["bottleneck_dim"]
    assert "hp_search" not in best
    rerun = main([str(out / "best_run.json")])
    assert rerun["eval_accuracy"] == pytest.approx(summary["best"]["value"])
    # the same training, not only the same accuracy (a barely trained tiny model scores 0.5 whatever it does):
    # the loss, a continuous function of every weight, agrees to float precision
    trial = summary["trials"][summary["best"]["trial"]]
    assert trial["metrics"]["eval_accuracy"] == trial["value"]
    assert rerun["eval_loss"] == pytest.approx(trial["metrics"]["eval_loss"], rel=1e-6)
    assert rerun["method_params"] == 2 * 32 * best["bottleneck_dim"] + best["bottleneck_dim"] + 32


def test_bad_search_space_is_refused_before_any_trial(tiny_bert, rte_dir, tmp_path):
    args = [*base_args(tiny_bert, str(rte_dir), str(tmp_path / "o")), "--hp_search", "optuna"]
    with pytest.raises(ConfigError, match=r"'momentum' is not an argument of run_glue.py"):
        main([*args, "--hp_space", '{"momentum": {"type": "float", "low": 0, "high": 1}}'])
    with pytest.raises(ConfigError, match=r"type 'loguniform' is not one of float, int, categorical"):
        main([*args, "--hp_space", '{"learning_rate": {"type": "loguniform", "low": 0, "high": 1}}'])
    with pytest.raises(ConfigError, match=r"--hp_search 'hyperopt' is not valid; choose one of optuna, ray"):
        main([*base_args(tiny_bert, str(rte_dir), str(tmp_path / "o")), "--hp_search", "hyperopt", "--hp_space", "{}"])


def test_ray_tune_pbt_search_runs_two_trials_locally(tiny_bert, rte_dir, tmp_path):
    pytest.importorskip("ray")
    out = tmp_path / "ray"
    space = write(tmp_path / "space.json", json.dumps({"learning_rate": SPACE["learning_rate"]}))
    code = (
        "import signal, sys; from peftlab.lab.run import main; before = signal.getsignal(signal.SIGINT); "
        f"r = main({[*base_args(tiny_bert, str(rte_dir), str(out)), '--eval_strategy', 'epoch', '--save_strategy', 'epoch', '--hp_search', 'ray', '--hp_space', str(space), '--hp_trials', '2']!r}); "
        "print('BEST', r['hp_search_best']['value']); "
        "print('SIGINT as before:', signal.getsignal(signal.SIGINT) is before)"
    )  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "hp_search.json").read_text())
    assert summary["backend"] == "ray" and "learning_rate" in summary["best"]["hyperparameters"]
    assert "SIGINT as before: True" in proc.stdout  # Ctrl-C still stops the process after the search


def test_two_process_ddp_on_cpu_matches_one_process_at_the_same_global_batch(tiny_bert_no_dropout, rte_dir, tmp_path):
    """torchrun with 2 gloo processes x batch 4 against 1 process x batch 8: with the sequential sampler both see
    the same 8 examples per step and average gradients over them, so the final metrics agree (tolerance 1e-4 on
    the loss, for float summation order). A random sampler is drawn differently by 1 and 2 processes."""

    def args(out: str, batch: int) -> list[str]:
        return [*base_args(tiny_bert_no_dropout, str(rte_dir), out)[:-4], "--per_device_train_batch_size", str(batch),
                "--num_train_epochs", "2", "--train_sampling_strategy", "sequential", "--method", "adapter@1+lora@0",
                "--learning_rate", "1e-2", "--disable_tqdm", "True", "--seed", "3"]  # fmt: skip

    single = main(args(str(tmp_path / "single"), 8))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533", "run_glue.py", *args(str(tmp_path / "ddp"), 4)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = json.loads((tmp_path / "ddp" / "all_results.json").read_text())
    assert ddp["eval_loss"] == pytest.approx(single["eval_loss"], abs=1e-4)
    assert ddp["eval_accuracy"] == single["eval_accuracy"]
    assert ddp["trainable_params"] == single["trainable_params"]


def test_a_search_leaves_the_ctrl_c_handler_as_it_found_it():
    # Ray Tune installs its own SIGINT handler when it runs in the main thread and puts the previous one back only
    # when a SIGINT comes; the search puts it back itself
    import signal

    from peftlab.lab.search import keeps_interrupt_handler

    before = signal.getsignal(signal.SIGINT)
    with keeps_interrupt_handler():
        signal.signal(signal.SIGINT, lambda *_: None)  # what tune.run does
    assert signal.getsignal(signal.SIGINT) is before
    with pytest.raises(RuntimeError), keeps_interrupt_handler():  # also when the search fails
        signal.signal(signal.SIGINT, lambda *_: None)
        raise RuntimeError("a trial failed")
    assert signal.getsignal(signal.SIGINT) is before
