"""The served deployments against a real Prefect server: schedule, event trigger, debounce, no overlap."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest

from cxr.ops.watch import DATA_ARRIVED_EVENT, inbox_resource_id
from deployments.serve import EVENT_DATA_DIR, NIGHTLY, ON_NEW_DATA
from tests.helpers.servers import REPO, prefect_server, serving, wait_for

pytestmark = pytest.mark.slow

DEBOUNCE_S = 300.0
TIMEZONE = "Europe/Berlin"
CRON = "30 3 * * 1-5"
TINY = {"train": {"model": "seed", "image_size": 32, "epochs": 1, "batch_size": 16}}
FLOW_RUN_TIMEOUT_S = 240
RETRAIN_ENTRYPOINT = "flows/retrain.py:retrain"


@pytest.fixture(scope="module")
def api_url(tmp_path_factory):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with (
        prefect_server(tmp_path_factory.mktemp("prefect-server")) as url,
        temporary_settings({PREFECT_API_URL: url}),
    ):
        yield url


@pytest.fixture(scope="module")
def client(api_url):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        yield client


@pytest.fixture(scope="module")
def served(api_url, client, tmp_path_factory, tiny_dataset):
    """`serve_deployments` in a subprocess; yields {deployment name: deployment} once both deployments and
    the on-new-data automation are readable (serve registers them one after the other)."""
    home = tmp_path_factory.mktemp("serve-home")
    options = {
        "data_dir": str(tiny_dataset),
        "options": {
            "cron": CRON,
            "timezone": TIMEZONE,
            "debounce_s": DEBOUNCE_S,
            "config_overrides": TINY,
            "event_roots": [str(tmp_path_factory.getbasetemp())],
        },
        "poll_s": 1.0,
    }
    with serving(api_url, home, home / "serve.log", **options) as process:

        def registered():
            assert process.poll() is None, (home / "serve.log").read_text()
            found = {name: _deployment(client, name) for name in (NIGHTLY, ON_NEW_DATA)}
            return found if all(found.values()) and _automations(client, found[ON_NEW_DATA]) else None

        yield wait_for(registered, timeout_s=120, what="both deployments")


def _deployment(client, name):
    from prefect.exceptions import ObjectNotFound

    try:
        return client.read_deployment_by_name(f"retrain/{name}")
    except ObjectNotFound:
        return None


def _automations(client, deployment):
    return client.read_resource_related_automations(f"prefect.deployment.{deployment.id}")


def _runs_of(client, deployment):
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    return client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id]))
    )


def _wait_for_completed_runs(client, deployment, count: int):
    def finished():
        runs = _runs_of(client, deployment)
        failed = [run for run in runs if run.state and run.state.is_final() and not run.state.is_completed()]
        assert not failed, [(run.name, run.state.message) for run in failed]
        done = [run for run in runs if run.state and run.state.is_completed()]
        return done if len(done) >= count else None

    return wait_for(finished, timeout_s=FLOW_RUN_TIMEOUT_S, interval_s=1.0, what=f"{count} completed run(s)")


def _arrived_events(client, inbox):
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    page = client.read_events(
        EventFilter(
            event=EventNameFilter(name=[DATA_ARRIVED_EVENT]),
            resource=EventResourceFilter(id=[inbox_resource_id(inbox)]),
        ),
        limit=50,  # the server's maximum (the client's default of 100 is refused)
    )
    return page.events


def _run_name_pattern(trigger: str) -> re.Pattern:
    return re.compile(rf"retrain-\d{{4}}-\d{{2}}-\d{{2}}-{trigger}")


def _artifact_keys(client, flow_run):
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    artifacts = client.read_artifacts(
        artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id]))
    )
    return {artifact.key for artifact in artifacts}


def test_both_deployments_are_registered_with_schedule_trigger_and_limit(served, client, tiny_dataset):
    from prefect.client.schemas.objects import ConcurrencyLimitStrategy

    nightly, on_new_data = served[NIGHTLY], served[ON_NEW_DATA]
    [schedule] = nightly.schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone, schedule.active) == (CRON, TIMEZONE, True)
    assert nightly.tags == ["nightly"]
    assert nightly.parameters == {
        "config": {**TINY, "data_dir": str(tiny_dataset.resolve()), "trigger": "nightly"}
    }

    assert on_new_data.schedules == []
    assert on_new_data.tags == ["new-data"]
    [automation] = _automations(client, on_new_data)
    trigger = automation.trigger
    assert trigger.expect == {DATA_ARRIVED_EVENT}
    assert (trigger.threshold, trigger.within) == (1, timedelta(seconds=DEBOUNCE_S))
    [action] = automation.actions
    assert action.deployment_id == on_new_data.id
    roots = action.parameters["config"].pop("data_roots")
    assert roots and all(Path(root).is_absolute() for root in roots)  # event folders are confined
    assert action.parameters == {"config": {**TINY, "data_dir": EVENT_DATA_DIR, "trigger": "new-data"}}

    for deployment in (nightly, on_new_data):
        assert deployment.global_concurrency_limit.limit == 1
        assert deployment.concurrency_options.collision_strategy == ConcurrencyLimitStrategy.ENQUEUE


def _in_another_process(api_url: str, command: list[str]) -> subprocess.CompletedProcess:
    """Run `command` against the test server: this process's event worker may still point elsewhere."""
    environment = {**os.environ, "PREFECT_API_URL": api_url}
    return subprocess.run(
        command, check=True, env=environment, cwd=REPO, capture_output=True, text=True, timeout=120
    )


