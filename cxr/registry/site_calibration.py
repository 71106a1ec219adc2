"""Site calibration: a site's own labelled images set named operating points (`SITE:...`) of a registered
model, without retraining.

A registered version's files never change (its sha256 is checked on every download), so the points reach
every client, stock MLflow included, as a NEW version: the same `model.keras` (same sha256) with a
`model.json` and MLmodel metadata that hold the added points, tagged `calibrated_from` (the source
version) and `calibration_site`. The source version is left as it was. When the source is the champion,
the `champion` alias moves to the new version: the network is the same, so there is nothing to gate, and
`@champion` then answers `params={"operating_point": "SITE:sensitivity-0.95"}`.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from cxr.config.params import EXTERNAL_NAME
from cxr.core.atomic_files import sha256_file, write_atomically
from cxr.core.errors import DataError, ModelError
from cxr.core.locking import registry_lock
from cxr.core.mlflow_store import client
from cxr.evaluation.evaluate import predict_split
from cxr.evaluation.evaluate_folder import SPLIT, labelled_batches
from cxr.evaluation.scoring import min_image_side
from cxr.model.loading import (
    KERAS_FILE,
    METADATA_FILE,
    METADATA_SHA256_TAG,
    load_model_with_metadata,
    registered_version,
    resolve_model,
)
from cxr.model.operating_points import (
    OperatingPoint,
    mlflow_tags,
    point_at,
    sensitivity_threshold,
    youden_threshold,
)
from cxr.model.referral_fit import band_for, targets_of
from cxr.model.training import TrainResult
from cxr.registry.versions import (
    MODEL_ARTIFACT,
    champion_version,
    ensure_experiment,
    now_iso,
    promote,
)

# The target of the `SITE:sensitivity-T` point a run's `--calibrate-on` makes the default, as the model's own.
DEFAULT_SITE_SENSITIVITY = 0.95

# Tags of the source version that describe its own history, not the model: a new version starts without them.
HISTORY_TAGS = ("promotion_decision", "promotion_reason", "promoted_at", "rollback_reason", "rolled_back_at")


def site_points(
    p_pneumonia: np.ndarray, is_pneumonia: np.ndarray, site: str, target_sensitivity: float
) -> dict[str, OperatingPoint]:
    """`SITE:sensitivity-T` (the best specificity reaching sensitivity T on the site's images, mid-logit of
    ties, as the model's own `sensitivity-0.95`) and `SITE:balanced` (Youden's J), with the site's rates."""
    p, y = np.asarray(p_pneumonia, dtype=np.float64), np.asarray(is_pneumonia, dtype=bool)
    if y.all() or not y.any():
        raise DataError(f"calibrating site {site} needs images of both classes")
    target = sensitivity_threshold(p, y, target_sensitivity)
    rule = f"site {site}: max-specificity-at-sensitivity>={target_sensitivity:g}, mid-logit of ties"
    return {
        f"{site}:sensitivity-{target_sensitivity:g}": point_at(p, y, target, rule),
        f"{site}:balanced": point_at(p, y, youden_threshold(p, y), f"site {site}: youden-j"),
    }


def with_site_points(
    metadata: dict[str, Any],
    site: str,
    points: dict[str, OperatingPoint],
    record: dict[str, Any],
    default: str | None,
) -> dict[str, Any]:
    """`model.json` with the site's points replacing any earlier ones of that site, except the point the default
    still names (a site recalibrated at another target keeps answering as before); `default` (a point name or
    None: unchanged) becomes the default point; the single `threshold` is always the default point's, and the
    referral band follows it when it is one of the site's new points."""
    from cxr.model.operating_points import (
        operating_points,  # imported here: loading the flow must not load MLflow
    )

    current, current_default = operating_points(metadata)  # a model with one `threshold` has point `default`
    kept = {
        name: point
        for name, point in current.items()
        if not name.startswith(f"{site}:") or (name == current_default and default is None)
    }
    chosen = current_default if default is None else default
    updated = {
        **metadata,
        "operating_points": {**kept, **{name: point.model_dump() for name, point in points.items()}},
        "default_operating_point": chosen,
        "site_calibrations": {**metadata.get("site_calibrations", {}), site: record},
    }
    updated["threshold"] = updated["operating_points"][chosen]["threshold"]
    if "rule" in updated["operating_points"][chosen]:
        updated["threshold_rule"] = updated["operating_points"][chosen]["rule"]
    # The site's band follows whenever the threshold in force is the site point it was fitted around: a new
    # default, or the point the default names recalibrated at its own target.
    if (
        chosen in points
        and record.get("referral")
        and record["referral"]["threshold"] == updated["threshold"]
    ):
        updated["referral"] = record["referral"]
    return updated


def calibrate_on_folder(
    model_path: Path, data_dir: Path, site: str, target_sensitivity: float
) -> tuple[dict[str, OperatingPoint], dict[str, Any]]:
    """(the site's points, a record of the images they were chosen on) for a model file and a labelled folder."""
    network, metadata = load_model_with_metadata(model_path)
    with labelled_batches(data_dir, int(metadata["image_size"]), min_image_side(metadata)) as (
        ingested,
        batches,
    ):
        prob, is_pneumonia = predict_split(network, batches, SPLIT, metadata)
    points = site_points(prob, is_pneumonia, site, target_sensitivity)
    # The band the model gets when the site's first point becomes its default: fitted on the site's images.
    band = band_for(
        prob,
        is_pneumonia,
        next(iter(points.values())).threshold,
        targets_of(metadata.get("referral")),
        fitted_on=f"site {site}",
    )
    record = {
        "data_dir": str(data_dir.resolve()),
        "data_digest": ingested.digest,
        "n": len(prob),
        "per_class": ingested.per_class,
        "target_sensitivity": target_sensitivity,
        "referral": band.model_dump(),
        "at": now_iso(),
    }
    return points, record


