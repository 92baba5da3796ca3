"""The pretraining benchmarks' workspace: the phantom (and ../shared/data's CT tumours) planned, preprocessed and
masked once, and trainers built on it exactly as `mass_train` builds them on CPU."""
from __future__ import annotations

from pathlib import Path

from mass_nn.paths import MassPaths

PHANTOM_ID, PHANTOM_CASES = 990, 12
SHARED_KIND = "ct_tumour"  # -> Dataset607_CTTumour
CONFIGURATION, PLANS_NAME, TRAINER = "3d_cpu", "MassPlans", "MASSPretrainer"


def ensure_phantom(paths: MassPaths) -> int:
    """Write the 12-case phantom unless the workspace already holds it."""
    from dataset_conversion.phantom import write_phantom_dataset
    if not any((d / "dataset.json").is_file() for d in paths.raw.glob(f"Dataset{PHANTOM_ID}_*")):
        write_phantom_dataset(paths.raw, PHANTOM_ID, num_cases=PHANTOM_CASES, seed=0)
    return PHANTOM_ID


def ensure_shared(shared: Path, paths: MassPaths) -> int | None:
    """Convert ../shared/data's CT tumour cases (once); None, with the reason printed, when it is absent."""
    from dataset_conversion.shared_data import SHARED_KINDS, convert_shared_data
    spec = SHARED_KINDS[SHARED_KIND]
    missing = [s for s in spec.subfolders if not (shared / s).is_dir()]
    if missing:
        print(f"skipping the real dataset: {shared} lacks {', '.join(missing)}")
        return None
    dataset_id = 600 + spec.offset
    if not any((d / "dataset.json").is_file() for d in paths.raw.glob(f"Dataset{dataset_id}_*")):
        convert_shared_data(shared, paths.raw, which=[SHARED_KIND])
    return dataset_id


def preprocess_and_generate_masks(dataset_id: int, paths: MassPaths, preset: str = "cpu_only") -> None:
    """Plan with `preset`, preprocess (3d_cpu) and generate supervoxel masks; both stages skip what is done."""
    from mass_nn.masks.generate import MaskGenerationOptions, generate_masks
    from mass_nn.planning.planner_settings import load_preset
    from mass_nn.preprocessing.plan_and_preprocess import PlanAndPreprocessOptions, plan_and_preprocess
    plan_and_preprocess(dataset_id, paths, PlanAndPreprocessOptions(preset=preset, num_processes=2,
                                                                    progress=False))
    generate_masks(dataset_id, paths, MaskGenerationOptions(generator="supervoxel", configuration=CONFIGURATION,
                                                            plans_name=load_preset(preset)[1], num_processes=2,
                                                            progress=False))


def build_trainer(dataset_id: int, paths: MassPaths, steps: int, trainer_name: str = TRAINER,
                  batch_size: int | None = None):
    """A trainer (MASSPretrainer by default) with its data, network and settings resolved exactly as
    `mass_train` does on CPU (batch_size None: the plans')."""
    from mass_nn.registry import TRAINERS
    from mass_nn.training.options import TrainingOptions
    options = TrainingOptions(mode="PRETRAIN", datasets=[str(dataset_id)], trainer=trainer_name,
                              configuration=CONFIGURATION, epochs=1, iters_per_epoch=steps, device="cpu",
                              batch_size=batch_size)
    trainer = TRAINERS.get(trainer_name)(options, paths)
    trainer.resolve_data()
    trainer.fill_defaults()
    trainer.setup()
    trainer.resolve_learning_rate()
    return trainer


def loader_of(trainer, workers: int, seed: int = 0):
    """The two-view loader of a MASSPretrainer's train cases."""
    from mass_nn.training.data.pretraining_loader import make_pretraining_loader
    return make_pretraining_loader(trainer.train_cases, trainer.sampler_settings, trainer.options.batch_size,
                                   seed=seed, num_workers=workers)


def ready_for_steps(trainer, total_steps: int) -> None:
    """Give a trainer built by `build_trainer` what `Trainer.run` would before its first train_step: the model on
    its device, optimiser, a warm-up-free schedule over `total_steps` and the EMA."""
    from mass_nn.training.optim.ema import ModelEMA
    from mass_nn.training.optim.schedules import build_lr_scheduler
    trainer.network.to(trainer.device)
    trainer.model = trainer.network
    trainer.optimizer = trainer.build_optimizer()
    trainer.scheduler = build_lr_scheduler(trainer.optimizer, trainer.options.schedule, total_steps=total_steps,
                                           warmup_steps=0)
    trainer.ema = ModelEMA(trainer.network, decay=trainer.options.ema_decay)
