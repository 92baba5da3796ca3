"""The ClassificationProbe's own settings (`mass_train FINETUNE -tr ClassificationProbe -s KEY=VALUE`), parsed by
trainer_settings.parse_settings."""
from __future__ import annotations

from dataclasses import dataclass

from mass_nn.errors import MassError
from mass_nn.networks.in_context.config import MIN_SIZE, SIZE_DIVISOR
from mass_nn.training.trainer_settings import check_range

DEFAULT_BATCH_SIZE = 8  # the MASS release's classification config; capped at the number of training cases


@dataclass
class ClassificationSettings:
    """input_size: the [z, y, x] window each case is cropped or padded to (None: the configuration's patch size).
    finetune_encoder: train the encoder too (full finetuning) instead of the head on cached frozen features.
    weight_decay: AdamW weight decay. dropout: before the head's linear layer."""

    input_size: list[int] | None = None
    finetune_encoder: bool = False
    weight_decay: float = 1e-4
    dropout: float = 0.1

    def validate(self) -> None:
        size = self.input_size
        if size is not None and (len(size) != 3 or any(s % SIZE_DIVISOR or s < MIN_SIZE for s in size)):
            raise MassError(f"setting input_size={size!r}: expected three integers [z,y,x], each divisible by "
                            f"{SIZE_DIVISOR} and at least {MIN_SIZE}, e.g. -s input_size=[64,64,64]")
        check_range("weight_decay", self.weight_decay, 0.0, float("inf"))
        check_range("dropout", self.dropout, 0.0, 1.0)
