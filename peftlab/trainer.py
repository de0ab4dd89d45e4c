"""The HF ``Trainer`` with the few things a PEFT classifier run needs, and nothing copied from its internals."""

from __future__ import annotations

from contextlib import nullcontext

import torch
from transformers import Trainer
from transformers.trainer_pt_utils import LengthGroupedSampler

from peftlab.methods.lora import lora_merged
from peftlab.modeling import SequenceClassifier, save_model_config


class GlueTrainer(Trainer):
    """``Trainer`` that saves only what trained (plus the model's config), gives the head its own learning rate,
    and groups batches by the lengths computed at tokenization."""

    def _classifier(self) -> SequenceClassifier | None:
        model = self.accelerator.unwrap_model(self.model)
        return model if isinstance(model, SequenceClassifier) else None

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        model = self._classifier()
        if model is not None and state_dict is None:
            state_dict = model.trainable_state_dict()
        super()._save(output_dir, state_dict)
        if model is not None and self.args.should_save:
            save_model_config(output_dir or self.args.output_dir, **model.export_config())

    def _issue_warnings_after_load(self, load_result) -> None:
        # Checkpoints hold only the trained parameters: the frozen ones are missing by design.
        model = self._classifier()
        if model is not None:
            frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
            load_result.missing_keys[:] = [k for k in load_result.missing_keys if k not in frozen]
        super()._issue_warnings_after_load(load_result)

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        """The Trainer's optimizer, with the head's parameters moved to groups at ``--head_learning_rate``."""
        created = self.optimizer is None
        optimizer = super().create_optimizer(model)
        head_lr = getattr(self.args, "head_learning_rate", None)
        classifier = self._classifier()
        if created and head_lr is not None and classifier is not None:
            head = {id(p) for p in classifier.head.parameters()}
            groups = []
            for group in optimizer.param_groups:
                for in_head in (False, True):
                    params = [p for p in group["params"] if (id(p) in head) == in_head]
                    if params:
                        groups.append({**group, "params": params, "lr": head_lr if in_head else group["lr"]})
            optimizer.param_groups[:] = groups
        return optimizer

    def _get_train_sampler(self, train_dataset=None) -> torch.utils.data.Sampler | None:
        # The Trainer drops unused columns (our precomputed "length" too) before it builds the sampler and would
        # then count every example's tokens again; give it the lengths we already have.
        dataset = self.train_dataset
        lengths = getattr(dataset, "lengths", None)
        if lengths is None and self.args.length_column_name in getattr(dataset, "column_names", ()):
            lengths = dataset[self.args.length_column_name]
        if self.args.train_sampling_strategy == "group_by_length" and self.args.world_size == 1 and lengths is not None:
            return LengthGroupedSampler(
                self.args.train_batch_size * self.args.gradient_accumulation_steps, lengths=lengths
            )
        return super()._get_train_sampler(train_dataset)

    def evaluation_loop(self, *args, **kwargs):
        """Evaluate and predict with LoRA merged into the base weights; they are restored bit for bit after."""
        model = self._classifier()
        with lora_merged(model) if model is not None else nullcontext():
            return super().evaluation_loop(*args, **kwargs)
