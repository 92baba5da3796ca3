"""Typed -s settings of a trainer.

Every trainer names one dataclass (`settings_class`) whose fields are its settings with their defaults;
`mass_train ... -s key=value` values are parsed into it by `schema.from_dict` (an unknown name, or a value of
the wrong type, is refused in one line naming the trainer, the setting and what it accepts), then the class's
`validate()` checks ranges and choices. Trainers read `self.settings.<name>`; the run config records the resolved
settings (a trainer may fill in a derived default, e.g. MAE's block size, and the record shows the value used).
"""
from __future__ import annotations

import dataclasses

from mass_nn.errors import MassError
from mass_nn.schema import from_dict


@dataclasses.dataclass
class NoSettings:
    """A trainer without -s settings."""


def parse_settings(settings_class: type, given: dict, trainer_name: str):
    """An instance of `settings_class` from the -s settings in `given` (defaults for the others), validated."""
    known = sorted(f.name for f in dataclasses.fields(settings_class))
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise MassError(f"unknown {trainer_name} setting(s) {unknown}; known: {known}")
    for name, value in given.items():  # one at a time, so that the message names the setting as it was given
        try:
            from_dict(settings_class, {name: value}, path="setting", error_cls=MassError)
        except MassError as error:
            reason = str(error).split(": ", 1)[-1]
            raise MassError(f"{trainer_name} setting {name}={value!r}: {reason}") from error
    settings = from_dict(settings_class, dict(given), path=f"{trainer_name} settings", error_cls=MassError)
    validate = getattr(settings, "validate", None)
    if validate is not None:
        validate()
    return settings


def check_range(name: str, value, low: float, high: float, high_inclusive: bool = False) -> None:
    """MassError naming the setting unless low <= value < high (<= high with high_inclusive)."""
    inside = low <= value <= high if high_inclusive else low <= value < high
    if not inside:
        bracket = "]" if high_inclusive else ")"
        raise MassError(f"setting {name}={value!r}: expected a value in [{low:g}, {high:g}{bracket}")
