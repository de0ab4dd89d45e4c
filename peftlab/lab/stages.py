"""The stages of one prepared run (:func:`execute`): build the model (seeded), wrap the data with the frozen-prefix
cache, build the Trainer, then choose the layer (``--target_layers auto``), search, train, evaluate, predict, and
write ``run_config.json`` and ``all_results.json`` (last: it marks the run done)."""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from transformers import (
    EarlyStoppingCallback,
    set_seed,
)

from peftlab.cache import need_of
from peftlab.checkpoints import (
    AUTO_CHOICE,
    check_checkpoint_fits,
    kept_choice,
    remove_checkpoints,
    resolve_checkpoint,
)
from peftlab.glue.data import eval_metric_suffix
from peftlab.glue.metrics import compute_metrics_fn, predictions_from_logits
from peftlab.glue.submission import write_submission
from peftlab.io import check_free_space, write_json
from peftlab.lab.args import ALIASES, strategy_name
from peftlab.lab.autolayer import SCRATCH_PREFIX, LayerSearch, at_layer, choose_layer
from peftlab.lab.parsing import Plan
from peftlab.lab.record import RESULTS_NAME, RUN_CONFIG_NAME, run_config, versions
from peftlab.lab.search import (
    explicit_arguments,
    run_search,
    trial_values,
)
from peftlab.lab.summary import summary_of
from peftlab.lab.workspace import RunSets, Workspace, head_config, make_model, run_sets, with_cache
from peftlab.modeling import (
    BUNDLED_MODEL,
    MODEL_CONFIG_NAME,
    WEIGHTS_NAME,
    SequenceClassifier,
    check_buildable,
)
from peftlab.trainer import GlueTrainer

logger = logging.getLogger("peftlab")


def predict(trainer, test_features: dict, test_sets: dict, output_dir: str) -> list[str]:
    """Predict every test split (all processes take part) and write the GLUE-server files (the first one only)."""
    written = []
    for split, (test_task, data) in test_features.items():
        output = trainer.predict(test_sets[split])
        if trainer.is_world_process_zero():
            predictions = predictions_from_logits(test_task, output.predictions)
            name = "test" if split == "ax" else split
            written.append(str(write_submission(test_task, name, data["idx"], predictions, output_dir)))
    return written


def hp_search(trainer, plan: Plan) -> dict[str, Any]:
    """Run the search; save its summary (``hp_search.json``) and the best trial as an argument file."""
    training_args = plan.training_args
    summary = run_search(
        trainer, plan.search_args, plan.space, plan.task.main_metric, training_args.output_dir, plan.search_key
    )
    best_args = explicit_arguments(*plan.parsed, plan.protocol_args)
    for alias in ALIASES:  # their values are already in the fields they set; kept, they would override a trial's
        best_args.pop(alias, None)
    best_args.update(summary["best"]["hyperparameters"])
    best_args["output_dir"] = str(Path(training_args.output_dir) / "best_run")
    best_args["overwrite_output_dir"] = True
    out = Path(training_args.output_dir)
    write_json(out / "best_run.json", best_args)
    summary["rerun"] = f"python run_glue.py {out / 'best_run.json'}"
    summary["versions"] = versions()
    write_json(out / "hp_search.json", summary)
    logger.info("Best trial: %s. Re-run it with: %s", summary["best"], summary["rerun"])
    results = {f"hp_search_best_{summary['objective']}": summary["best"]["value"], "hp_search_best": summary["best"]}
    write_json(out / RESULTS_NAME, results)
    return results


