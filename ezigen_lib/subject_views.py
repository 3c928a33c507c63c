"""What the Sampler's and Edit's reports and warnings read of the subject patches on a MODEL: a read-only view
of each (strength, images, its mask, where it acted), so no report pokes into the patch objects."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .input_checks import InputValueError
from .inject import subject_injections
from .regions import share_outside

NO_EDIT_SUBJECT = ("The MODEL carries no EZIGen patch (connect Patch UNet Attention): editing without a "
                   "subject.")


@dataclass(frozen=True)
class SubjectView:
    strength: float
    images: int
    resolution: int
    region: torch.Tensor | None  # the mask (masks, H, W), or None: everywhere
    acted: bool  # switched on in a model call since the reach was reset
    acted_share: float  # the share of the image it acted on since then (see placement.Reach.share)

    @property
    def mask_share(self) -> float:
        """The share of the image its mask covers (1 without one)."""
        return 1.0 if self.region is None else float(self.region.mean())


def subject_views(model) -> list[SubjectView]:
    """The subject patches of `model`, in patch order, as they stand now."""
    return [SubjectView(p.strength, p.subject.image_count, p.subject.resolution, p.placement.mask, p.reach.acted,
                        p.reach.share(p.placement.mask))
            for p in subject_injections(model)]


def subject_reports(model) -> list[dict]:
    """What the Sampler and Edit report of each subject patch on `model`, in patch order: its mask's share
    of the image, and `acted_share`, the share it acted on in the runs since `reset_subject_reach`."""
    return [{"strength": v.strength, "images": v.images, "resolution": v.resolution,
             "region": "everywhere" if v.region is None else {"masks": len(v.region),
                                                             "share": round(float(v.region.mean()), 4)},
             "acted_share": round(v.acted_share, 4)}
            for v in subject_views(model)]


def edit_subject_reports(model, mask: torch.Tensor) -> tuple[list[dict], list[str]]:
    """Each subject's report, with the share of its region outside the edit mask (allowed: it acts only
    where the edit regenerates; reported so a misplaced mask is seen), and the warnings."""
    views = subject_views(model)
    warnings = [] if views else [NO_EDIT_SUBJECT]
    subjects = subject_reports(model)
    for k, (view, report) in enumerate(zip(views, subjects), start=1):
        if view.region is None:
            continue
        outside = share_outside(view.region, mask)
        report["outside_edit_mask"] = round(outside, 4)
        if outside > 0.005:
            warnings.append(f"{outside:.0%} of subject {k}'s mask lies outside the edit mask: the subject acts only "
                            "inside the edit mask.")
    return subjects, warnings


def reach_warnings(model) -> list[str]:
    """A warning for each subject that acted, but on visibly less of the image than its mask covers
    (a subject the split never switched on is not one: the Sampler says so itself)."""
    warnings = []
    for k, v in enumerate(subject_views(model), start=1):
        if v.strength == 0 or not v.acted:
            continue
        share, acted = v.mask_share, v.acted_share
        if share - acted > 0.005:
            covers = "its mask covers" if v.region is not None else "without a mask it would act on"
            warnings.append(f"Subject {k} acted on {acted:.0%} of the image although {covers} {share:.0%}: the model "
                            "evaluated the rest without it (conditioning areas such as ConditioningSetArea or mask "
                            "bounds).")
    return warnings


def require_region_batches(model, batch: int) -> None:
    """Refuse, before sampling, subject masks that cannot be matched to the latent batch."""
    for k, v in enumerate(subject_views(model), start=1):
        if v.region is not None and len(v.region) not in (1, batch):
            raise InputValueError(f"Subject {k}'s mask holds {len(v.region)} masks but the latent batch is {batch}: "
                                  "give its Patch UNet Attention one mask, or one mask per latent.")
