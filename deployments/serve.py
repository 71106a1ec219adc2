"""Serve the `retrain` flow as two deployments: `nightly` (cron) and `on-new-data` (event-triggered), and,
when asked (`review_every_s`), the `review-sync` flow beside them (Label Studio push and pull on an interval).

`on-new-data` runs when `cxr watch` emits `cxr.data.arrived`; its data folder comes from the event.
Retraining runs never overlap: each deployment admits one run at a time and queues the rest
(ENQUEUE), and the serving process runs at most one flow run at a time across both deployments.

    python -m deployments.serve --data /data/chest_xray --cron "0 2 * * *" --timezone Europe/Berlin
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from cxr.config.params import RetrainConfig
from cxr.core.errors import DataError
from cxr.ops.watch import DATA_ARRIVED_EVENT, DEFAULT_DEBOUNCE_S, INBOX_RESOURCE_PREFIX

if TYPE_CHECKING:
    from prefect.deployments.runner import RunnerDeployment

NIGHTLY = "nightly"
ON_NEW_DATA = "on-new-data"
REVIEW_SYNC = "review-sync"
DEFAULT_CRON = "0 2 * * *"
# Jinja template the server renders from the triggering event when it creates the flow run.
EVENT_DATA_DIR = "{{ event.payload.data_dir }}"


def default_timezone() -> str:
    return os.environ.get("CXR_TIMEZONE") or "UTC"


class ServeOptions(BaseModel):
    """How the two deployments run (everything but the nightly data folder)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cron: str = DEFAULT_CRON
    timezone: str | None = Field(None, description="IANA zone of the cron (default $CXR_TIMEZONE or UTC)")
    debounce_s: float = Field(
        DEFAULT_DEBOUNCE_S, description="At most one on-new-data run per inbox in this window"
    )
    config_overrides: dict[str, Any] = Field(
        default_factory=dict, description="RetrainConfig fields (other than data_dir/trigger) for both"
    )
    event_roots: tuple[str, ...] = Field(
        (), description="Folders an event's data_dir must lie in (default: the nightly folder's parent)"
    )
    review_every_s: float | None = Field(
        None, gt=0, description="Also serve `review-sync` every this many seconds (None: not served)"
    )
    review_into: str | None = Field(
        None, description="Where review-sync pulls labelled images (default: the nightly folder)"
    )


def _config_parameters(data_dir: str, trigger: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Validated `retrain` parameters holding only the values given (flow defaults fill the rest)."""
    given = {**overrides, "data_dir": data_dir, "trigger": trigger}
    return {"config": RetrainConfig(**given).model_dump(mode="json", include=_keys(given))}


def _keys(values: Mapping[str, Any]) -> dict[str, Any]:
    """`values`' keys as a pydantic `include`, nested into parameter groups."""
    return {key: _keys(value) if isinstance(value, Mapping) else True for key, value in values.items()}


def build_deployments(data_dir: str, options: ServeOptions | None = None) -> list[RunnerDeployment]:
    """The `nightly` and `on-new-data` deployments of the `retrain` flow (see `ServeOptions`)."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.deployments.runner import EntrypointType
    from prefect.events import DeploymentEventTrigger

    from flows.retrain import retrain

    if not Path(data_dir).is_dir():
        raise DataError(f"data folder for the nightly run not found: {data_dir}")
    options = options or ServeOptions()
    overrides = options.config_overrides
    one_at_a_time = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE)
    # Runs import the flow by module name, so `cxr serve` works from any working directory.
    common = {"concurrency_limit": one_at_a_time, "entrypoint_type": EntrypointType.MODULE_PATH}
    nightly = retrain.to_deployment(
        NIGHTLY,
        schedules=[CronSchedule(cron=options.cron, timezone=options.timezone or default_timezone())],
        parameters=_config_parameters(str(Path(data_dir).resolve()), NIGHTLY, overrides),
        tags=[NIGHTLY],
        description=f"Retrain on {data_dir} every day ({options.cron}).",
        **common,
    )
    # Validate the overrides now with a placeholder folder; the server substitutes the event's one.
    # Event payloads are untrusted: the run refuses a data_dir outside these roots.
    roots = [str(Path(root).resolve()) for root in options.event_roots] or [
        str(Path(data_dir).resolve().parent)
    ]
    event_parameters = _config_parameters(roots[0], "new-data", {**overrides, "data_roots": roots})
    event_parameters["config"]["data_dir"] = EVENT_DATA_DIR
    on_new_data = retrain.to_deployment(
        ON_NEW_DATA,
        triggers=[
            DeploymentEventTrigger(
                name="cxr-data-arrived",
                expect={DATA_ARRIVED_EVENT},
                match={"prefect.resource.id": f"{INBOX_RESOURCE_PREFIX}*"},
                for_each={"prefect.resource.id"},  # debounce each inbox on its own
                posture="Reactive",
                threshold=1,
                within=timedelta(seconds=options.debounce_s),
                parameters=event_parameters,
            )
        ],
        tags=["new-data"],
        description=f"Retrain when `cxr watch` announces new files (at most once per {options.debounce_s:.0f} s per inbox).",
        **common,
    )
    return [nightly, on_new_data]


def build_review_sync(data_dir: str, every_s: float) -> RunnerDeployment:
    """The `review-sync` deployment: push the review queue and pull finished labels into `data_dir`."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.client.schemas.schedules import IntervalSchedule
    from prefect.deployments.runner import EntrypointType

    from flows.review_sync import review_sync

    return review_sync.to_deployment(
        REVIEW_SYNC,
        schedules=[IntervalSchedule(interval=timedelta(seconds=every_s))],
        parameters={"data_dir": str(Path(data_dir).resolve())},
        tags=[REVIEW_SYNC],
        description=f"Push the review queue to Label Studio and pull finished labels into {data_dir} every {every_s:g} s.",
        concurrency_limit=ConcurrencyLimitConfig(
            limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW
        ),
        entrypoint_type=EntrypointType.MODULE_PATH,
    )


def serve_deployments(
    data_dir: str, options: ServeOptions | Mapping[str, Any] | None = None, *, poll_s: float | None = None
) -> None:
    """Register both deployments and run their flow runs in this process until Ctrl-C.

    `limit=1`: one flow run at a time across both deployments; the others wait their turn.
    `poll_s`: how often to look for scheduled runs (default PREFECT_RUNNER_POLL_FREQUENCY, 10 s).
    """
    from prefect import serve

    options = ServeOptions.model_validate(options or {})
    deployments = build_deployments(data_dir, options)
    if options.review_every_s is not None:
        deployments.append(build_review_sync(options.review_into or data_dir, options.review_every_s))
    runner_options = {} if poll_s is None else {"query_seconds": poll_s}
    serve(*deployments, pause_on_shutdown=False, limit=1, **runner_options)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m deployments.serve", description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="data folder of the nightly run")
    parser.add_argument("--cron", default=DEFAULT_CRON)
    parser.add_argument("--timezone", default=None, help="IANA name (default: $CXR_TIMEZONE or UTC)")
    parser.add_argument(
        "--debounce", type=float, default=DEFAULT_DEBOUNCE_S, help="seconds per on-new-data run"
    )
    args = parser.parse_args(argv)
    serve_deployments(
        args.data, ServeOptions(cron=args.cron, timezone=args.timezone, debounce_s=args.debounce)
    )


if __name__ == "__main__":
    from cxr.core.state_folder import configure_environment

    configure_environment()
    main()
