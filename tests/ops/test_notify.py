"""Notification set-up refuses what cannot work before touching the Prefect server (end to end: test_operating)."""

from __future__ import annotations

import pytest

from cxr.core.errors import CxrError
from cxr.ops.notify import (
    champion_changed_message,
    configure_notifications,
    data_drift_message,
    run_failed_message,
)

UNREACHABLE_API = "http://127.0.0.1:9/api"  # nothing listens on the discard port: any request would fail


def test_exactly_one_destination_is_required():
    with pytest.raises(CxrError, match="either"):
        configure_notifications(api_url=UNREACHABLE_API)
    with pytest.raises(CxrError, match="either"):
        configure_notifications(webhook_url="https://example.org/hook", block_slug="slack-webhook/ops")


def test_webhook_must_be_http():
    with pytest.raises(CxrError, match="http"):
        configure_notifications(webhook_url="file:///etc/passwd", api_url=UNREACHABLE_API)


def test_messages_link_to_the_dashboard_given():
    for subject, body in (
        run_failed_message("http://127.0.0.1:4200"),
        champion_changed_message("http://127.0.0.1:4200"),
        data_drift_message("http://127.0.0.1:4200"),
    ):
        assert subject.startswith("cxr: ")
        assert "http://127.0.0.1:4200" in body
