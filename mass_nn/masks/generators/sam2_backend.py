"""The only module that touches the `sam2` package: settings, checkpoint checks, model building, and the two
calls the SAM2 generator needs (automatic masks on one slice; tracking masks through a stack of slices).

One SAM2 video-predictor model serves both steps: the automatic mask generator (AMG) is built on the same
weights. sam2 is imported on first use, so importing this module costs nothing. Every error a user can cause
(no checkpoint, missing or foreign file, a file that does not fit the asked-for model) becomes a MassError that
names the file and the fix; these checks run before any model is built.
"""
from __future__ import annotations

import contextlib
import logging
import re
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mass_nn.errors import MassError

logger = logging.getLogger(__name__)

MODEL_SIZES = {"tiny": "t", "small": "s", "base_plus": "b+", "large": "l"}  # size -> config file suffix
# (patch-embedding width, number of Hiera blocks) of each size, read from a checkpoint to check it fits
_ARCHITECTURES = {(96, 12): "tiny", (96, 16): "small", (112, 24): "base_plus", (144, 48): "large"}
_PATCH_EMBED_KEY = "image_encoder.trunk.patch_embed.proj.weight"
_BLOCK_KEY = re.compile(r"^image_encoder\.trunk\.blocks\.(\d+)\.")
_SAM21_ONLY_KEY = "no_obj_embed_spatial"  # present in SAM 2.1 checkpoints, absent in SAM 2.0 ones
JPEG_QUALITY = 100  # with 4:4:4 chroma: the three windows stay separate and within a few grey levels

CHECKPOINT_GUIDANCE = (
    "SAM2 checkpoints are the official sam2.1_hiera_*.pt files of the SAM 2 release (sam2.1_hiera_tiny.pt, "
    "sam2.1_hiera_small.pt, sam2.1_hiera_base_plus.pt, sam2.1_hiera_large.pt), downloaded by you from Meta's "
    "facebookresearch/sam2 repository (see its README, 'Download Checkpoints'); nothing is downloaded "
    "automatically and no installable package ships them. Pass the file with --checkpoint PATH or set "
    "MASS_SAM2_CHECKPOINT=PATH. The weight-free generator (-g supervoxel) needs no checkpoint.")


@dataclass(frozen=True)
class Sam2Settings:
    """What to build. `model` None: inferred from the checkpoint (file name, else its weights); tiny without one."""

    checkpoint: str | Path | None = None
    model: str | None = None  # tiny | small | base_plus | large
    image_size: int = 1024
    device: str = "auto"  # auto = cuda when available, else cpu
    allow_random_weights: bool = False  # tests only: no checkpoint -> random weights instead of an error
    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.35
    stability_score_thresh: float = 0.6
    box_nms_thresh: float = 0.7


@dataclass
class SeedMask:
    """One automatic mask of a 2D slice."""

    segmentation: np.ndarray  # bool (H, W)
    predicted_iou: float
    stability_score: float = 0.0

    @property
    def area(self) -> int:
        return int(np.count_nonzero(self.segmentation))


@dataclass(frozen=True)
class ResolvedModel:
    """The checked choice: which config, which file, which device."""

    config: str  # Hydra config name inside the sam2 package
    model: str
    checkpoint: Path | None
    device: str


def _size_from_file_name(path: Path) -> str | None:
    match = re.search(r"hiera_(tiny|small|base_plus|large)", path.name)
    return match.group(1) if match else None


def _read_state_dict(path: Path) -> dict:
    """The `model` state dict of a checkpoint, memory-mapped (shapes only are read here)."""
    import torch

    try:
        try:
            content = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # files in torch's legacy (non-zip) format cannot be memory-mapped
            content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise MassError(f"{path} is not a SAM2 checkpoint (torch could not read it: {str(error).splitlines()[0]}). "
                        f"{CHECKPOINT_GUIDANCE}") from error
    if not isinstance(content, dict) or not isinstance(content.get("model"), dict):
        raise MassError(f"{path} is not a SAM2 checkpoint (expected a torch file holding {{'model': state_dict}}). "
                        f"{CHECKPOINT_GUIDANCE}")
    return content["model"]


