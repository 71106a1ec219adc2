"""What a flow run published, read back from the Prefect server."""

from __future__ import annotations

import json


def artifact_data(flow_run_id: str) -> dict[str, object]:
    """{key: data} of every keyed artifact the flow run published (a table's rows decoded from JSON)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {
        artifact.key: json.loads(artifact.data) if artifact.type == "table" else artifact.data
        for artifact in artifacts
        if artifact.key
    }


def artifact_keys(flow_run_id: str) -> set[str]:
    return set(artifact_data(flow_run_id))
