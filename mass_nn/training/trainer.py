"""The training loop every trainer shares: hooks, checkpoints, exact resume, logs, DDP, graceful stop.

A trainer subclass supplies the data and the model through hooks (`setup`, `make_train_loader`,
`compute_loss`, `validate`, optionally `build_optimizer` and `on_epoch_end`); this class owns the order of
things. Resuming is exact because batch i of a run is a pure function of (seed, i) (see the loaders) and the
checkpoint holds model, optimiser, scheduler, EMA, RNG state and the running sums of a half-finished epoch.
"""
from __future__ import annotations

import copy
import logging
import math
import time
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn
from tqdm import tqdm

from mass_nn.errors import MassError
from mass_nn.io.artifact_layout import checkpoint_path
from mass_nn.io.atomic import write_json_atomic
from mass_nn.io.dataset_json import find_dataset_name
from mass_nn.memory_reuse import MemoryReuse, keep_freed_memory
from mass_nn.model.checkpoint import Checkpoint, CheckpointMeta, load_checkpoint, save_checkpoint
from mass_nn.networks.network_base import Network
from mass_nn.paths import MassPaths
from mass_nn.planning.configuration_choice import default_configuration
from mass_nn.planning.plans import ConfigurationPlan, Plans
from mass_nn.planning.plans_compatibility import plans_differences, pool_channel_layouts
from mass_nn.registry import NETWORKS
from mass_nn.schema import to_dict
from mass_nn.threads import ThreadGovernor
from mass_nn.training.distributed import (DistributedContext, any_rank, init_distributed, mean_over_ranks,
                                          parameter_checksums)
from mass_nn.training.metrics_log import (RunLogFile, append_metrics, format_epoch_line, read_metrics,
                                          truncate_metrics)
from mass_nn.training.optim.ema import ModelEMA
from mass_nn.training.optim.lamb import Lamb
from mass_nn.training.optim.lr_scaling import scaled_learning_rate
from mass_nn.training.optim.schedules import build_lr_scheduler
from mass_nn.training.options import TrainingOptions, load_run_config, merge_for_continue, save_run_config
from mass_nn.training.precision import describe_precision, step_autocast
from mass_nn.training.progress_plot import write_progress_plot
from mass_nn.training.run_folder import run_folder
from mass_nn.training.stop_signal import StopRequest
from mass_nn.training.trainer_settings import NoSettings, parse_settings

logger = logging.getLogger(__name__)
# options.max_minutes predicts the next epoch by the longest of this many recent ones: the first epoch (the loader's
# start, the allocator's warm-up) runs 10-20 % over the later ones and would cost a whole epoch of a one-hour budget
RECENT_EPOCHS = 3