def _architecture(state: dict) -> tuple[str | None, str]:
    """(size or None when unrecognised, 'sam2.1' or 'sam2') of a SAM2 state dict."""
    family = "sam2.1" if _SAM21_ONLY_KEY in state else "sam2"
    if _PATCH_EMBED_KEY not in state:
        return None, family
    blocks = {int(m.group(1)) for key in state if (m := _BLOCK_KEY.match(key))}
    width = int(state[_PATCH_EMBED_KEY].shape[0])
    return _ARCHITECTURES.get((width, max(blocks, default=-1) + 1)), family


def _config_name(model: str, family: str) -> str:
    suffix = MODEL_SIZES[model]
    if family == "sam2":
        return f"configs/sam2/sam2_hiera_{suffix}.yaml"
    return f"configs/sam2.1/sam2.1_hiera_{suffix}.yaml"


def _device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise MassError(f"device {requested!r} was asked for but torch sees no CUDA GPU here; use device 'cpu' "
                        f"(slow: meant for tests and toy volumes) or 'auto'")
    if requested != "cpu" and not requested.startswith("cuda"):
        raise MassError(f"unknown device {requested!r}; use auto, cpu, cuda or cuda:N")
    return requested


def resolve_model(settings: Sam2Settings) -> ResolvedModel:
    """Check the settings and the checkpoint (without building anything) and decide config, size and device."""
    if settings.model is not None and settings.model not in MODEL_SIZES:
        raise MassError(f"unknown SAM2 model size {settings.model!r}; use one of {', '.join(MODEL_SIZES)}")
    if settings.image_size < 32 or settings.image_size % 32:
        raise MassError(f"SAM2 image size must be a positive multiple of 32 (got {settings.image_size}); "
                        f"1024 is what the checkpoints were trained at")
    device = _device(settings.device)
    if settings.checkpoint is None:
        if not settings.allow_random_weights:
            raise MassError(f"the sam2 generator needs a checkpoint. {CHECKPOINT_GUIDANCE}")
        model = settings.model or "tiny"
        return ResolvedModel(_config_name(model, "sam2.1"), model, None, device)
    path = Path(settings.checkpoint).expanduser()
    if not path.is_file():
        raise MassError(f"SAM2 checkpoint not found: {path}. {CHECKPOINT_GUIDANCE}")
    found, family = _architecture(_read_state_dict(path))
    model = settings.model or _size_from_file_name(path) or found
    if model is None:
        raise MassError(f"cannot tell the SAM2 model size of {path}; pass it (--sam2-model "
                        f"{'|'.join(MODEL_SIZES)})")
    if found is not None and found != model:
        raise MassError(f"{path} holds a SAM2 '{found}' model but '{model}' was asked for; pass --sam2-model "
                        f"{found} (or leave it out to infer the size from the file)")
    return ResolvedModel(_config_name(model, family), model, path, device)


def _is_weight_mismatch(error: Exception) -> bool:
    """Whether a build error means the checkpoint's weights do not fit the config (not, say, out of memory):
    sam2 raises a bare RuntimeError for missing/unexpected keys, torch one about state_dict for wrong shapes."""
    return isinstance(error, KeyError) or not str(error) or "state_dict" in str(error)