def auto_layer(ws: Workspace, plan: Plan) -> tuple[dict[str, Any], Plan]:
    """Choose the layer of an ``auto`` run (:mod:`peftlab.lab.autolayer`); returns the record and the plan with the
    method at that layer.
    A run resumed from a checkpoint keeps the choice recorded there (made before it stopped; the checkpoint holds
    the module at that layer) instead of making it again."""
    if plan.training_args.world_size == 1:  # this process alone holds the folder: these are a killed start's
        for stale in plan.output_dir.glob(f"{SCRATCH_PREFIX}*"):
            shutil.rmtree(stale, ignore_errors=True)
    record = kept_choice(plan.training_args.resume_from_checkpoint)
    if record is None:
        search = LayerSearch(
            train=ws.features(plan).train, task=plan.task, peft_args=plan.peft_args, candidates=plan.auto_candidates,
            options=plan.auto_args, training=plan.training_args, split_seed=plan.data_args.split_seed,
            output_dir=plan.output_dir,
        )  # fmt: skip
        record = choose_layer(search, RunCandidates(ws, plan))
    else:
        logger.info("Auto layer: layer %d, as chosen before the run stopped (%s); not chosen again.",
                    record["chosen_layer"], plan.training_args.resume_from_checkpoint)  # fmt: skip
    chosen = dataclasses.replace(plan.peft_args, method=at_layer(plan.peft_args.method, record["chosen_layer"]))
    return record, plan.resolved(peft_args=chosen)


class RunCandidates:
    """The candidates of :func:`peftlab.lab.autolayer.choose_layer`, built as this run's own model and trainer
    would be (a :class:`peftlab.lab.autolayer.CandidateFactory`)."""

    def __init__(self, ws: Workspace, plan: Plan) -> None:
        self.ws, self.plan = ws, plan

    def trainer(self, peft_args, train, evaluation, training_args, callbacks: list) -> GlueTrainer:
        set_seed(training_args.seed)
        model = make_model(self.ws, self.plan, peft_args)
        wrapped, collator = with_cache(self.ws, self.plan, model, {"train": train, "eval": evaluation})
        sets = RunSets(wrapped["train"], {"selection": wrapped["eval"]}, {}, collator)
        return build_trainer(self.ws, self.plan, model, sets, args=training_args, callbacks=callbacks)

    def plan_cache(self, pefts: list, data: list) -> None:
        plan, ws = self.plan, self.ws
        if not plan.training_args.cache_frozen_prefix:
            return
        config = ws.config(plan.model_path, plan.model_args)
        head = head_config(plan.model_args, plan.task.num_labels)
        for need in filter(None, (need_of(check_buildable(config, head, peft)) for peft in pefts)):
            for dataset in data:
                ws.cache(plan).plan(need, dataset)


class EarlyStopping(EarlyStoppingCallback):
    """HF's early stopping, without its warning that the best model will not be loaded when the run keeps the best
    evaluation's parameters in memory (``select_best_in_memory``), which loads them at the end itself."""

    def on_train_begin(self, args, state, control, **kwargs):
        if getattr(args, "select_best_in_memory", False):
            args = _LoadsBest(args)
        return super().on_train_begin(args, state, control, **kwargs)


class _LoadsBest:
    """Training arguments as :class:`EarlyStopping`'s checks see them: the best model is loaded at the end."""

    def __init__(self, args) -> None:
        self._args = args

    def __getattr__(self, name: str):
        return True if name == "load_best_model_at_end" else getattr(self._args, name)


def build_trainer(
    ws: Workspace, plan: Plan, model: SequenceClassifier, sets: RunSets, args=None, callbacks: list | None = None
) -> GlueTrainer:
    """The Trainer of the run (with a model factory per trial under ``--hp_search``); ``args`` and ``callbacks``
    replace the run's training arguments and add to its callbacks (the candidates of ``--target_layers auto``)."""
    model_args, peft_args, _, training_args = plan.parsed
    training_args = args or training_args
    callbacks = list(callbacks or [])
    if training_args.early_stopping_patience is not None:
        callbacks.append(EarlyStopping(training_args.early_stopping_patience, training_args.early_stopping_threshold))
    model_init = None
    if plan.space is not None:

        def model_init(trial=None):
            """Every search trial builds its model right after seeding, as an ordinary run does; then seeds again,
            as the Trainer's construction does in an ordinary run, so that the trial draws its data order and
            dropout from the same random state as ``best_run.json`` will (the Trainer seeds once, before this)."""
            values = trial_values(trial, plan.space)
            peft = dataclasses.replace(peft_args, **{k: v for k, v in values.items() if hasattr(peft_args, k)})
            head = dataclasses.replace(model_args, **{k: v for k, v in values.items() if k == "head_dropout"})
            built = make_model(ws, plan, peft, head)
            set_seed(training_args.seed)
            return built

    return GlueTrainer(
        resume_arguments=plan.resume_args,
        model=None if model_init else model,
        model_init=model_init,
        args=training_args,
        train_dataset=sets.train,
        eval_dataset=next(iter(sets.eval.values()), None),
        processing_class=ws.tokenizer(plan.tokenizer_path, model_args),
        data_collator=sets.collator,
        compute_metrics=compute_metrics_fn(plan.task),
        callbacks=callbacks,
    )