def with_site_default(trained: TrainResult, site: str, data_dir: Path, out_dir: Path) -> TrainResult:
    """`trained` as a copy in `out_dir` whose model.json adds `site`'s points and makes `SITE:sensitivity-0.95`
    the default (`cxr train --calibrate-on`); the network file is the same bytes."""
    points, record = calibrate_on_folder(Path(trained.model_path), data_dir, site, DEFAULT_SITE_SENSITIVITY)
    default = next(iter(points))
    metadata = json.loads(Path(trained.metadata_path).read_text())
    updated = with_site_points(metadata, site, points, record, default)
    out_dir.mkdir(parents=True, exist_ok=True)
    model_path, metadata_path = out_dir / KERAS_FILE, out_dir / METADATA_FILE
    write_atomically(model_path, lambda partial: shutil.copyfile(trained.model_path, partial))
    write_atomically(metadata_path, lambda partial: partial.write_text(json.dumps(updated, indent=2)))
    return trained.model_copy(
        update={
            "model_path": str(model_path),
            "metadata_path": str(metadata_path),
            "threshold": points[default].threshold,
            "threshold_rule": points[default].rule,
            "operating_points": updated["operating_points"],
            "default_operating_point": default,
            "artifacts": [],
        }
    )


def calibrate_registered(
    model_uri: str,
    data_dir: Path,
    site: str,
    *,
    target_sensitivity: float,
    tracking_uri: str,
    make_default: bool = False,
) -> dict[str, Any]:
    """Choose `SITE:` points on `data_dir` for the registered version `model_uri` and register them as a new
    version (see the module docstring); returns what `cxr calibrate --json` prints."""
    if not EXTERNAL_NAME.fullmatch(site):
        raise DataError(f"site name {site!r}: use letters, digits, _ and - (at most 40)")
    if not 0 < target_sensitivity <= 1:
        raise DataError(f"target sensitivity {target_sensitivity} must be in (0, 1]")
    if not model_uri.startswith("models:/"):
        raise ModelError(
            f"cxr calibrate adds points to a registered version: give a models:/ URI, not {model_uri}"
        )
    if not Path(data_dir).is_dir():
        raise DataError(f"data folder not found: {data_dir}")
    source = registered_version(model_uri, tracking_uri)
    model_path = resolve_model(f"models:/{source.name}/{source.version}", tracking_uri)
    metadata = json.loads(model_path.with_name(METADATA_FILE).read_text())
    points, record = calibrate_on_folder(model_path, Path(data_dir), site, target_sensitivity)
    record["calibrated_from"] = int(source.version)
    updated = with_site_points(metadata, site, points, record, next(iter(points)) if make_default else None)
    with registry_lock(tracking_uri, source.name):
        version, run_id = _register_calibrated(source, model_path, updated, site, tracking_uri)
        champion = champion_version(source.name, tracking_uri)
        if champion == int(source.version):
            promote(source.name, version, f"site calibration {site} of v{source.version}", tracking_uri)
            champion = version
    return {
        "model_name": source.name,
        "model_version": version,
        "model_uri": f"models:/{source.name}/{version}",
        "calibrated_from": int(source.version),
        "site": site,
        "operating_points": {name: point.model_dump() for name, point in points.items()},
        "default_operating_point": updated["default_operating_point"],
        "referral": updated.get("referral"),  # the band in force in the new version
        "champion": champion == version,
        "mlflow_run_id": run_id,
        **{key: record[key] for key in ("data_dir", "data_digest", "n", "per_class")},
    }


def _register_calibrated(
    source: Any,  # noqa: ANN401 - mlflow ModelVersion
    model_path: Path,
    metadata: dict[str, Any],
    site: str,
    tracking_uri: str,
) -> tuple[int, str]:
    """(new version, its MLflow run id): the same network with `metadata` as a pyfunc, in a run of its own."""
    import mlflow

    from cxr.registry.pyfunc_logging import log_pyfunc_model

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    sha256 = source.tags.get("model_sha256", "")
    tags = {key: value for key, value in source.tags.items() if key not in HISTORY_TAGS}
    tags |= mlflow_tags(metadata["operating_points"], metadata["default_operating_point"])
    tags |= {
        "calibrated_from": str(source.version),
        "calibration_site": site,
        "threshold": f"{metadata['threshold']:.6f}",
    }
    with tempfile.TemporaryDirectory(prefix="cxr-calibrate-") as staging:
        keras_path, metadata_path = Path(staging) / KERAS_FILE, Path(staging) / METADATA_FILE
        shutil.copyfile(model_path, keras_path)
        metadata_path.write_text(json.dumps(metadata, indent=2))
        tags[METADATA_SHA256_TAG] = sha256_file(metadata_path)
        run_name = f"calibrate-{site}-v{source.version}"
        with mlflow.start_run(experiment_id=ensure_experiment(tracking_uri), run_name=run_name) as run:
            mlflow.set_tags(
                {"calibrated_from": f"models:/{source.name}/{source.version}", "calibration_site": site}
            )
            mlflow.log_dict(metadata["site_calibrations"][site], f"calibration-{site}.json")
            info = log_pyfunc_model(keras_path, metadata_path, model_sha256=sha256, name=MODEL_ARTIFACT)
        created = client(tracking_uri).create_model_version(
            source.name, source=info.model_uri, run_id=run.info.run_id, tags=tags, model_id=info.model_id
        )
    return int(created.version), run.info.run_id
