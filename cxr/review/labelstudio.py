"""The few Label Studio REST calls the review loop makes: one project, its tasks, their annotations."""

from __future__ import annotations

from typing import Any

import httpx

from cxr.review.server import ReviewServerError, auth

PROJECT_TITLE = "cxr review: referred chest X-rays"
PNEUMONIA_CHOICE, NORMAL_CHOICE = "Pneumonia", "Normal"
NOT_XRAY_CHOICE, UNSURE_CHOICE = "Not a chest X-ray", "Unsure"
CHOICES = (PNEUMONIA_CHOICE, NORMAL_CHOICE, NOT_XRAY_CHOICE, UNSURE_CHOICE)
# The choice a reviewer's answer becomes as a class of the data folder (the others are recorded only).
CLASS_OF_CHOICE = {PNEUMONIA_CHOICE: "pneumonia", NORMAL_CHOICE: "normal"}
CHOICE_OF_CLASS = {label: choice for choice, label in CLASS_OF_CHOICE.items()}
FROM_NAME, TO_NAME = "label", "image"
LABEL_CONFIG = f"""<View style="display: flex; gap: 1.5em">
  <View style="flex: 0 0 560px">
    <Image name="{TO_NAME}" value="$image" maxWidth="560px" zoom="true"/>
  </View>
  <View style="flex: 1">
    <Header value="The model's answer"/>
    <Text name="model" value="$summary"/>
    <Header value="Your answer"/>
    <Choices name="{FROM_NAME}" toName="{TO_NAME}" choice="single-radio" required="true">
{"".join(f'      <Choice value="{choice}"/>{chr(10)}' for choice in CHOICES)}    </Choices>
  </View>
</View>"""
# Label Studio's label stream then shows the lowest prediction score (the most uncertain image) first.
UNCERTAINTY_SAMPLING = "Uncertainty sampling"


class LabelStudio:
    """A Label Studio server's REST API, with its errors as `ReviewServerError` (one clear line)."""

    def __init__(self, url: str, token: str, timeout_s: float = 120.0) -> None:
        self.url = url
        self.http = httpx.Client(base_url=url, headers=auth(token), timeout=timeout_s)

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as error:
            raise ReviewServerError(f"Label Studio at {self.url} did not answer: {error}") from error
        if response.status_code == 404:
            return None
        if response.status_code >= 400:
            raise ReviewServerError(
                f"Label Studio refused {method} {path}: {response.status_code} {response.text[:300]}"
            )
        return response.json() if response.content else {}

    def project(self, project_id: int | None) -> int:
        """The review project: `project_id` when it still exists (its labelling form brought up to date),
        else one made now."""
        found = None if project_id is None else self.call("GET", f"/api/projects/{project_id}")
        if found is not None:
            if found.get("label_config") != LABEL_CONFIG:
                self.call("PATCH", f"/api/projects/{project_id}", json={"label_config": LABEL_CONFIG})
            return project_id
        made = self.call(
            "POST",
            "/api/projects",
            json={"title": PROJECT_TITLE, "label_config": LABEL_CONFIG, "sampling": UNCERTAINTY_SAMPLING},
        )
        return int(made["id"])

    def serve_folder(self, project_id: int, folder: str) -> None:
        """Let the project show images from `folder` (a local-files storage; Label Studio checks it)."""
        storages = self.call("GET", "/api/storages/localfiles", params={"project": project_id}) or []
        if not any(storage.get("path") == folder for storage in storages):
            self.call(
                "POST",
                "/api/storages/localfiles",
                json={"project": project_id, "path": folder, "use_blob_urls": True, "title": "review queue"},
            )

    def tasks(self, project_id: int) -> list[dict[str, Any]]:
        """Every task of the project with its annotations, in one export (three times faster than paging
        through /api/tasks)."""
        return self.call(
            "GET",
            f"/api/projects/{project_id}/export",
            params={"exportType": "JSON", "download_all_tasks": "true"},
        )

    def import_tasks(self, project_id: int, tasks: list[dict[str, Any]]) -> list[int]:
        """Create `tasks` (with their predictions); their ids, in order."""
        made = self.call(
            "POST", f"/api/projects/{project_id}/import", params={"return_task_ids": "true"}, json=tasks
        )
        ids = [int(task_id) for task_id in made.get("task_ids", [])]
        if len(ids) != len(tasks):
            raise ReviewServerError(f"Label Studio made {len(ids)} tasks of {len(tasks)}")
        return ids

    def user_email(self, user_id: int, cache: dict[int, str]) -> str:
        if user_id not in cache:
            user = self.call("GET", f"/api/users/{user_id}") or {}
            cache[user_id] = user.get("email") or f"user {user_id}"
        return cache[user_id]