def train(trainer: GlueTrainer, plan: Plan, train_set) -> dict[str, Any]:
    """Train; save what trained (and each method's export, e.g. LoRA in peft's format). Returns its results."""
    training_args, output_dir = plan.training_args, plan.output_dir
    results: dict[str, Any] = {}
    # the training set in a fixed (evaluation) order: a resumed run, initialised alike, chooses the same again; in
    # the precision training computes in (accelerate's autocast: a bf16 backbone under --model_dtype needs it)
    prepare_started = time.perf_counter()
    with trainer.accelerator.autocast():
        trainer.model.prepare_methods(lambda: trainer.get_eval_dataloader(train_set))
    results["prepare_seconds"] = round(time.perf_counter() - prepare_started, 2)  # a mask's choice (fisher, lt-sft)
    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    if training_args.save_model:
        trainer.save_model()
        if trainer.is_world_process_zero():
            results["saved_weights_bytes"] = (output_dir / WEIGHTS_NAME).stat().st_size
            trainer.model.export_methods(output_dir)
    trainer.save_state()
    results.update(train_result.metrics)
    earlier = (trainer.resumed or {}).get("train_seconds")
    if earlier is not None:  # the Trainer times the steps after the checkpoint only: report the whole run's
        part, whole = results["train_runtime"], results["train_runtime"] + earlier
        steps, after = trainer.state.global_step, trainer.state.global_step - trainer.resumed["step"]
        for key in ("train_samples_per_second", "train_steps_per_second"):
            if key in results and whole > 0 and after > 0:
                results[key] = round(results[key] * part / whole * steps / after, 3)
        results["train_runtime"] = round(whole, 4)
    results.update(trainer.selection_summary())
    results["train_samples"] = len(train_set)
    return results


def evaluate(trainer: GlueTrainer, plan: Plan, eval_sets: dict[str, Any]) -> dict[str, Any]:
    """Metrics on every evaluation set (``eval_<name>``, with the split's suffix: MNLI mismatched ``_mm``)."""
    results: dict[str, Any] = {}
    known = trainer.evaluation_of_final_model() if plan.training_args.do_train else None
    for index, (split, data) in enumerate(eval_sets.items()):
        if index == 0 and known is not None:  # training already evaluated these very weights on this split
            metrics = dict(known)
        else:
            metrics = trainer.evaluate(eval_dataset=data, metric_key_prefix="eval")
        metrics["eval_samples"] = len(data)
        suffix = eval_metric_suffix(split)
        results.update({f"{key}{suffix}": value for key, value in metrics.items()})
        logger.info("Evaluation on %s: %s", split, metrics)
    return results


