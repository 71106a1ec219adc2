"""Log a trained model to MLflow, register it and decide champion vs challenger (stage `register`)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from pydantic import Field

from cxr.config.params import GateParams
from cxr.core import faults
from cxr.core.artifacts import Artifact, WithArtifacts
from cxr.core.atomic_files import sha256_file
from cxr.core.locking import registry_lock
from cxr.core.mlflow_store import client, quiet_mlflow
from cxr.evaluation.evaluate import EvaluationResult
from cxr.evaluation.external_sets import ExternalResult, champion_metrics_now, log_to_mlflow
from cxr.model.loading import METADATA_SHA256_TAG, MODEL_SHA256_TAG
from cxr.model.operating_points import mlflow_tags
from cxr.model.training import TrainResult
from cxr.registry.gate import decide_with_outside
from cxr.registry.mlflow_run import CARD_FILE, log_training_run, model_card, rounded
from cxr.registry.run_links import PREFECT_TAG_PREFIX, mlflow_run_url
from cxr.registry.versions import (
    CHAMPION_ALIAS,
    champion_history,
    champion_version,
    ensure_experiment,
    promote,
    undo_half_move,
    version_metrics,
    was_champion,
)

LINEAGE_TAGS = ("data_digest", "config_digest", "code_version")
DECISION_TAG = "promotion_decision"
MODEL_CARD_ARTIFACT = "model-card"


class RegistrationResult(WithArtifacts):
    model_name: str
    version: int
    champion: bool
    run_id: str
    model_uri: str
    decision: dict[str, Any]
    model_sha256: str = ""
    tracking_uri: str = ""
    created: bool = Field(False, description="this call registered the version (else it found it)")
    champion_version: int | None = None
    run_url: str | None = None

    def is_intact(self) -> bool:
        """Whether the registry still holds this version with this model file.

        A store can be deleted, replaced or restored from an older backup after a result was cached.
        """
        from mlflow.exceptions import MlflowException

        if not (self.model_sha256 and self.tracking_uri):
            return False
        try:
            tags = client(self.tracking_uri).get_model_version(self.model_name, str(self.version)).tags
        except MlflowException:
            return False
        return tags.get("model_sha256") == self.model_sha256


def _log_and_register(
    identity: dict[str, str],
    train: TrainResult,
    evaluation: EvaluationResult,
    lineage: dict[str, Any],
    name: str,
    tracking_uri: str,
    external: dict[str, ExternalResult],
) -> Any:  # noqa: ANN401 - mlflow ModelVersion
    """One MLflow run with everything about the model (`log_training_run`) and its external scores; the
    version is registered last."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    experiment_id = ensure_experiment(tracking_uri)
    with mlflow.start_run(
        experiment_id=experiment_id, run_name=f"{train.model_name}-{train.model_sha256[:8]}"
    ) as run:
        info = log_training_run(train, evaluation, lineage)
        log_to_mlflow(external)
        tags = {
            **{key: str(lineage.get(key, "")) for key in LINEAGE_TAGS},
            **identity,
            "model_name": train.model_name,
            "threshold": f"{train.threshold:.6f}",
            **mlflow_tags(train.operating_points, train.default_operating_point),
            **{f"test_{key}": str(value) for key, value in rounded(evaluation.metrics).items()},
        }
        mlflow_client = client(tracking_uri)
        if not mlflow_client.search_registered_models(f"name = '{name}'"):
            mlflow_client.create_registered_model(name)
        faults.kill_at("kill_before_version")
        return mlflow_client.create_model_version(
            name, source=info.model_uri, run_id=run.info.run_id, tags=tags, model_id=info.model_id
        )


