"""The stack's schema registry answers the Confluent REST API."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest

from touchpoint.settings import Settings

pytestmark = pytest.mark.integration

CONTENT_TYPE = {"Content-Type": "application/vnd.schemaregistry.v1+json"}
V1 = {"type": "record", "name": "Probe", "namespace": "touchpoint.test",
      "fields": [{"name": "a", "type": "int"}]}


def register(settings: Settings, subject: str, schema: dict[str, object]) -> httpx.Response:
    return httpx.post(f"{settings.registry_url}/subjects/{subject}/versions", headers=CONTENT_TYPE,
                      content=json.dumps({"schema": json.dumps(schema)}), timeout=10)


def test_register_fetch_and_compatibility(settings: Settings) -> None:
    subject = f"itest-{uuid.uuid4().hex[:8]}-value"
    config = httpx.put(f"{settings.registry_url}/config/{subject}", headers=CONTENT_TYPE,
                       content=json.dumps({"compatibility": "BACKWARD"}), timeout=10)
    assert config.status_code == 200, config.text

    first = register(settings, subject, V1)
    assert first.status_code == 200, first.text
    schema_id = first.json()["id"]
    fetched = httpx.get(f"{settings.registry_url}/schemas/ids/{schema_id}", timeout=10)
    assert json.loads(fetched.json()["schema"]) == V1
    assert register(settings, subject, V1).json()["id"] == schema_id

    # A new required field without a default cannot read old data: refused.
    breaking = {**V1, "fields": [*V1["fields"], {"name": "b", "type": "int"}]}
    refused = register(settings, subject, breaking)
    assert refused.status_code == 409, refused.text

    compatible = {**V1, "fields": [*V1["fields"], {"name": "b", "type": ["null", "int"], "default": None}]}
    accepted = register(settings, subject, compatible)
    assert accepted.status_code == 200, accepted.text
    versions = httpx.get(f"{settings.registry_url}/subjects/{subject}/versions", timeout=10).json()
    assert versions == [1, 2]
