"""The ClassificationProbe's own settings (`mass_train FINETUNE -tr ClassificationProbe -s KEY=VALUE`)."""
from __future__ import annotations

from dataclasses import dataclass, fields

from mass_nn.errors import MassError
from mass_nn.networks.config import MIN_SIZE, SIZE_DIVISOR
from mass_nn.schema import to_dict

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

    def to_dict(self) -> dict:
        return to_dict(self)

    @classmethod
    def from_extra(cls, extra: dict, trainer: str) -> "ClassificationSettings":
        """The settings given with -s (defaults for the others); an unknown name or a bad value raises MassError
        naming the setting and what it accepts."""
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(extra) - set(known))
        if unknown:
            raise MassError(f"unknown {trainer} setting(s) {unknown}; known: {known}")
        settings = cls(**extra)
        settings._check()
        return settings

    def _check(self) -> None:
        size = self.input_size
        if size is not None and (not isinstance(size, list) or len(size) != 3
                                 or any(isinstance(s, bool) or not isinstance(s, int) for s in size)
                                 or any(s % SIZE_DIVISOR or s < MIN_SIZE for s in size)):
            raise MassError(f"setting input_size={size!r}: expected three integers [z,y,x], each divisible by "
                            f"{SIZE_DIVISOR} and at least {MIN_SIZE}, e.g. -s input_size=[64,64,64]")
        if not isinstance(self.finetune_encoder, bool):
            raise MassError(f"setting finetune_encoder={self.finetune_encoder!r}: expected true or false")
        for name, low, high in (("weight_decay", 0.0, float("inf")), ("dropout", 0.0, 1.0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value < high:
                raise MassError(f"setting {name}={value!r}: expected a number in [{low:g}, {high:g})")
