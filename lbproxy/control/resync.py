# -*- test-case-name: lbproxy.test.test_control -*-
"""
Bringing a restarted worker up to date (see L{lbproxy.control}).

A worker the supervisor starts again in its slot reads the command line
and the config file, so what the admin API changed since (backends added,
removed, reweighted, drained) is not in it.  L{resync} compares each
pool's backends in the new worker with a running worker's, and makes the
changes that make them the same through the new worker's admin API
(L{changesFor}).  Health, ejections and counters are each worker's own
and are left alone; so are the pools and routes themselves, which only a
configuration changes.
"""

from __future__ import annotations

import json
from collections.abc import Generator, Mapping, Sequence
from typing import Any
from urllib.parse import quote

import attrs
from twisted.internet.defer import Deferred, inlineCallbacks

from lbproxy.admin.response import AdminResponse
from lbproxy.control.client import Worker
from lbproxy.control.wire import ControlError, adminRequest, errorMessage, readResponse


@attrs.frozen
class Change:
    """
    One admin request that brings a worker's pool closer to another's.

    @ivar what: Says what it does, e.g. C{add http://127.0.0.9:80 to web}.
    """

    method: str
    path: str
    body: Mapping[str, Any] | None
    what: str


def changesFor(
    pool: str, wanted: Sequence[Mapping[str, Any]], have: Sequence[Mapping[str, Any]]
) -> list[Change]:
    """
    The requests that make the backends C{have} of C{pool} (as the admin
    API shows them) those C{wanted}: a backend missing is added (with its
    weight, then drained if it is draining), one too many removed, and one
    in both reweighted or drained (or not) where they differ.  Backends
    being removed count as gone.
    """
    live = {b["url"]: b for b in wanted if not b.get("removing")}
    present = {b["url"]: b for b in have if not b.get("removing")}
    backends = f"/pools/{quote(pool, safe='')}/backends"
    changes = []
    for url in present:
        if url not in live:
            changes.append(
                Change(
                    "DELETE", f"{backends}/{quote(url, safe='')}", None, f"remove {url} from {pool}"
                )
            )
    for url, backend in live.items():
        path = f"{backends}/{quote(url, safe='')}"
        draining = backend.get("state") == "draining"
        if url not in present:
            changes.append(
                Change(
                    "POST",
                    backends,
                    {"address": url, "weight": backend["weight"]},
                    f"add {url} to {pool}",
                )
            )
            if draining:
                changes.append(Change("PATCH", path, {"drain": True}, f"drain {url} in {pool}"))
            continue
        fields: dict[str, Any] = {}
        if present[url].get("weight") != backend["weight"]:
            fields["weight"] = backend["weight"]
        if (present[url].get("state") == "draining") != draining:
            fields["drain"] = draining
        if fields:
            said = ", ".join(f"{key} {json.dumps(value)}" for key, value in fields.items())
            changes.append(Change("PATCH", path, fields, f"set {said} for {url} in {pool}"))
    return changes


@attrs.frozen
class Resynced:
    """
    What L{resync} did.

    @ivar done: What each change it made did.
    @ivar failed: Each change the new worker refused, and why.
    """

    done: tuple[str, ...]
    failed: tuple[str, ...]


@inlineCallbacks
def resync(model: Worker, worker: Worker) -> Generator[Deferred[Any], Any, Resynced]:
    """
    Make the backends of every pool of C{worker} those of C{model}.

    @return: Fires with what was done; fails with L{ControlError} if a
        worker did not answer or could not show its pools.
    """
    pools = yield _read(model, "/pools")
    done: list[str] = []
    failed: list[str] = []
    for summary in pools["pools"]:
        name = summary["name"]
        path = f"/pools/{quote(name, safe='')}/backends"
        wanted = yield _read(model, path)
        have = yield _read(worker, path)
        for change in changesFor(name, wanted["backends"], have["backends"]):
            body = b"" if change.body is None else json.dumps(change.body).encode()
            response = yield _ask(worker, change.method, change.path, body)
            if 200 <= response.status < 300:
                done.append(change.what)
            else:
                why = errorMessage(response) or "no reason given"
                failed.append(f"{change.what}: {response.status} ({why})")
    return Resynced(tuple(done), tuple(failed))


def _ask(worker: Worker, method: str, path: str, body: bytes) -> Deferred[AdminResponse]:
    asking = worker.call("admin", adminRequest(method, path, body, None))
    return asking.addCallback(readResponse)


@inlineCallbacks
def _read(worker: Worker, path: str) -> Generator[Deferred[Any], Any, Any]:
    """
    The JSON a worker answers to C{GET path}.

    @raise ControlError: If it is not a 200 with JSON.
    """
    response = yield _ask(worker, "GET", path, b"")
    if response.status != 200:
        raise ControlError(f"{worker.label} answered GET {path} with {response.status}")
    try:
        return json.loads(response.body)
    except ValueError:
        raise ControlError(f"{worker.label} answered GET {path} with unreadable JSON") from None


__all__ = ["Change", "Resynced", "changesFor", "resync"]
