"""What a stage shows on its run's dashboard page, returned with its result rather than published by it.

A cached task does not run, so whatever it published itself would be missing from a cached run's page;
the flow publishes every stage's `artifacts` after the stage, cached or not (`flows.stages.StageRunner`).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class Artifact(BaseModel):
    """A Prefect markdown or table artifact, waiting to be published."""

    key: str
    description: str | None = None
    markdown: str | None = None
    table: list[dict[str, Any]] | None = None

    def publish(self) -> None:
        """Create the artifact in the current flow or task run."""
        from prefect.artifacts import create_markdown_artifact, create_table_artifact

        if self.table is not None:
            create_table_artifact(key=self.key, table=self.table, description=self.description)
        else:
            create_markdown_artifact(key=self.key, markdown=self.markdown or "", description=self.description)


class WithArtifacts(BaseModel):
    """A stage result carrying the artifacts of the run that produced it."""

    artifacts: list[Artifact] = Field(default_factory=list)
