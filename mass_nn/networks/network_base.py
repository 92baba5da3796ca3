"""What every registered network shares: a typed configuration that survives a JSON round trip, and the contract
the model layer reads from the class (no attribute lookups with fallbacks).

- `NetworkConfig`: base of the networks' dataclass configurations. `to_dict` gives JSON-ready data; `from_dict`
  rebuilds the configuration and validates it, so a damaged checkpoint fails with one message naming the field.
- `Network`: base of the registered networks (`mass_nn.registry.NETWORKS`). Each names its configuration class,
  where its encoder's weights live (`encoder_key_prefix`), and, for a pretraining network, which downstream
  networks take its weights (`downstream_network` for segmentation, `classification_network` for
  classification; None where the default applies: the in-context model's own fixed-class forms, or the
  ResUNet classifier for any encoder that fits it).
"""
from __future__ import annotations

from typing import ClassVar

from torch import nn

from mass_nn.errors import PlansValidationError
from mass_nn.schema import from_dict, to_dict


class NetworkConfigError(PlansValidationError, ValueError):
    """A network configuration with unknown, missing or ill-typed fields, or values that cannot build it."""


class NetworkConfig:
    """Base of the networks' dataclass configurations (subclasses are dataclasses and override `validate`)."""

    def to_dict(self) -> dict:
        """A JSON-ready dict that `from_dict` turns back into an equal configuration."""
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict):
        """Build and validate a configuration; every problem raises NetworkConfigError naming the class."""
        config = from_dict(cls, data, error_cls=NetworkConfigError)
        try:
            config.validate()
        except NetworkConfigError:
            raise
        except ValueError as error:
            raise NetworkConfigError(f"{cls.__name__}: {error}") from error
        return config

    def validate(self) -> None:
        """Subclass: raise ValueError naming every field that cannot build the network."""


class Network(nn.Module):
    """Base of the registered networks: built from one `config_class` instance, kept as `self.config`."""

    config_class: ClassVar[type[NetworkConfig]]
    encoder_key_prefix: ClassVar[str] = "encoder."
    downstream_network: ClassVar[str | None] = None
    classification_network: ClassVar[str | None] = None
    config: NetworkConfig