class Trainer:
    """Base trainer. Subclasses set the class defaults and implement the hooks marked "subclass"."""

    default_epochs: ClassVar[int] = 100
    default_iters_per_epoch: ClassVar[int] = 1000
    default_lr: ClassVar[float] = 2e-3
    # the global batch default_lr was set for (None: never scaled) and the rule that scales it (lr_scaling.py)
    lr_reference_batch: ClassVar[int | None] = None
    default_lr_scaling: ClassVar[str] = "sqrt"
    default_grad_clip: ClassVar[float] = 1.0  # max global gradient norm
    best_metric_key: ClassVar[str] = "val_loss"  # validate() may override per run through self.best_metric_key
    best_metric_mode: ClassVar[str] = "min"
    ema_warmup: ClassVar[bool] = False  # see ModelEMA; short downstream runs turn it on
    settings_class: ClassVar[type] = NoSettings  # the -s settings (trainer_settings.py)

    def __init__(self, options: TrainingOptions, paths: MassPaths):
        # the request stays as given; self.options is this run's config, resolved once in run() (configuration,
        # stored options of a continued run, settings, plan-derived defaults) and then written to run_config.json
        self.requested = copy.deepcopy(options)
        self.options = copy.deepcopy(options)
        self.paths = paths
        self.settings = self.settings_class()  # parsed from options.extra when the run starts
        self.context = DistributedContext()
        self.plans: Plans | None = None
        self.trained_plans: list[Plans] = []  # every dataset's plans when a run pools several; else self.plans
        self.configuration_plan: ConfigurationPlan | None = None
        self.dataset_name = ""
        self.network: Network | None = None  # a registered network: checkpoints record its name and config
        self.model: nn.Module | None = None  # the network, wrapped by DDP when distributed
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler = None
        self.ema: ModelEMA | None = None
        self.global_step = 0
        self.epoch = 0  # finished epochs
        self.best_metric: float | None = None
        self.output_folder: Path | None = None
        self._epoch_sums: dict[str, float] = {}
        self._epoch_steps = 0
        self._validations_since_best = 0  # for early stopping (options.patience)
        # wall time of the finished epochs (steps, loading, validation) and of the last few: for options.max_minutes
        self._trained_seconds = 0.0
        self._recent_epoch_seconds: list[float] = []
        self._start_message = ""
        self.thread_governor: ThreadGovernor | None = None
        self.memory_reuse: MemoryReuse | None = None

    # ----------------------------------------------------------------- hooks (subclass)
    @property
    def name(self) -> str:
        return type(self).__name__

    def resolve_data(self) -> None:
        """Subclass: find the data and plans (self.plans, self.configuration_plan, self.dataset_name) for
        self.options (final: defaults of a continued run are already merged in)."""
        raise NotImplementedError

    def setup(self) -> None:
        """Subclass: fill in its option defaults (e.g. batch size) and build self.network (a registered
        Network)."""
        raise NotImplementedError

    def make_train_loader(self, start_batch: int):
        """Subclass: an iterator of training batches starting at global batch `start_batch`, with close()."""
        raise NotImplementedError

    def compute_loss(self, batch) -> tuple[torch.Tensor, dict[str, float]]:
        """Subclass: the loss of one batch (called under autocast) and named parts for the logs."""
        raise NotImplementedError

    def validate(self) -> dict[str, float]:
        """Subclass: validation metrics, named val_*; runs on rank 0 with the EMA weights."""
        return {}

    def build_optimizer(self) -> torch.optim.Optimizer:
        return Lamb(self.network.parameters(), lr=self.options.lr, weight_decay=1e-5)

    def run_tag(self) -> str:
        """The run folder's tag; downstream trainers add shots, seed and initialisation to the user's --tag."""
        return self.options.tag

    def on_epoch_end(self, record: dict) -> None:
        """Subclass hook after each epoch's checkpoint and logs."""

    def on_train_end(self) -> dict:
        """Subclass hook after the final checkpoint of a finished run (rank 0 only), e.g. a test-set evaluation;
        what it returns joins the run's summary."""
        return {}

    # ----------------------------------------------------------------- helpers for subclasses
    @property
    def device(self) -> torch.device:
        return self.context.device

    def autocast(self):
        """The context of the step's forward pass and loss: bf16 autocast or none, as --precision chose."""
        return step_autocast(self.options.precision, self.device)

    @property
    def schedule_steps(self) -> int:
        """The steps the lr schedule is laid out over: the run's own, or more with --schedule-epochs."""
        return (self.options.schedule_epochs or self.options.epochs) * self.options.iters_per_epoch

    # ----------------------------------------------------------------- the loop
    def run(self) -> dict:
        """Train (or resume) to the end or to a stop signal; returns a summary dict."""
        self.context = init_distributed(self.options.device)
        if self.options.configuration is None:
            self.options.configuration = default_configuration(self.device.type)
        self.output_folder = self._resolve_output_folder()
        if self.options.continue_training and (self.output_folder / "run_config.json").is_file():
            requested = copy.deepcopy(self.requested)
            requested.configuration = self.options.configuration
            self.options = merge_for_continue(load_run_config(self.output_folder), requested)
        self.settings = parse_settings(self.settings_class, self.options.extra, self.name)
        self.memory_reuse = keep_freed_memory()  # before the data and the network take their memory
        self.resolve_data()
        self.fill_defaults()
        torch.manual_seed(self.options.seed)
        self.setup()
        self.options.extra = to_dict(self.settings)  # the run config records the settings as resolved
        self.resolve_learning_rate()
        self.thread_governor = ThreadGovernor(self.options.num_workers or 0, requested=self.options.threads)
        try:
            return self._run_with_threads()
        finally:
            self.thread_governor.restore()

    def _run_with_threads(self) -> dict:
        self.network.to(self.device)
        self.optimizer = self.build_optimizer()
        self.scheduler = build_lr_scheduler(self.optimizer, self.options.schedule, total_steps=self.schedule_steps,
                                           warmup_steps=self._warmup_steps())
        self.ema = ModelEMA(self.network, decay=self.options.ema_decay, warmup=self.ema_warmup)
        self._resume_or_start()
        self.model = self._wrap_distributed(self.network)
        with StopRequest() as stop, RunLogFile(self.output_folder, enabled=self.context.is_main):
            if self.context.is_main:
                if self._start_message:
                    logger.info("%s", self._start_message)
                logger.info("%s; %s; %s", self.thread_governor.plan.describe(), self.memory_reuse.describe(),
                            describe_precision(self.options.precision, self.device))
                o = self.options
                scaling = "" if self.lr_reference_batch is None or o.lr_scaling == "none" else \
                    f" ({o.lr_scaling} scaling of {self.default_lr:g} at global batch {self.lr_reference_batch})"
                logger.info("%s on %s (%s, %s): epochs %d x %d steps, batch %d x %d process(es) = global batch %d, "
                            "lr %g%s, device %s -> %s", self.name, self.dataset_name, o.plans_name, o.configuration,
                            o.epochs, o.iters_per_epoch, o.batch_size, self.context.world_size, o.global_batch_size,
                            o.lr, scaling, self.device, self.output_folder)
            stopped = self._train_epochs(stop)
            if self.context.is_main:
                logger.info("%s", "stopped early; resume with --continue" if stopped else "training finished")
            extra = self.on_train_end() if not stopped and self.context.is_main else {}
        return {**self._summary(stopped), **extra}

    def fill_defaults(self) -> None:
        """Give every option left unset (epochs, steps, lr, gradient clipping) this trainer's default."""
        o = self.options
        o.epochs = o.epochs if o.epochs is not None else self.default_epochs
        o.iters_per_epoch = o.iters_per_epoch if o.iters_per_epoch is not None else self.default_iters_per_epoch
        o.grad_clip = o.grad_clip if o.grad_clip is not None else self.default_grad_clip
        if o.epochs < 1 or o.iters_per_epoch < 1:
            raise MassError(f"--epochs and --iters-per-epoch must be at least 1 (got {o.epochs}, {o.iters_per_epoch})")
        if o.max_minutes is not None and not o.max_minutes > 0:
            raise MassError(f"--max-minutes {o.max_minutes:g}: give a positive number of minutes")
        if o.schedule_epochs is not None and o.schedule_epochs < o.epochs:
            raise MassError(f"--schedule-epochs {o.schedule_epochs} is shorter than --epochs {o.epochs}: the lr "
                            "schedule must cover the whole run; give at least the epochs, or leave it out")

    def resolve_learning_rate(self) -> None:
        """The global batch (per-process batch x processes, known after setup) and the lr for it: an lr given
        on the command line as it is, else the default lr scaled from lr_reference_batch by the rule."""
        o = self.options
        o.global_batch_size = o.batch_size * self.context.world_size
        if o.lr is not None:
            o.lr_scaling = o.lr_scaling or "none"
            return
        o.lr_scaling = o.lr_scaling or self.default_lr_scaling
        o.lr = scaled_learning_rate(self.default_lr, o.global_batch_size, self.lr_reference_batch, o.lr_scaling)

    def _warmup_steps(self) -> int:
        """The warm-up length in steps, kept inside what every schedule accepts on very short runs."""
        total = self.schedule_steps
        steps = min(int(round(self.options.warmup_fraction * total)), total - 1)
        if self.options.schedule == "onecycle" and steps < 2:
            steps = 2 if total > 2 else 0  # OneCycleLR divides by (warm-up - 1)
        return max(steps, 0)

    def _resolve_output_folder(self) -> Path:
        dataset_name = find_dataset_name(self.options.datasets[0], [self.paths.preprocessed, self.paths.raw])
        return run_folder(self.paths.results, dataset_name, self.name, self.options.plans_name,
                          self.options.configuration, self.run_tag())

    def _wrap_distributed(self, network: nn.Module) -> nn.Module:
        if not self.context.is_distributed:
            return network
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(network, device_ids=device_ids)

    def _resume_or_start(self) -> None:
        latest = checkpoint_path(self.output_folder, "latest")
        if self.options.continue_training and latest.is_file():
            self._restore(load_checkpoint(latest, map_location=self.device))
            if self.context.is_main:
                truncate_metrics(self.output_folder, self.epoch)
            self._start_message = f"resumed from {latest} at epoch {self.epoch}, step {self.global_step}"
        elif self.options.continue_training:
            self._start_message = f"--continue: no checkpoint_latest.pt in {self.output_folder}; starting a new run"
        elif latest.is_file():
            raise MassError(f"{self.output_folder} already holds a run (checkpoint_latest.pt); pass --continue to "
                            f"resume it, or --tag NAME to start a separate run")
        if self.context.is_main:
            self.output_folder.mkdir(parents=True, exist_ok=True)
            save_run_config(self.options, self.output_folder)

    def _restore(self, checkpoint: Checkpoint) -> None:
        differences = plans_differences(Plans.from_dict(checkpoint.meta.plans), checkpoint.meta.configuration,
                                        self.plans, self.options.configuration)
        if differences:
            raise MassError(f"cannot continue: the plans changed since this run started "
                            f"({self.output_folder}):\n  " + "\n  ".join(differences)
                            + "\nre-run with the original plans, or start a new run with --tag")
        self.network.load_state_dict(checkpoint.model)
        self.optimizer.load_state_dict(checkpoint.optimizer)
        self.scheduler.load_state_dict(checkpoint.scheduler)
        self.ema.load_state_dict(checkpoint.ema)
        state = checkpoint.trainer_state
        self.global_step, self.epoch = checkpoint.meta.global_step, checkpoint.meta.epoch
        self.best_metric = checkpoint.meta.best_metric
        self._epoch_sums = dict(state.get("epoch_sums", {}))
        self._epoch_steps = int(state.get("epoch_steps", 0))
        self._validations_since_best = int(state.get("validations_since_best", 0))
        self._trained_seconds = float(state.get("trained_seconds", 0.0))
        self._recent_epoch_seconds = [float(s) for s in state.get("recent_epoch_seconds", [])]
        if int(state.get("world_size", 1)) != self.context.world_size:
            raise MassError(f"cannot continue with {self.context.world_size} process(es): the run was trained with "
                            f"{state.get('world_size', 1)}, and the process count decides the batches each process "
                            f"draws; restart it with the same number of processes")
        if "torch_rng" in state:
            torch.set_rng_state(state["torch_rng"])

    def adopt_sources(self, sources) -> None:
        """Take plans, configuration and name from the first of a run's datasets (`PreprocessedSource`s, already
        checked to fit together), and keep every dataset's plans for the channel layouts trained on."""
        first = sources[0]
        self.plans, self.configuration_plan, self.dataset_name = first.plans, first.configuration, first.dataset_name
        self.trained_plans = [s.plans for s in sources]

    def trained_channel_layouts(self) -> list[list[dict]]:
        """The distinct channel layouts (modality, normalisation per channel) of the datasets this run trains on."""
        return pool_channel_layouts(self.trained_plans or [self.plans])

    def _make_checkpoint(self) -> Checkpoint:
        meta = CheckpointMeta(trainer=self.name, network_class=NETWORKS.name_of(type(self.network)),
                              network_config=self.network.config.to_dict(), plans=self.plans.to_dict(),
                              configuration=self.options.configuration,
                              encoder_key_prefix=self.network.encoder_key_prefix,
                              epoch=self.epoch, global_step=self.global_step, run_config=self.options.to_dict(),
                              best_metric=self.best_metric,
                              trained_channel_layouts=self.trained_channel_layouts())
        state = {"epoch_sums": dict(self._epoch_sums), "epoch_steps": self._epoch_steps,
                 "validations_since_best": self._validations_since_best, "torch_rng": torch.get_rng_state(),
                 "trained_seconds": self._trained_seconds,
                 "recent_epoch_seconds": list(self._recent_epoch_seconds),
                 "world_size": self.context.world_size}
        return Checkpoint(meta=meta, model=self.network.state_dict(), ema=self.ema.state_dict(),
                          optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
                          trainer_state=state)

    def save(self, kind: str) -> None:
        if self.context.is_main:
            save_checkpoint(self._make_checkpoint(), checkpoint_path(self.output_folder, kind))

    def train_step(self, batch) -> dict[str, float]:
        """One optimisation step: loss, backward, clip, optimiser, scheduler, EMA. Non-finite losses skip the
        update (and are counted) instead of poisoning the weights."""
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            loss, parts = self.compute_loss(batch)
        if not torch.isfinite(loss):
            logger.warning("non-finite loss at step %d; update skipped", self.global_step)
            self.scheduler.step()
            return {"skipped_steps": 1.0}
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.network.parameters(), self.options.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.ema.update(self.network)
        return {"loss": float(loss.detach()), **parts, "grad_norm": float(grad_norm)}

    def _train_epochs(self, stop: StopRequest) -> bool:
        """Runs the remaining epochs; returns True when a stop signal ended the run early."""
        loader = self.make_train_loader(start_batch=self.global_step)
        try:
            while (self.epoch < self.options.epochs and not self._patience_exhausted()
                   and not self._out_of_time()):
                epoch_start = time.time()
                if self._train_one_epoch(loader, stop):
                    self.save("latest")
                    return True
                self.epoch += 1
                self._end_epoch(epoch_start)
        finally:
            loader.close()
        self._sync_check()
        self.save("final")
        return False

    def _train_one_epoch(self, loader, stop: StopRequest) -> bool:
        first = self.global_step - self.epoch * self.options.iters_per_epoch
        bar = tqdm(range(first, self.options.iters_per_epoch), desc=f"epoch {self.epoch + 1}/{self.options.epochs}",
                   disable=not self.context.is_main, leave=False, dynamic_ncols=True)
        for _ in bar:
            wait_start = time.time()
            batch = next(loader)
            step_start = time.time()
            values = self.train_step(batch)
            values.update(data_seconds=step_start - wait_start, step_seconds=time.time() - step_start,
                          threads=float(torch.get_num_threads()))
            self.thread_governor.update()
            for key, value in values.items():
                self._epoch_sums[key] = self._epoch_sums.get(key, 0.0) + value
            self._epoch_steps += 1
            self.global_step += 1
            if "loss" in values:
                bar.set_postfix(loss=f"{values['loss']:.4f}")
            if any_rank(stop.requested, self.context):
                return True
        return False

    def _end_epoch(self, epoch_start: float) -> None:
        seconds = time.time() - epoch_start
        steps = max(self._epoch_steps, 1)
        train = {f"train_{k}" if not k.endswith("seconds") else k: v / steps for k, v in self._epoch_sums.items()
                 if k != "skipped_steps"}
        record = {"epoch": self.epoch, "global_step": self.global_step, **mean_over_ranks(train, self.context),
                  "lr": self.optimizer.param_groups[0]["lr"], "epoch_seconds": seconds, "time": time.time()}
        if "skipped_steps" in self._epoch_sums:
            record["skipped_steps"] = self._epoch_sums["skipped_steps"]
        self._epoch_sums, self._epoch_steps = {}, 0
        if self.context.is_main and (self.epoch % self.options.val_every == 0 or self.epoch == self.options.epochs):
            record.update(self.validate())
            self._update_best(record)
        epoch_wall = time.time() - epoch_start  # validation included: it spends the time budget too
        self._trained_seconds += epoch_wall
        self._recent_epoch_seconds = (self._recent_epoch_seconds + [epoch_wall])[-RECENT_EPOCHS:]
        record["trained_minutes"] = self._trained_seconds / 60
        self.save("latest")
        if self.context.is_main:
            append_metrics(self.output_folder, record)
            write_progress_plot(read_metrics(self.output_folder), self.output_folder / "progress.png",
                                title=f"{self.name} on {self.dataset_name}")
            logger.info("%s", format_epoch_line(record))
        self.on_epoch_end(record)

    def _update_best(self, record: dict) -> None:
        value = record.get(self.best_metric_key)
        if value is None or not math.isfinite(value):
            return
        better = (self.best_metric is None or (value > self.best_metric if self.best_metric_mode == "max"
                                               else value < self.best_metric))
        if better:
            self.best_metric = value
            self._validations_since_best = 0
            self.save("best")
            logger.info("new best %s %.4f -> checkpoint_best.pt", self.best_metric_key, value)
        else:
            self._validations_since_best += 1

    def _patience_exhausted(self) -> bool:
        """Early stopping: True (on every rank) once `patience` validations in a row brought no improvement."""
        patience = self.options.patience
        exhausted = patience is not None and self._validations_since_best >= patience
        exhausted = any_rank(exhausted, self.context)
        if exhausted and self.context.is_main and self.epoch < self.options.epochs:
            logger.info("early stopping after epoch %d: no better %s in %d validations", self.epoch,
                        self.best_metric_key, patience)
        return exhausted

    def _out_of_time(self) -> bool:
        """options.max_minutes: True (on every rank) once another epoch as long as the longest of the last
        RECENT_EPOCHS would end past the budget; the run then ends with its final checkpoint, like one that trained
        all its epochs."""
        budget = self.options.max_minutes
        out = (budget is not None and self.epoch > 0
               and self._trained_seconds + max(self._recent_epoch_seconds, default=0.0) > 60 * budget)
        out = any_rank(out, self.context)
        if out and self.context.is_main and self.epoch < self.options.epochs:
            logger.info("time budget: %d of %d epochs (%d steps) in %.1f of %g minutes; another would end past it",
                        self.epoch, self.options.epochs, self.global_step, self._trained_seconds / 60, budget)
        return out

    def _sync_check(self) -> None:
        """Record every rank's parameter checksum: replicas that drift apart are a bug, not noise."""
        checksums = parameter_checksums(self.network, self.context)
        if self.context.is_main:
            write_json_atomic({"world_size": self.context.world_size, "parameter_checksums": checksums,
                               "in_sync": max(checksums) - min(checksums) <= 1e-6 * max(1.0, abs(checksums[0]))},
                              self.output_folder / "replica_sync.json")

    def _summary(self, stopped: bool) -> dict:
        return {"output_folder": str(self.output_folder), "epochs_done": self.epoch, "global_step": self.global_step,
                "trained_minutes": self._trained_seconds / 60, "stopped_early": stopped,
                "best_metric": self.best_metric, "best_metric_key": self.best_metric_key}