def _emit_from_another_process(api_url: str, inbox: Path, new_files: int) -> None:
    code = f"from pathlib import Path; from cxr.ops.watch import emit_data_arrived; emit_data_arrived(Path({str(inbox)!r}), {new_files})"
    _in_another_process(api_url, [sys.executable, "-c", code])


def test_new_files_in_an_inbox_start_exactly_one_run(served, client, api_url, tiny_dataset, tmp_path):
    inbox = tmp_path / "inbox"
    shutil.copytree(tiny_dataset, inbox)

    # `cxr watch` in its own process, as users run it: one event once the copied files have settled.
    watcher = _in_another_process(
        api_url,
        [sys.executable, "-m", "cli.main", "watch", str(inbox), "--settle", "1", "--poll", "0.2", "--once"],
    )
    assert watcher.stdout.strip().endswith("emitted 1 cxr.data.arrived event(s)")
    # A second burst inside the debounce window, announced by another process (as `cxr watch` would).
    _emit_from_another_process(api_url, inbox, 1)

    # Both events reached the server before the count is checked (the second may still be in flight).
    wait_for(lambda: len(_arrived_events(client, inbox)) == 2, timeout_s=60, what="both arrival events")
    _wait_for_completed_runs(client, served[ON_NEW_DATA], count=1)
    time.sleep(2)  # give a (wrong) second run time to appear
    runs = _runs_of(client, served[ON_NEW_DATA])
    assert len(runs) == 1
    [run] = runs
    assert run.parameters["config"]["data_dir"] == str(inbox.resolve())
    assert run.parameters["config"]["trigger"] == "new-data"
    assert _run_name_pattern("new-data").fullmatch(run.name)
    assert {"metrics", "training-history"} <= _artifact_keys(client, run)


def test_back_to_back_triggers_run_one_after_the_other(served, client, api_url, tiny_dataset, tmp_path):
    from prefect.deployments import run_deployment

    before = len(_runs_of(client, served[ON_NEW_DATA]))
    for name in ("left", "right"):
        shutil.copytree(tiny_dataset, tmp_path / name)
        _emit_from_another_process(api_url, tmp_path / name, 40)
    run_deployment(f"retrain/{NIGHTLY}", timeout=0)

    runs = _wait_for_completed_runs(client, served[ON_NEW_DATA], count=before + 2)
    [nightly_run] = _wait_for_completed_runs(client, served[NIGHTLY], count=1)
    assert _run_name_pattern("nightly").fullmatch(nightly_run.name)
    runs.append(nightly_run)
    intervals = sorted((run.start_time, run.end_time) for run in runs)
    for (_, previous_end), (next_start, _) in zip(intervals, intervals[1:], strict=False):
        assert next_start >= previous_end, intervals


EXTERNAL_FROM_ENV = {"sets": "{{ $CXR_EXTERNAL_SETS }}"}


def _without_roots(trigger):
    """The trigger with its data_roots and external sets set aside: the YAML names them by environment variables."""
    config = trigger.parameters["config"]
    assert config.pop("data_roots"), "event-triggered runs must be confined to data roots"
    assert config.pop("external", EXTERNAL_FROM_ENV) == EXTERNAL_FROM_ENV
    return trigger