def _card_of(
    model_version: Any,  # noqa: ANN401 - mlflow ModelVersion
    train: TrainResult,
    evaluation: EvaluationResult,
    lineage: dict[str, Any],
    tracking_uri: str,
    external: dict[str, ExternalResult],
) -> tuple[str, str | None]:
    """(the version's model card, its run's URL); the card is added to the run when it lacks one.

    Added after the version exists (the card names it), so a retry after a crash in between adds it.
    """
    mlflow_client = client(tracking_uri)
    run = mlflow_client.get_run(model_version.run_id)
    run_url = mlflow_run_url(tracking_uri, run.info.experiment_id, run.info.run_id)
    prefect = {key.removeprefix(PREFECT_TAG_PREFIX): value for key, value in run.data.tags.items()}
    links = {"MLflow run": f"`{run.info.run_id}` in `{tracking_uri}`" + (f" ({run_url})" if run_url else "")}
    if prefect.get("flow_run_id"):
        links["Prefect flow run"] = (
            f"`{prefect.get('flow_run_name')}` ({prefect.get('flow_run_url') or prefect['flow_run_id']})"
        )
    card = model_card(
        model_version.name, int(model_version.version), train, evaluation, lineage, links, external
    ).markdown()
    if CARD_FILE not in {entry.path for entry in mlflow_client.list_artifacts(run.info.run_id)}:
        mlflow_client.log_text(run.info.run_id, card, CARD_FILE)
    return card, run_url


def _identity(train: TrainResult) -> dict[str, str]:
    """The tags that say which model a version is: its network's and its model.json's digests.

    Both, so a run that only refits the metadata (operating points, domain score) registers a new version
    instead of finding the old one; `cxr.model.loading` checks both files of a download against them.
    """
    return {MODEL_SHA256_TAG: train.model_sha256, METADATA_SHA256_TAG: sha256_file(train.metadata_path)}


def _existing_version(name: str, identity: dict[str, str], tracking_uri: str) -> Any:  # noqa: ANN401
    """The version already registered with this identity (a retry or a rerun), if any."""
    matches = " and ".join(f"tags.{key} = '{value}'" for key, value in identity.items())
    found = client(tracking_uri).search_model_versions(f"name = '{name}' and {matches}")
    return min(found, key=lambda v: int(v.version)) if found else None


def _apply_gate(
    name: str,
    version: int,
    challenger: dict[str, Any],
    gate: GateParams,
    champion_scorer: Callable[[str], dict] | None,
    tracking_uri: str,
    external: dict[str, ExternalResult],
) -> dict[str, Any]:
    """Score the current champion, decide, then move the alias and record the decision (`promote`), or
    record the refusal.

    An alias already on this undecided version is a move of it that did not record its decision (a kill -9
    between the steps, or a `cxr promote` before any gate): it is decided against the champion before it;
    refused, a move that was not recorded as a promotion is undone.
    """
    current = champion_version(name, tracking_uri)
    left_on = current == version
    if left_on:
        earlier = [int(entry["version"]) for entry in champion_history(name, tracking_uri)]
        current = next((number for number in reversed(earlier) if number != version), None)
    champion_metrics = None
    scored_on = None
    if current is not None:
        champion_uri = f"models:/{name}/{current}"
        if champion_scorer is not None:
            champion_metrics, scored_on = champion_scorer(champion_uri), "current split"
        else:
            tags = client(tracking_uri).get_model_version(name, str(current)).tags
            champion_metrics, scored_on = version_metrics(tags), "champion's recorded metrics"
    faults.pause("pause_in_gate")
    outside = {key: result.challenger["metrics"] for key, result in external.items()}
    outside_champion = champion_metrics_now(external, current, name) if external else {}
    promoted, reason = decide_with_outside(challenger, champion_metrics, gate, (outside, outside_champion))
    decision = {
        "promoted": promoted,
        "reason": reason,
        "gate": gate.model_dump(),
        "challenger_version": version,
        "challenger": rounded(challenger),
        "champion_version": current,
        "champion": None if champion_metrics is None else rounded(champion_metrics),
        "champion_scored_on": scored_on,
        "external": {
            key: {"challenger": rounded(outside[key]), "champion": rounded(outside_champion[key] or {})}
            for key in outside
        },
    }
    if promoted and gate.require_approval:  # a person signs off first (cxr.registry.approval moves the alias)
        decision.update(promoted=False, awaiting_approval=True, reason=f"{reason}; awaiting sign-off")
    elif promoted:
        # Marks a decision recorded after its alias move (the order since promotion became all-or-nothing).
        decision["alias_moved"] = True
        promote(name, version, reason, tracking_uri, version_tags={DECISION_TAG: json.dumps(decision)})
        return decision
    if left_on and "promoted_at" not in client(tracking_uri).get_model_version(name, str(version)).tags:
        undo_half_move(name, version, current, tracking_uri)
    client(tracking_uri).set_model_version_tag(name, str(version), DECISION_TAG, json.dumps(decision))
    return decision