class Sam2Backend:
    """A loaded SAM2 model (built on first use) with the two calls the generator makes."""

    def __init__(self, settings: Sam2Settings):
        self.settings = settings
        self.resolved = resolve_model(settings)
        self._predictor = None
        self._amg = None

    def _autocast(self):
        """bf16 autocast on CUDA (what SAM2 was released with); plain fp32 on CPU, where bf16 is much slower."""
        import torch

        if self.resolved.device.startswith("cuda"):
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _build(self) -> None:
        if self._predictor is not None:
            return
        from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator
        from sam2.build_sam import build_sam2_video_predictor

        resolved, size = self.resolved, self.settings.image_size
        if resolved.checkpoint is None:
            logger.warning("SAM2 is running with RANDOM weights: its masks are meaningless (test mode)")
        try:
            predictor = build_sam2_video_predictor(
                resolved.config, str(resolved.checkpoint) if resolved.checkpoint else None, device=resolved.device,
                hydra_overrides_extra=[f"++model.image_size={size}"])
        except FileNotFoundError as error:
            raise MassError(f"SAM2 checkpoint not found: {resolved.checkpoint}. {CHECKPOINT_GUIDANCE}") from error
        except (KeyError, RuntimeError) as error:
            if not _is_weight_mismatch(error):
                raise
            raise MassError(f"{resolved.checkpoint} does not fit SAM2 config {resolved.config} (model "
                            f"'{resolved.model}'){': ' + str(error) if str(error) else ''}. Pass the --sam2-model "
                            f"that matches the file, or use an official sam2.1_hiera_*.pt file") from error
        # sam2's own hole filling needs its optional CUDA extension; 3D clean-up is done by the generator instead
        predictor.fill_hole_area = 0
        amg = SAM2AutomaticMaskGenerator(
            predictor, points_per_side=self.settings.points_per_side,
            points_per_batch=self.settings.points_per_batch, pred_iou_thresh=self.settings.pred_iou_thresh,
            stability_score_thresh=self.settings.stability_score_thresh, box_nms_thresh=self.settings.box_nms_thresh,
            crop_n_layers=0, min_mask_region_area=0, output_mode="binary_mask")
        # the image predictor assumes 1024-pixel inputs when sizing its backbone features
        amg.predictor._bb_feat_sizes = [(size // 4, size // 4), (size // 8, size // 8), (size // 16, size // 16)]
        self._predictor, self._amg = predictor, amg
        logger.info("SAM2 %s (%s) built on %s at image size %d", resolved.model, resolved.config, resolved.device,
                    size)

    def automatic_masks(self, image: np.ndarray) -> list[SeedMask]:
        """SAM2's automatic masks of one (H, W, 3) uint8 slice, after its IoU, stability and NMS filters."""
        self._build()
        with self._autocast():
            records = self._amg.generate(np.ascontiguousarray(image))
        return [SeedMask(np.asarray(r["segmentation"], dtype=bool), float(r["predicted_iou"]),
                         float(r["stability_score"])) for r in records]

    @contextlib.contextmanager
    def open_frames(self, frames: np.ndarray) -> Iterator["Sam2Tracker"]:
        """A tracker over the (N, H, W, 3) uint8 frames, valid inside the `with` block.

        sam2's public video API reads frames only from a folder of JPEG files, so the frames are written to a
        temporary folder (quality 100, no chroma subsampling) that is removed on exit.
        """
        self._build()
        with tempfile.TemporaryDirectory(prefix="mass_sam2_frames_") as folder:
            write_jpeg_frames(frames, Path(folder))
            with self._autocast():
                state = self._predictor.init_state(video_path=folder)
            tracker = Sam2Tracker(self._predictor, state, self._autocast)
            try:
                yield tracker
            finally:
                tracker.release()

    def close(self) -> None:
        """Drop the model (and the GPU memory it holds)."""
        on_cuda = self._predictor is not None and self.resolved.device.startswith("cuda")
        self._predictor = self._amg = None
        if on_cuda:
            import torch

            torch.cuda.empty_cache()


class Sam2Tracker:
    """SAM2's video predictor on one stack of frames."""

    def __init__(self, predictor, state, autocast):
        self._predictor = predictor
        self._state = state
        self._autocast = autocast

    def propagate(self, seed_frame: int, masks: Sequence[np.ndarray], reverse: bool
                  ) -> Iterator[tuple[int, np.ndarray]]:
        """Track `masks` (each bool (H, W), given on `seed_frame`) frame by frame, from the seed to the last
        frame, or with `reverse` to the first one; yields (frame index, bool (len(masks), H, W)), the seed frame
        included. Each call starts from a clean state, so the two directions are independent."""
        with self._autocast():
            self._predictor.reset_state(self._state)
            for obj_id, mask in enumerate(masks):
                self._predictor.add_new_mask(self._state, seed_frame, obj_id, np.asarray(mask, dtype=bool))
            for frame_idx, _, logits in self._predictor.propagate_in_video(
                    self._state, start_frame_idx=seed_frame, reverse=reverse):
                yield int(frame_idx), (logits[:, 0] > 0).cpu().numpy()

    def release(self) -> None:
        if self._state is not None:
            self._predictor.reset_state(self._state)
            self._state = None


def write_jpeg_frames(frames: np.ndarray, folder: Path) -> None:
    """Write (N, H, W, 3) uint8 frames as folder/00000.jpg ... (the names sam2 sorts numerically)."""
    from PIL import Image

    for index, frame in enumerate(frames):
        Image.fromarray(np.ascontiguousarray(frame)).save(
            folder / f"{index:05d}.jpg", quality=JPEG_QUALITY, subsampling=0)
