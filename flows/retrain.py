"""The `retrain` flow: ingest → split → batches → train → domain → external sets → evaluate → register →
approve (a person's sign-off, only with `gate.require_approval`)."""

from __future__ import annotations

import datetime as dt
import os
import time

from prefect import flow
from prefect.context import FlowRunContext
from prefect.runtime import flow_run
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from cxr.config.params import IngestParams, RetrainConfig
from cxr.core.caching import code_version, sha256_text, stable_json
from cxr.core.errors import CxrError
from cxr.core.import_closure import import_closure
from cxr.core.progress import stage_progress
from cxr.evaluation.external_sets import ExternalResult
from cxr.model.training import TrainResult
from flows.stages import StageRunner
from tasks import approve, batches, domain, evaluate, external, ingest, register, report, split, train

# The stages that make the model: the source their task modules reach (`import_closure`) is the lineage's code version.
MODEL_STAGES = (split, batches, train, domain)
# A Dask scheduler (tcp://host:8786): ingest's checks then run on its workers (they must see the data folder).
DASK_ADDRESS_ENV = "CXR_DASK_ADDRESS"
DASK_SCHEDULER_ENV = "CXR_DASK_SCHEDULER"  # the same, under the name docs/operating.md documents
# Mapped task runs per core on the thread runner: enough that cores stay busy while runs finish unevenly.
# Each run is several calls to the Prefect server even when cached, so more runs than that only add calls: a
# cached rerun at 16,000 images made 80 (63 ingest chunks, 17 shards) and waited on the server
# (docs/scale-memory.md).
MAPPED_RUNS_PER_CORE = 4


def local_task_runner() -> ThreadPoolTaskRunner:
    """One thread per core: Pillow releases the GIL while decoding, so mapped checks run in parallel."""
    return ThreadPoolTaskRunner(max_workers=os.cpu_count() or 1)


def task_runner_from_env() -> TaskRunner:
    """A `DaskTaskRunner` on the cluster at $CXR_DASK_ADDRESS (or $CXR_DASK_SCHEDULER), else a thread pool."""
    address = (os.environ.get(DASK_ADDRESS_ENV) or os.environ.get(DASK_SCHEDULER_ENV, "")).strip()
    if not address:
        return local_task_runner()
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError as error:
        raise CxrError(
            f"{DASK_ADDRESS_ENV}={address} needs prefect-dask: pip install 'cxr-pipeline[dask]'"
        ) from error
    return DaskTaskRunner(address=address)


def ingest_stage(run: StageRunner, data_dir: str, params: IngestParams) -> ingest.IngestResult:
    """Plan, check the planned chunks in parallel on the flow's task runner, and assemble the manifest."""
    plan = run(ingest.plan_ingest, data_dir, params)
    with stage_progress("ingest: check files", plan.todo, "files") as progress:
        checks = run.map_groups(
            ingest.check_chunks,
            plan.chunks(),
            on_done=lambda chunks: progress.advance(sum(chunk.rows for chunk in chunks)),
        )
    return run(ingest.assemble_ingest, plan, checks)


def batches_stage(
    run: StageRunner, split_path: str, split_digest: str, image_size: int
) -> batches.BatchesResult:
    """Plan the shards, decode them in parallel on the flow's task runner, and index them."""
    plan = run(batches.plan_batches, split_path, split_digest, image_size)
    shards = run.map_groups(batches.build_batch_shards, plan.chunks())
    return run(batches.assemble_batches, plan, shards)


def executor() -> str:
    """Where this run's mapped tasks run: its Dask scheduler's address, or "threads" (in this process)."""
    runner = FlowRunContext.get().task_runner
    return getattr(runner, "address", None) or "threads"


def mapped_width() -> int | None:
    """At most how many task runs a mapped stage makes: on threads, MAPPED_RUNS_PER_CORE per core of this
    machine; on a Dask cluster (whose size the flow does not know) one per planned chunk or shard."""
    return MAPPED_RUNS_PER_CORE * (os.cpu_count() or 1) if executor() == "threads" else None


def external_stage(
    run: StageRunner, config: RetrainConfig, trained: TrainResult, split_path: str
) -> dict[str, ExternalResult]:
    """Each external set scored with the trained model and the champion, one task per set."""
    return {
        name: run(
            external.evaluate_external,
            name,
            folder,
            trained.model_path,
            trained.model_sha256,
            split_path,
            config.registered_model_name,
        )
        for name, folder in config.external.sets.items()
    }


def site_default(run: StageRunner, config: RetrainConfig, trained: TrainResult) -> TrainResult:
    """The trained model, or (`external.calibrate_on`) a copy whose default point is that set's."""
    name = config.external.calibrate_on
    if name is None:
        return trained
    return run(external.calibrate_on_external, trained, name, config.external.sets[name])


