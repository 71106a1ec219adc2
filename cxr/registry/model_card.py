"""The model card of a registered version: what it is, what it saw, how it scores, where not to trust it."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from cxr import CLASSES

# Threshold metrics shown per operating point (with their CIs where the evaluation has them).
CARD_METRICS = ("sensitivity", "specificity", "accuracy", "precision", "npv", "f1")
RANKING_METRICS = ("auc", "pr_auc")
SHIFT_METRICS = ("auc", "sensitivity", "specificity", "accuracy")
INTENDED_USE = (
    "Decision support: flag frontal chest X-rays that may show pneumonia so that a clinician reads them "
    "sooner. It ranks and labels images; it does not diagnose, and every image still needs a clinician's read. "
    "Research use until validated on the images of the site that deploys it."
)
KNOWN_LIMITS = (
    "Test metrics come from a holdout drawn from the same image pool as training: they flatter. Images from "
    "another hospital, scanner or population can score much lower (specificity first); measure on local "
    "images before relying on any operating point.",
    "Only the populations, views and scanners in the training data are covered; anything else is untested.",
    "Two classes only (pneumonia, normal): bacterial and viral pneumonia are not told apart, and other "
    "findings (effusion, tuberculosis, devices, tumours) are not detected and may be labelled either way.",
    "Images are stretched to a square of the model's input size (aspect ratio not kept); small findings can be lost.",
    "Probabilities are the network's softmax and are not calibrated: compare them with the operating "
    "point's threshold, not with 0.5.",
    "Grad-CAM heat maps show where the network looked, not where disease is.",
)


class PointResult(BaseModel):
    """Test metrics of the model at one operating point."""

    threshold: float
    rule: str = ""
    metrics: dict[str, Any]
    ci: dict[str, list[float] | None] = Field(default_factory=dict)


class ModelCard(BaseModel):
    """Everything the card says, gathered by the register stage."""

    model_name: str
    version: int
    architecture: str
    model_sha256: str
    image_size: int
    data_dir: str
    data_digest: str
    images: dict[str, int] = Field(default_factory=dict, description="accepted / quarantined files")
    split_counts: dict[str, dict[str, int]]
    reviewed: dict[str, int] = Field(
        default_factory=dict, description="`cxr.data.provenance.reviewed_summary` of the split"
    )
    evaluation_split: str
    evaluation_n: int
    operating_points: dict[str, PointResult]
    default_operating_point: str
    shift: list[dict[str, Any]] | None = Field(None, description="rows: {'shift': name, <metric>: value}")
    links: dict[str, str] = Field(default_factory=dict, description="label -> URL or id")
    external: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="external set -> `cxr.evaluation.external_sets.ExternalResult.summary()`",
    )
    referral: dict[str, Any] = Field(
        default_factory=dict,
        description="{band: model.json's `referral`, answered, curve: `EvaluationResult.referral`}",
    )

    def markdown(self) -> str:
        sections = [
            f"# Model card: {self.model_name} v{self.version}",
            self._overview(),
            f"## Intended use\n\n{INTENDED_USE}",
            self._data(),
            self._metrics(),
            self._referral(),
            self._shift(),
            self._external(),
            "## Known limits\n\n" + "\n".join(f"- {limit}" for limit in KNOWN_LIMITS),
        ]
        return "\n\n".join(sections) + "\n"

    def _overview(self) -> str:
        lines = [
            f"- architecture `{self.architecture}`; input: one grey image stretched to "
            f"{self.image_size}x{self.image_size} px; output: P(pneumonia) and a label at an operating point",
            f"- model file sha256 `{self.model_sha256}`",
            f"- default operating point: `{self.default_operating_point}`",
        ]
        lines += [f"- {label}: {value}" for label, value in self.links.items()]
        return "\n".join(lines)

    def _data(self) -> str:
        header = "| split | " + " | ".join(CLASSES) + " | total |\n|---|" + "---|" * (len(CLASSES) + 1)
        rows = [
            f"| {split} | "
            + " | ".join(str(counts.get(label, 0)) for label in CLASSES)
            + f" | {sum(counts.values())} |"
            for split, counts in self.split_counts.items()
        ]
        files = ", ".join(f"{key} {value}" for key, value in self.images.items())
        return (
            f"## Data and split\n\nImages from `{self.data_dir}` (content digest `{self.data_digest[:16]}`"
            f"{'; files ' + files if files else ''}), split by patient where the file names identify one.\n\n"
            + "\n".join([header, *rows])
            + self._reviewed()
        )

    def _reviewed(self) -> str:
        if not self.reviewed.get("images"):
            return ""
        seen = self.reviewed
        return (
            f"\n\nLearned from {seen['in_train'] + seen['in_valid']} images that reviewers labelled after a model "
            f"referred them ({seen['in_train']} train, {seen['in_valid']} valid, {seen['in_test']} test); "
            f"the referring model had answered {seen['answered_differently']} of them differently."
        )

    def _metrics(self) -> str:
        header = (
            "| operating point | threshold | "
            + " | ".join(CARD_METRICS)
            + " |\n|---|---|"
            + "---|" * len(CARD_METRICS)
        )
        rows = [
            f"| {name}{' (default)' if name == self.default_operating_point else ''} | {point.threshold:.4f} | "
            + " | ".join(_with_ci(point.metrics.get(key), point.ci.get(key)) for key in CARD_METRICS)
            + " |"
            for name, point in self.operating_points.items()
        ]
        default = self.operating_points[self.default_operating_point]
        ranking = ", ".join(
            f"{key} {_with_ci(default.metrics.get(key), default.ci.get(key))}" for key in RANKING_METRICS
        )
        rules = [f"- `{name}`: {point.rule}" for name, point in self.operating_points.items() if point.rule]
        return (
            f"## Metrics\n\nOn the `{self.evaluation_split}` split ({self.evaluation_n} images), 95 % bootstrap "
            f"confidence intervals in brackets. Threshold-free: {ranking}.\n\n"
            + "\n".join([header, *rows])
            + ("\n\nHow each threshold was chosen:\n" + "\n".join(rules) if rules else "")
        )

    def _referral(self) -> str:
        from cxr.evaluation.risk_coverage import referral_markdown
        from cxr.model.referral import ReferralBand
        from cxr.model.referral_fit import describe

        if not self.referral.get("answered"):
            return "## Referral\n\nThe evaluation of this version recorded no coverage."
        band = self.referral.get("band")
        fitted = (
            f"Fitted band: {describe(ReferralBand.model_validate(band))}."
            if band
            else "This model has no referral band: it answers every in-domain image alone."
        )
        measured = referral_markdown(self.referral["answered"], self.referral["curve"])
        return f"{measured.replace('## Referral', f'## Referral (on the `{self.evaluation_split}` split)')}\n{fitted}"

    def _shift(self) -> str:
        if not self.shift:
            return (
                "## Acquisition shift\n\nNot measured for this version. `python -m bench.shift` scores it on "
                "copies of its test split with acquisition-like changes."
            )
        header = "| shift | " + " | ".join(SHIFT_METRICS) + " |\n|---|" + "---|" * len(SHIFT_METRICS)
        rows = [
            f"| {row.get('shift', '?')} | "
            + " | ".join(_with_ci(row.get(key), None) for key in SHIFT_METRICS)
            + " |"
            for row in self.shift
        ]
        return "## Acquisition shift\n\n" + "\n".join([header, *rows])

    def _external(self) -> str:
        from cxr.evaluation.external_sets import ExternalResult, comparison_markdown

        if not self.external:
            return (
                "## External validation\n\nNo external set was given to the run that made this version "
                "(`cxr train --external NAME=DIR`)."
            )
        sections = [
            f"### `{name}` ({summary['n']} images from `{summary['data_dir']}`, digest "
            f"`{summary['data_digest'][:16]}`)\n\n{comparison_markdown(ExternalResult(**summary))}"
            for name, summary in self.external.items()
        ]
        return (
            "## External validation\n\nLabelled images from elsewhere, never trained on, scored with this "
            "version and the champion of that moment; 95 % bootstrap CIs in brackets.\n\n"
            + "\n\n".join(sections)
        )


def _with_ci(value: float | None, ci: list[float] | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
