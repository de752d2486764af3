"""Hot-path second pass (issue 3): on SQLite the group committer's writer thread holds the
cross-process write lock while it runs a batch, so the answers of ``next`` and of
``labels?next=1`` are shaped after the commit, in the request's own thread, not inside the
transaction."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from starlette.testclient import TestClient

from crowdsight.settings import Settings
from labeler import api
from labeler.app import create_app
from labeler.testing import seed_project, start_volunteer


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_task_answers_are_built_outside_the_group_commit_writer(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    p = seed_project(settings, n_tiles=6, with_images=False)
    built_in: list[str] = []
    real = api._task_json

    def spy(*args: Any) -> dict[str, Any]:
        built_in.append(threading.current_thread().name)
        return real(*args)

    monkeypatch.setattr(api, "_task_json", spy)
    with TestClient(create_app(settings)) as client:
        h = start_volunteer(client)
        first = client.get(f"/api/projects/{p.slug}/next?ahead=1")
        assert first.status_code == 200, first.text
        task = first.json()
        assert task["task_id"] and task["ahead"]["task_id"]
        tile = task["tiles"][0]["tile_id"]
        r = client.post(f"/api/projects/{p.slug}/labels?next=1&ahead=1", headers=h, json={
            "task_id": task["task_id"],
            "labels": [{"tile_id": tile, "answer": "yes", "idempotency_key": "key-0001"}]})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["stored"] == 1
        # the task held ahead comes back as next, with a new one ahead of it
        assert body["next"]["task_id"] == task["ahead"]["task_id"]
        assert body["next"]["tiles"][0]["image_urls"]
        assert body["next"]["progress"]["tiles"] == 6
        assert body["next"]["ahead"]["task_id"] not in (task["task_id"], task["ahead"]["task_id"])
        # the stored label is there (the answer came after the commit)
        again = client.post(f"/api/projects/{p.slug}/labels", headers=h, json={
            "task_id": task["task_id"],
            "labels": [{"tile_id": tile, "answer": "yes", "idempotency_key": "key-0001"}]})
        assert again.status_code == 200 and again.json()["duplicates"] == 1, again.text
    assert len(built_in) == 4  # next: task + ahead; labels?next=1: next + ahead
    assert "crowdsight-group-commit" not in built_in, built_in