def execute(ws: Workspace, plan: Plan) -> dict[str, Any]:
    """Train, evaluate and predict one prepared run; write its results. Returns them.

    The stages: build the model (seeded), wrap the data with the frozen-prefix cache, build the Trainer, then
    train, evaluate, predict, and write ``run_config.json`` and ``all_results.json`` (last: it marks the run done).
    """
    started, cpu_started = time.time(), time.process_time()
    if plan.training_args.overwrite_output_dir and plan.training_args.process_index == 0:
        remove_old_outputs(plan.output_dir)
    if plan.training_args.resumable and not plan.resume_named:
        fresh = plan.resolved({"resume_from_checkpoint": None})  # look again, now that this process holds the lock
        plan = fresh.resolved({"resume_from_checkpoint": resolve_checkpoint(fresh.training_args, plan.resume_args)})
    auto = None
    if plan.auto_candidates is not None:
        auto, plan = auto_layer(ws, plan)
    training_args = plan.training_args
    run_data = ws.run_data(plan)
    logger.info("Task %s, data protocol: %s", plan.task.name, run_data.protocol)
    set_seed(training_args.seed)
    model = make_model(ws, plan)
    if training_args.resume_from_checkpoint:
        check_checkpoint_fits(
            training_args.resume_from_checkpoint, model, plan.model_args.model_name_or_path or BUNDLED_MODEL
        )
    if training_args.process_index == 0:
        check_free_space(plan.output_dir, bytes_written(plan, model), "--output_dir")
    counts = model.parameter_counts()
    logger.info("Methods %s; parameters: %s; adapted: %s", model.injection.methods, counts,
                model.injection.targeted_modules)  # fmt: skip
    sets = run_sets(ws, plan, model)
    trainer = build_trainer(ws, plan, model, sets)
    trainer.run_clock = (started, cpu_started)
    if auto is not None:
        trainer.resume_extras[AUTO_CHOICE] = auto  # a resumed run keeps this choice
    if plan.space is not None:
        return hp_search(trainer, plan)
    config_record = run_config(plan, run_data, model)
    results: dict[str, Any] = dict(counts)
    if auto is not None:
        results["auto_layer"] = config_record["auto_layer"] = auto
    if training_args.do_train:
        results.update(train(trainer, plan, sets.train))
        if trainer.resumed is not None:
            results["resumed"] = config_record["resumed"] = trainer.resumed
        if state := model.extra_state():  # what a method chose (a sparse mask, and how): recorded, weights or not
            config_record["method_state"] = state
        if auto is not None:  # the whole run (choice and final training) in units of the final training alone
            runtime = results["train_runtime"]  # the whole run's, a resumed one's too
            auto["cost_in_runs"] = round((auto["selection_seconds"] + runtime) / runtime, 2)
    if training_args.do_eval:
        results.update(evaluate(trainer, plan, sets.eval))
    if training_args.do_predict:
        results["predict_files"] = predict(trainer, ws.features(plan).test, sets.test, training_args.output_dir)
    results["data_protocol"] = run_data.protocol
    results.update(run_time(trainer, started, cpu_started))
    if trainer.is_world_process_zero():
        write_results(plan, config_record, results)
        print("\n" + summary_of(results, config_record, plan.output_dir) + "\n", flush=True)  # read at a glance
    return results


def run_time(trainer: GlueTrainer, started: float, cpu_started: float) -> dict[str, Any]:
    """The run's wall and CPU seconds (CPU time counts all threads: core-seconds, whatever the load); a resumed run
    adds the time of the work it kept."""
    earlier = trainer.resumed or {}
    return {
        "wall_seconds": round(earlier.get("wall_seconds", 0.0) + time.time() - started, 2),
        "cpu_seconds": round(earlier.get("cpu_seconds", 0.0) + time.process_time() - cpu_started, 2),
        "threads": torch.get_num_threads(),
    }


def write_results(plan: Plan, config_record: dict[str, Any], results: dict[str, Any]) -> None:
    """``run_config.json``, then ``all_results.json`` (last: its presence marks the run finished); a resumable
    run's checkpoints go once its results are written."""
    config_record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    write_json(plan.output_dir / RUN_CONFIG_NAME, config_record)
    write_json(plan.output_dir / RESULTS_NAME, results)
    if plan.training_args.resumable:
        remove_checkpoints(plan.output_dir)


OLD_OUTPUTS = (RESULTS_NAME, RUN_CONFIG_NAME, "hp_search.json", "best_run.json", "trainer_state.json",
               WEIGHTS_NAME, MODEL_CONFIG_NAME, "hf_peft")  # fmt: skip
"""What an earlier run left in a folder that ``--overwrite_output_dir`` writes again, the results first: killed
part-way, the folder must not hold the old results beside the new run's files and look finished."""


def remove_old_outputs(output_dir: Path) -> None:
    for name in OLD_OUTPUTS:
        path = output_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            logger.info("--overwrite_output_dir: removing the earlier run's %s.", path)
            path.unlink()


def bytes_written(plan: Plan, model: torch.nn.Module) -> int:
    """About the most a run writes into its folder: the trained weights; a checkpoint (weights, the optimizer's two
    moments, the best evaluation) twice over while the latest replaces the one before; the tokenizer and logs."""
    trained = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    t = plan.training_args
    checkpoints = t.resumable or strategy_name(t.save_strategy) != "no"
    return 64 * 2**20 + (trained if t.save_model else 0) + (2 * 4 * trained if checkpoints else 0)
