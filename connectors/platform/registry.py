"""A Confluent-REST schema registry client with a client-side cache.

Only the Confluent API is used, so any compatible registry works (the local
stack runs Apicurio's ``/apis/ccompat/v7``). Registrations and lookups by id
are cached for the life of the client: a schema id never changes meaning,
so after the first message of each schema no message costs a round trip.
Network failures are retried a bounded number of times and then reported as
:class:`RegistryError` naming the registry, never as a hang.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import httpx
from fastavro import parse_schema

from touchpoint.errors import RegistryError

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


class RegistryClient:
    """Registers schemas and fetches them by id, caching both."""

    def __init__(self, url: str, timeout_s: float = 5.0, attempts: int = 3) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.Client(timeout=timeout_s, headers={"Content-Type": CONTENT_TYPE})
        self._attempts = attempts
        self._ids: dict[tuple[str, str], int] = {}
        self._schemas: dict[int, Any] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def register(self, subject: str, schema_text: str) -> int:
        """The id of ``schema_text`` under ``subject``, registering it if new.

        :raises RegistryError: the registry refused it (e.g. 409 incompatible) or is unreachable.
        """
        key = (subject, schema_text)
        with self._lock:
            if key in self._ids:
                return self._ids[key]
        body = self._request("POST", f"/subjects/{subject}/versions", {"schema": schema_text})
        schema_id = int(body["id"])
        with self._lock:
            self._ids[key] = schema_id
            self._schemas.setdefault(schema_id, parse_schema(json.loads(schema_text)))
        return schema_id

    def schema(self, schema_id: int) -> Any:
        """The parsed writer schema with this id.

        :raises LookupError: the registry has no such id (the message is bad, not the registry).
        :raises RegistryError: the registry is unreachable.
        """
        with self._lock:
            cached = self._schemas.get(schema_id)
        if cached is not None:
            return cached
        try:
            body = self._request("GET", f"/schemas/ids/{schema_id}")
        except RegistryError as exc:
            if exc.status == 404:
                raise LookupError(f"schema id {schema_id} is unknown to the registry") from exc
            raise
        parsed = parse_schema(json.loads(body["schema"]))
        with self._lock:
            self._schemas[schema_id] = parsed
        return parsed

    def set_compatibility(self, subject: str, level: str) -> None:
        """Set the subject's compatibility level (e.g. BACKWARD)."""
        self._request("PUT", f"/config/{subject}", {"compatibility": level})

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        last: Exception | None = None
        for attempt in range(self._attempts):
            try:
                response = self._http.request(method, self.url + path,
                                              content=None if body is None else json.dumps(body))
            except httpx.TransportError as exc:
                last = exc
                time.sleep(0.2 * 2**attempt)
                continue
            if response.status_code >= 500:
                last = RegistryError(f"{response.status_code} {response.text[:200]}")
                time.sleep(0.2 * 2**attempt)
                continue
            if response.status_code >= 400:
                raise RegistryError(f"registry {self.url} refused {method} {path}: "
                                    f"{response.status_code} {response.text[:500]}", status=response.status_code)
            result: dict[str, Any] = response.json()
            return result
        raise RegistryError(f"registry {self.url} unreachable after {self._attempts} attempts: {last}")
