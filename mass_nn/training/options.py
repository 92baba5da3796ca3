"""What a training run was asked to do: the CLI options as one typed record, saved as run_config.json.

`None` means "the trainer's default"; the trainer resolves every None before training starts, so
run_config.json always holds the values that were really used.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

from mass_nn.errors import MassError
from mass_nn.io.atomic import read_json, write_json_atomic
from mass_nn.schema import from_dict, to_dict

# options that may change when a run is continued (they do not change what is computed)
RESUMABLE_OVERRIDES = frozenset({"continue_training", "num_workers", "device", "threads"})


@dataclass
class TrainingOptions:
    """Options of `mass_train` (see documentation/pretraining.md for each one)."""

    mode: str  # "PRETRAIN" or "FINETUNE"
    datasets: list[str]
    trainer: str = "MASSPretrainer"
    configuration: str | None = None  # None: 3d_paper on CUDA, 3d_cpu otherwise
    plans_name: str = "MassPlans"
    epochs: int | None = None
    iters_per_epoch: int | None = None
    batch_size: int | None = None
    lr: float | None = None  # None: the trainer's default lr, scaled to the global batch by lr_scaling
    lr_scaling: str | None = None  # "sqrt", "linear" or "none" (lr_scaling.py); None: the trainer's rule
    global_batch_size: int | None = None  # resolved: batch_size x processes, the batch the lr is scaled for
    seed: int = 0
    tag: str = ""
    continue_training: bool = False
    num_workers: int | None = None
    threads: int | None = None  # torch intra-op threads; None: chosen and adjusted by mass_nn.threads
    device: str = "auto"
    precision: str = "auto"  # "auto" (bf16 autocast on CUDA, fp32 on CPU), "fp32" or "bf16" (precision.py)
    masks: str | None = None  # mask generator whose banks to train on; None: the only one present
    val_dataset: list[str] | None = None  # labelled datasets for in-context validation
    val_every: int = 1
    val_batches: int = 4
    schedule: str = "poly"
    # lay the lr schedule (warm-up included) over this many epochs and stop after `epochs`: the first steps of a
    # longer run, the same batches and lr as that run has there (None: over `epochs`)
    schedule_epochs: int | None = None
    # stop after the last whole epoch that fits in this many minutes of training (each epoch's steps, loading and
    # validation, summed over the run and its resumptions), before `epochs` if time runs out first (None: no limit)
    max_minutes: float | None = None
    warmup_fraction: float = 0.05
    dice: str = "adaptive_tversky"
    ema_decay: float = 0.99
    grad_clip: float | None = None  # None: the trainer's default_grad_clip
    pretrained: str | None = None  # FINETUNE: checkpoint to start from (None: from scratch)
    shots: int | None = None  # FINETUNE segmentation: labelled training cases (None: all of the train split)
    train_fraction: float | None = None  # FINETUNE classification: share of the train split used (None: all)
    patience: int | None = None  # FINETUNE: stop after this many validations without improvement (None: never)
    extra: dict = field(default_factory=dict)  # trainer-specific settings, name -> value

    def to_dict(self) -> dict:
        return to_dict(self)

    @classmethod
    def from_dict(cls, d: dict, source: str = "run_config.json") -> "TrainingOptions":
        if isinstance(d.get("val_dataset"), str):  # run_config.json written before several were allowed
            d = {**d, "val_dataset": [d["val_dataset"]]}
        return from_dict(cls, d, source, error_cls=MassError)


def save_run_config(options: TrainingOptions, folder: Path) -> None:
    write_json_atomic(options.to_dict(), Path(folder) / "run_config.json")


def load_run_config(folder: Path) -> TrainingOptions:
    path = Path(folder) / "run_config.json"
    if not path.is_file():
        raise MassError(f"{path}: run_config.json not found; this is not a mass_train run folder")
    return TrainingOptions.from_dict(read_json(path), str(path))


def merge_for_continue(stored: TrainingOptions, requested: TrainingOptions) -> TrainingOptions:
    """The options of a continued run: the stored ones, with the few harmless overrides the user gave.

    Any other option given with a different value is an error, because the resumed run would no longer be the
    run that was started.
    """
    conflicts = []
    merged = TrainingOptions.from_dict(stored.to_dict())
    defaults = TrainingOptions(mode=requested.mode, datasets=requested.datasets)
    if [str(d) for d in requested.datasets] != [str(d) for d in stored.datasets]:
        conflicts.append(f"datasets: run has {stored.datasets}, command line asks {requested.datasets}")
    for f in fields(TrainingOptions):
        new, old = getattr(requested, f.name), getattr(stored, f.name)
        if f.name == "datasets":
            continue
        if f.name == "extra":
            conflicts += [f"setting {k}: run has {old.get(k)!r}, command line asks {v!r}"
                          for k, v in new.items() if old.get(k) != v]
        elif f.name in RESUMABLE_OVERRIDES:
            if new is not None and new != getattr(defaults, f.name):
                setattr(merged, f.name, new)
        elif new is not None and new != getattr(defaults, f.name) and new != old:
            conflicts.append(f"{f.name}: run has {old!r}, command line asks {new!r}")
    if conflicts:
        raise MassError("--continue cannot change these options of the existing run (start a new run with --tag "
                        "instead):\n  " + "\n  ".join(conflicts))
    merged.continue_training = True
    return merged
