"""Which differences between two plans make a model trained on one unusable on the other.

Used when a run is continued (everything that shapes the data or the network must be equal), when several
datasets are pooled in one pretraining run (grid, channel count, patch and network must agree) and when a
checkpoint is loaded for another dataset (grid and channel count must agree, and the dataset's channel layout
must be one the checkpoint was trained on).

A channel layout is the (modality, normalisation) of every channel, in order. Across datasets channel names are
not compared: they are labels a user chose ("PET" and "SUV" are the same kind of input). Each dataset is
normalised by its own plans during preprocessing, so datasets of different layouts can be pooled in pretraining.
"""
from __future__ import annotations

from mass_nn.planning.plans import ConfigurationPlan, Plans
from mass_nn.schema import to_dict

ChannelLayout = list[dict[str, str]]  # [{"modality": ..., "normalization": ...}] per channel, JSON-ready


def channel_layout(plans: Plans) -> ChannelLayout:
    """The (modality, normalisation) of each channel of `plans`, in channel order."""
    return [{"modality": c.modality, "normalization": c.normalization} for c in plans.channels]


def pool_channel_layouts(pool: list[Plans]) -> list[ChannelLayout]:
    """The distinct channel layouts of the plans in `pool`, in first-seen order."""
    layouts: list[ChannelLayout] = []
    for plans in pool:
        layout = channel_layout(plans)
        if layout not in layouts:
            layouts.append(layout)
    return layouts


def describe_layout(layout: ChannelLayout) -> str:
    """A layout as one short string, e.g. "[CT/ct_clip_zscore, PET/zscore_per_image]"."""
    return "[" + ", ".join(f"{c['modality']}/{c['normalization']}" for c in layout) + "]"


def layout_pool_differences(pool: list[ChannelLayout], candidate: Plans) -> list[str]:
    """Empty when the candidate's channel layout is one of `pool`; otherwise one line naming both."""
    layout = channel_layout(candidate)
    if layout in pool:
        return []
    known = " or ".join(describe_layout(p) for p in pool) or "none recorded"
    return [f"channel layout (modality/normalisation): {known} vs {describe_layout(layout)}"]


def _channel_summary(plans: Plans) -> list[dict]:
    keys = ("name", "modality", "normalization", "clip_lower", "clip_upper", "mean", "std")
    return [{k: getattr(c, k) for k in keys} for c in plans.channels]


def _grid_checks(reference: Plans, reference_plan: ConfigurationPlan, candidate: Plans,
                 candidate_plan: ConfigurationPlan) -> list[tuple[str, object, object]]:
    return [("target spacing (mm, zyx)", reference_plan.target_spacing_zyx_mm, candidate_plan.target_spacing_zyx_mm),
            ("number of input channels", len(reference.channels), len(candidate.channels))]


def _network_checks(reference_plan: ConfigurationPlan,
                    candidate_plan: ConfigurationPlan) -> list[tuple[str, object, object]]:
    return [("patch size (zyx)", reference_plan.patch_size_zyx, candidate_plan.patch_size_zyx),
            ("network", to_dict(reference_plan.network), to_dict(candidate_plan.network))]


def _lines(checks: list[tuple[str, object, object]]) -> list[str]:
    return [f"{what}: {a} vs {b}" for what, a, b in checks if a != b]


def plans_differences(reference: Plans, reference_configuration: str, candidate: Plans,
                      candidate_configuration: str, same_dataset: bool = True) -> list[str]:
    """Human-readable differences ("what: reference vs candidate"); empty when compatible.

    same_dataset=True: target spacing, channel count, channels (name, modality, normalisation and the
    normalisation statistics), patch and network must all be equal. same_dataset=False: target spacing, channel
    count and channel layout (modality, normalisation; names are not compared) must be equal.
    """
    if not same_dataset:
        return pooled_model_differences(reference, reference_configuration, [], candidate, candidate_configuration)
    reference_plan = reference.configuration(reference_configuration)
    candidate_plan = candidate.configuration(candidate_configuration)
    channels = ("channels (name, modality, normalisation)", _channel_summary(reference), _channel_summary(candidate))
    return _lines([*_grid_checks(reference, reference_plan, candidate, candidate_plan), channels,
                   *_network_checks(reference_plan, candidate_plan)])


def pretraining_pool_differences(reference: Plans, candidate: Plans, configuration: str) -> list[str]:
    """Differences that forbid pretraining on both datasets in one run: target spacing, channel count, patch and
    network of `configuration`. Channel names, modality and normalisation may differ."""
    reference_plan, candidate_plan = reference.configuration(configuration), candidate.configuration(configuration)
    return _lines(_grid_checks(reference, reference_plan, candidate, candidate_plan)
                  + _network_checks(reference_plan, candidate_plan))


def pooled_model_differences(reference: Plans, reference_configuration: str, pool: list[ChannelLayout],
                             candidate: Plans, candidate_configuration: str) -> list[str]:
    """Differences that forbid using a model trained with `reference` plans on the layouts in `pool` for
    `candidate`: target spacing and channel count must equal the reference's, and the candidate's channel layout
    must be one of `pool` (an empty pool falls back to the reference's own layout)."""
    layouts = pool or [channel_layout(reference)]
    return (_lines(_grid_checks(reference, reference.configuration(reference_configuration), candidate,
                                candidate.configuration(candidate_configuration)))
            + layout_pool_differences(layouts, candidate))
