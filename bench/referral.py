"""Referral measure: does a referral band fitted on some patients hold on others?

A labelled set is split at random into two patient-disjoint halves (stratified by class), many times. On
the fit half, as `cxr calibrate --make-default` does, the site's `sensitivity-0.95` point becomes the
threshold and a band is fitted around it by each method (`cxr.model.referral_fit`); on the check half the
images out of domain or in the band are not answered alone, and the rates on the rest are compared with
the targets (`TARGETS`).

    python -m bench.referral --model models:/cxr-pneumonia/1 --data ../shared/data/kaggle_test_dev \
        [--repeats 40] [--json]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.orchestration import CHAMPION
from bench.suite import Context

# What the images answered alone must reach on the check half, and the most that may be set aside.
TARGETS = {"sensitivity": 0.95, "specificity": 0.85, "accuracy": 0.93, "not_answered": 0.10}
# Method name -> fit_referral_band keywords.
METHODS: dict[str, dict[str, Any]] = {
    "observed": {"method": "observed", "resamples": 0},
    "wilson": {"method": "wilson", "resamples": 0},
    **{f"bootstrap-{holds:g}": {"method": "bootstrap", "holds": holds} for holds in (0.5, 0.7, 0.8, 0.9)},
}


@dataclass
class Scored:
    """A labelled set scored by one model: P(pneumonia), labels, the domain score's verdict, patient ids."""

    p: np.ndarray
    y: np.ndarray
    in_domain: np.ndarray
    patients: np.ndarray


def score_folder(model: str, data_dir: Path) -> Scored:
    """Every accepted image of a labelled folder, in the order of its batches (by sha256)."""
    import pandas as pd

    from cxr.data.shards import read_labels
    from cxr.evaluation.domain import DomainGuard, DomainScorer
    from cxr.evaluation.domain_fit import split_outputs
    from cxr.evaluation.evaluate_folder import SPLIT, labelled_batches
    from cxr.evaluation.scoring import min_image_side, pneumonia_index
    from cxr.model.loading import load_model_with_metadata, resolve_model
    from cxr.model.networks import PNEUMONIA_INDEX  # the shards' label of pneumonia

    network, metadata = load_model_with_metadata(resolve_model(model))
    guard = DomainGuard.from_metadata(metadata)
    if guard is None:
        raise RuntimeError(f"{model} has no domain score")
    with labelled_batches(Path(data_dir), int(metadata["image_size"]), min_image_side(metadata)) as (
        ingested,
        batches,
    ):
        softmax, features = split_outputs(DomainScorer(network, guard), batches, SPLIT)
        labels = read_labels(batches.shards(SPLIT))
    manifest = pd.read_parquet(ingested.manifest_path).sort_values("sha256", kind="stable")
    patients = manifest["patient_id"].fillna(manifest["path"]).astype(str).to_numpy()
    return Scored(
        softmax[:, pneumonia_index(metadata)],
        labels == PNEUMONIA_INDEX,
        guard.in_domain(guard.scores(features)),
        patients,
    )


def patient_halves(scored: Scored, rng: np.random.Generator) -> np.ndarray:
    """A mask of about half the patients of each class (a patient's images stay together)."""
    first = np.zeros(scored.y.size, bool)
    for label in (True, False):
        patients = np.unique(scored.patients[scored.y == label])
        chosen = rng.permutation(patients)[: (patients.size + 1) // 2]
        first |= (scored.y == label) & np.isin(scored.patients, chosen)
    return first


def check(scored: Scored, mask: np.ndarray, threshold: float, band: Any) -> dict[str, float]:  # noqa: ANN401
    """Not-answered share and the rates on the images of `mask` answered alone."""
    from cxr.evaluation.risk_coverage import answered_metrics

    answered = answered_metrics(scored.p[mask], scored.y[mask], threshold, band, scored.in_domain[mask])
    rates = {rate: answered[rate]["value"] for rate in ("sensitivity", "specificity", "accuracy")}
    rates = {rate: np.nan if value is None else value for rate, value in rates.items()}
    return {**rates, "not_answered": 1.0 - (answered["coverage"]["value"] or 0.0)}


def split_half_transfer(
    scored: Scored, *, methods: dict[str, dict[str, Any]] = METHODS, repeats: int = 20, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Per method: the mean check-half rates over `repeats` random patient halves, and `targets_met`, the share
    of repeats in which the check half reached every target of TARGETS."""
    from cxr.model.referral_fit import fit_referral_band
    from cxr.registry.site_calibration import site_points

    rng = np.random.default_rng(seed)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in methods}
    for _ in range(repeats):
        fit = patient_halves(scored, rng)
        point = next(iter(site_points(scored.p[fit], scored.y[fit], "half", 0.95).values()))
        for name, keywords in methods.items():
            band = fit_referral_band(
                scored.p[fit],
                scored.y[fit],
                point.threshold,
                target_sensitivity=TARGETS["sensitivity"],
                target_specificity=TARGETS["specificity"],
                max_referral=0.3,
                seed=int(rng.integers(1 << 31)),
                **keywords,
            )
            runs[name].append(check(scored, ~fit, point.threshold, band))
    return {name: _summary(rows) for name, rows in runs.items()}


def _summary(rows: list[dict[str, float]]) -> dict[str, float]:
    """Mean check-half rates, the share of repeats meeting each target (`met_<target>`) and all (`targets_met`)."""
    met = {
        key: np.array([row[key] <= bound if key == "not_answered" else row[key] >= bound for row in rows])
        for key, bound in TARGETS.items()
    }
    means = {key: float(np.nanmean([row[key] for row in rows])) for key in rows[0]}
    return {
        **{key: round(value, 4) for key, value in means.items()},
        **{f"met_{key}": round(float(hits.mean()), 4) for key, hits in met.items()},
        "targets_met": round(float(np.mean(np.logical_and.reduce(list(met.values())))), 4),
    }


def measure_referral(context: Context) -> dict[str, Any]:
    """The champion `cxr train` registered, on `train_dir`: patient halves, bands fitted on one and checked on
    the other, for the observed rates and the run's bootstrap rule."""
    scored = score_folder(CHAMPION, context.data.train_dir)
    methods = {name: METHODS[name] for name in ("observed", "bootstrap-0.8")}
    results = split_half_transfer(scored, methods=methods, repeats=max(2, context.sizes.repeats))
    return {
        "referral_files": int(scored.y.size),
        "referral_observed_targets_met": results["observed"]["targets_met"],
        "referral_bootstrap_targets_met": results["bootstrap-0.8"]["targets_met"],
        "referral_bootstrap_not_answered": results["bootstrap-0.8"]["not_answered"],
        "referral_methods": results,
    }


def main(argv: list[str] | None = None) -> None:
    from cxr.core.state_folder import configure_environment

    configure_environment()
    parser = argparse.ArgumentParser(prog="python -m bench.referral", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model file or models:/ URI (with a domain score)")
    parser.add_argument("--data", required=True, type=Path, help="labelled folder")
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    scored = score_folder(args.model, args.data)
    results = split_half_transfer(scored, repeats=args.repeats, seed=args.seed)
    if args.json:
        print(json.dumps({"n": int(scored.y.size), "methods": results}))
        return
    for name, summary in results.items():
        print(name, summary)


if __name__ == "__main__":
    main()