def retrain_run_name() -> str:
    """`retrain-2026-11-28-nightly`: the date and what started the run, readable in the dashboard."""
    config = flow_run.parameters.get("config", {})
    trigger = config.get("trigger", "manual") if isinstance(config, dict) else config.trigger
    return f"retrain-{dt.date.today().isoformat()}-{trigger}"


@flow(
    name="retrain",
    flow_run_name=retrain_run_name,
    persist_result=True,
    # Chosen when this module is imported, so served runs (a fresh process importing the flow by
    # module path) honour $CXR_DASK_ADDRESS as `cxr train` does (it imports the flow when it runs).
    task_runner=task_runner_from_env(),
)
def retrain(config: RetrainConfig) -> dict:
    """Retrain on `config.data_dir`, evaluate on the held-out test split and register the model."""
    started = time.perf_counter()
    # The run's limit is `config.timeouts.flow_s`, applied by cutting every task's limit to the time
    # left (a timeout on the decorator could not follow the config).
    run = StageRunner(
        limits=config.timeouts, deadline=time.monotonic() + config.timeouts.flow_s, width=mapped_width()
    )
    ingested = ingest_stage(run, config.data_dir, config.ingest)
    splits = run(split.split, ingested.manifest_path, ingested.digest, config.split, config.data_dir)
    data = batches_stage(run, splits.split_path, splits.digest, config.train.image_size)
    trained = run(train.train, data, config.train)
    # The same network, saved with its domain score: the model every later stage evaluates and registers.
    trained = run(
        domain.fit_domain, trained, data, config.domain, config.train.seed, config.ingest.min_image_side
    )
    # Judged by the champion as it stands before this run's gate.
    drift = run(
        domain.data_drift, ingested, config.data_dir, trained, config.registered_model_name, config.domain
    )
    outside = external_stage(run, config, trained, str(splits.split_path))
    trained = site_default(run, config, trained)
    evaluation = run(evaluate.evaluate, trained.model_path, trained.model_sha256, data)
    lineage = {
        "data_digest": ingested.digest,
        "split_digest": splits.digest,
        "config_digest": sha256_text(stable_json(config.model_dump(exclude={"trigger", "timeouts"})))[:16],
        "code_version": code_version(
            {name for stage in MODEL_STAGES for name in import_closure(stage.__name__)}
        ),
        "data_dir": config.data_dir,
        **config.lineage_params(),
        "split_counts": splits.counts,
        "images": {"accepted": ingested.accepted, "quarantined": ingested.quarantined},
        "reviewed": splits.reviewed,
    }
    registered = run(
        register.register,
        trained,
        evaluation,
        data,
        lineage,
        config.registered_model_name,
        config.gate,
        outside,
    )
    registered = run(approve.approve, trained, registered, config.gate)  # a person's sign-off, when asked for
    # Read live: the alias may have moved (promote, rollback) since a cached registration was made.
    registered = run(register.champion_now, registered)
    drifted = run(domain.report_drift, drift, registered.run_id, registered.model_name)
    summary = {
        "model_name": registered.model_name,
        "model_version": registered.version,
        "model_uri": registered.model_uri,
        "champion": registered.champion,
        "champion_version": registered.champion_version,
        "mlflow_run_id": registered.run_id,
        "mlflow_run_url": registered.run_url,
        "decision": registered.decision,
        "metrics": evaluation.metrics,
        "ci": evaluation.ci,
        "external": {name: result.summary() for name, result in outside.items()},
        "threshold": trained.threshold,
        "operating_point": trained.default_operating_point,  # the one `metrics` use
        "operating_points": trained.operating_points,
        "train_images_per_second": trained.images_per_second,
        "architecture": config.train.model,
        "device": trained.device,
        "executor": executor(),
        "epochs_run": trained.epochs_run,
        "resumed_from_epoch": trained.resumed_from_epoch,
        "data_digest": ingested.digest,
        "images": {"accepted": ingested.accepted, "quarantined": ingested.quarantined},
        "split_counts": splits.counts,
        "reviewed": splits.reviewed,  # images people labelled (cxr review pull): train/valid only
        "flow_run_id": str(flow_run.id),
        "cached_tasks": run.cached,
        "reused": run.reused,  # cached task -> when its result was made
        "data_drift": drifted,  # new images out of the serving model's domain
        "peak_rss_mib_by_task": run.peak_rss_mib,  # what each stage holds at its peak (archive-scale runs)
    }
    run.limited(report.report)[0](evaluation, summary)
    return {**summary, "flow_seconds": round(time.perf_counter() - started, 2)}