def test_prefect_yaml_declares_the_same_deployments_as_serve(tmp_path):
    import yaml
    from prefect.events import DeploymentEventTrigger

    from deployments.serve import ServeOptions, build_deployments

    declared = yaml.safe_load((REPO / "deployments" / "prefect.yaml").read_text())["deployments"]
    yaml_deployments = {item["name"]: item for item in declared if item["entrypoint"] == RETRAIN_ENTRYPOINT}
    served = {
        deployment.name: deployment
        for deployment in build_deployments(str(tmp_path), ServeOptions(timezone="UTC"))
    }
    assert yaml_deployments.keys() == served.keys() == {NIGHTLY, ON_NEW_DATA}

    for name, item in yaml_deployments.items():
        deployment = served[name]
        _assert_declared_as_built(item, deployment)
        assert [
            _without_roots(DeploymentEventTrigger.model_validate(trigger))
            for trigger in item.get("triggers", [])
        ] == [_without_roots(trigger) for trigger in deployment.triggers]
        assert [(s["cron"], s["timezone"]) for s in item.get("schedules", [])] == [
            (s.schedule.cron, s.schedule.timezone) for s in deployment.schedules
        ]
        assert item.get("parameters", {}).get("config", {}).get("trigger") == deployment.parameters.get(
            "config", {}
        ).get("trigger")
        assert (
            item.get("parameters", {}).get("config", {}).get("external", EXTERNAL_FROM_ENV)
            == EXTERNAL_FROM_ENV
        )


def _assert_declared_as_built(item: dict, deployment) -> None:  # noqa: ANN001 - a RunnerDeployment
    """The YAML entry's entrypoint, tags and concurrency limit are those of the deployment serve builds."""
    path, attribute = item["entrypoint"].split(":")
    assert f"{path.removesuffix('.py').replace('/', '.')}.{attribute}" == deployment.entrypoint
    assert item["tags"] == deployment.tags
    assert item["concurrency_limit"] == {
        "limit": deployment.concurrency_limit,
        "collision_strategy": deployment.concurrency_options.collision_strategy.value,
    }


def test_review_sync_is_declared_as_serve_builds_it(tmp_path):
    import yaml

    from deployments.serve import REVIEW_SYNC, build_review_sync

    declared = yaml.safe_load((REPO / "deployments" / "prefect.yaml").read_text())["deployments"]
    item = next(item for item in declared if item["name"] == REVIEW_SYNC)
    deployment = build_review_sync(str(tmp_path), 900)
    _assert_declared_as_built(item, deployment)
    assert [s["interval"] for s in item["schedules"]] == [
        s.schedule.interval.total_seconds() for s in deployment.schedules
    ]
    assert deployment.parameters == {"data_dir": str(tmp_path.resolve())}


def test_both_deployments_carry_the_external_sets(tmp_path):
    from cxr.config.params import RetrainConfig
    from deployments.serve import ServeOptions, build_deployments

    site, data = tmp_path / "site_b", tmp_path / "data"
    site.mkdir()
    data.mkdir()
    options = ServeOptions(config_overrides={"external": {"sets": [f"site_b={site}"]}})
    nightly, on_new_data = build_deployments(str(data), options)
    for parameters in (nightly.parameters, on_new_data.triggers[0].parameters):
        assert parameters["config"]["external"] == {"sets": {"site_b": str(site)}}
    # The YAML's environment variable: `NAME=DIR,...` text, empty for none.
    assert RetrainConfig(data_dir=str(tmp_path / "data"), external={"sets": ""}).external.sets == {}
    parsed = RetrainConfig(
        data_dir=str(tmp_path / "data"), external={"sets": f"site_b={site}, c={tmp_path}/c"}
    )
    assert parsed.external.sets == {"site_b": str(site), "c": str(tmp_path / "c")}


def test_a_missing_nightly_data_folder_is_refused_before_serving(tmp_path):
    from cxr.core.errors import DataError
    from deployments.serve import build_deployments

    with pytest.raises(DataError, match="not found"):
        build_deployments(str(tmp_path / "missing"))


@pytest.mark.parametrize("external_sets", ["", "site_b=/data/site_b,site_c=/data/site_c"])
def test_prefect_yaml_parameters_pass_the_servers_schema_check(external_sets):
    """`prefect deploy` sends the parameters with the flow's schema and the server refuses any that fail it
    (HTTP 422); the external sets arrive there as the text of $CXR_EXTERNAL_SETS."""
    import yaml
    from prefect.utilities.callables import parameter_schema
    from prefect.utilities.schema_tools import validate

    from flows.retrain import retrain

    schema = parameter_schema(retrain).model_dump_for_openapi()
    for item in yaml.safe_load((REPO / "deployments" / "prefect.yaml").read_text())["deployments"]:
        if item["entrypoint"] != RETRAIN_ENTRYPOINT:
            continue
        config = item.get("parameters", {}).get("config") or item["triggers"][0]["parameters"]["config"]
        config = {**config, "data_dir": "/data/chest_xray", "external": {"sets": external_sets}}
        validate({"config": config}, schema, raise_on_error=True, ignore_required=True)