def _promotion_unfinished(name: str, model_version: Any, decision: dict[str, Any], tracking_uri: str) -> bool:  # noqa: ANN401
    """Whether a recorded "promoted" decision never got its alias: recorded before the move (the order of
    earlier releases) and the version neither champion now nor ever left by a rollback or a later champion."""
    if not decision["promoted"] or decision.get("alias_moved"):
        return False
    return not was_champion(name, int(model_version.version), tracking_uri)


def register_model(
    train: TrainResult,
    evaluation: EvaluationResult,
    *,
    lineage: dict[str, Any],
    registered_model_name: str,
    tracking_uri: str,
    gate: GateParams,
    champion_scorer: Callable[[str], dict] | None = None,
    external: dict[str, ExternalResult] | None = None,
) -> RegistrationResult:
    """Register the trained model as a new version and promote it to champion if it passes the gate.

    Idempotent per model file and metadata: a version already registered with both digests is reused, and its
    recorded decision too, so a retry after a partial failure neither duplicates nor re-decides.
    `champion_scorer(model_uri)` re-scores the champion on the challenger's split; without it the
    champion's recorded test metrics are compared; `external` sets must not get worse (`cxr.registry.gate`). Concurrent runs take turns (an inter-process lock
    per store and model), so each gate sees the champion the previous registration left.
    """
    quiet_mlflow()
    faults.fail_first("registry")
    faults.hang("registry")
    name, external = registered_model_name, external or {}
    with registry_lock(tracking_uri, name):
        identity = _identity(train)
        existing = _existing_version(name, identity, tracking_uri)
        model_version = existing or _log_and_register(
            identity, train, evaluation, lineage, name, tracking_uri, external
        )
        card, run_url = _card_of(model_version, train, evaluation, lineage, tracking_uri, external)
        version = int(model_version.version)
        recorded = model_version.tags.get(DECISION_TAG)
        if not recorded:
            decision = _apply_gate(
                name, version, evaluation.metrics, gate, champion_scorer, tracking_uri, external
            )
        else:
            decision = json.loads(recorded)
            if _promotion_unfinished(name, model_version, decision, tracking_uri):
                decision["alias_moved"] = True
                promote(
                    name,
                    version,
                    decision["reason"],
                    tracking_uri,
                    version_tags={DECISION_TAG: json.dumps(decision)},
                )
        current = champion_version(name, tracking_uri)
    return RegistrationResult(
        model_name=name,
        version=version,
        champion=current == version,
        run_id=model_version.run_id,
        model_uri=f"models:/{name}/{version}",
        decision=decision,
        model_sha256=train.model_sha256,
        tracking_uri=tracking_uri,
        created=existing is None,
        champion_version=current,
        run_url=run_url,
        artifacts=[
            Artifact(key=MODEL_CARD_ARTIFACT, markdown=card, description="Model card of this version")
        ],
    )


def decision_markdown(result: RegistrationResult) -> str:
    """Both models' numbers side by side and the outcome."""
    decision = result.decision
    champion = decision.get("champion") or {}
    champion_label = (
        f"champion v{decision['champion_version']}" if decision.get("champion_version") else "champion"
    )
    rows = "\n".join(
        f"| {key} | {_cell(value)} | {_cell(champion.get(key))} |"
        for key, value in decision["challenger"].items()
    ) + "".join(
        f"\n| {name}: auc | {_cell(pair['challenger'].get('auc'))} | {_cell(pair['champion'].get('auc'))} |"
        for name, pair in decision.get("external", {}).items()
    )
    outcome = f"promoted to `{CHAMPION_ALIAS}`" if decision["promoted"] else "not promoted"
    return (
        f"# {result.model_name} v{result.version}: {outcome}\n\n{decision['reason']}.\n\n"
        f"Gate: `{json.dumps(decision['gate'])}`; champion scored on: {decision.get('champion_scored_on') or '-'}.\n\n"
        f"| metric | challenger v{result.version} | {champion_label} |\n|---|---|---|\n{rows}\n"
    )


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
