"""The HF ``Trainer`` with the few things a GLUE classifier run needs, and nothing copied from its internals."""

from __future__ import annotations

import torch
from transformers import Trainer
from transformers.trainer_pt_utils import LengthGroupedSampler

from peftlab.modeling import SequenceClassifier, save_model_config


class GlueTrainer(Trainer):
    """``Trainer`` that saves the classifier's config beside its weights and groups batches by known lengths."""

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        super()._save(output_dir, state_dict)
        model = self.accelerator.unwrap_model(self.model)
        if self.args.should_save and isinstance(model, SequenceClassifier):
            save_model_config(output_dir or self.args.output_dir, **model.export_config())

    def _get_train_sampler(self, train_dataset=None) -> torch.utils.data.Sampler | None:
        # The Trainer drops unused columns (our precomputed "length" too) before it builds the sampler and would
        # then tokenize-count every example again; give it the lengths we already have.
        dataset = self.train_dataset
        if (
            self.args.train_sampling_strategy == "group_by_length"
            and self.args.world_size == 1
            and dataset is not None
            and self.args.length_column_name in getattr(dataset, "column_names", ())
        ):
            return LengthGroupedSampler(
                self.args.train_batch_size * self.args.gradient_accumulation_steps,
                lengths=dataset[self.args.length_column_name],
            )
        return super()._get_train_sampler(train_dataset)
