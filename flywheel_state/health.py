"""What ``flywheel-state doctor`` reports, as a library call: :meth:`Store.health`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from redis import exceptions as redis_exc

from flywheel_state._redis import as_str, translate_errors
from flywheel_state.errors import FlywheelStateError
from flywheel_state.indexes import alias_name, index_info

if TYPE_CHECKING:
    from flywheel_state.store import Store

__all__ = ["KINDS", "HealthReport", "check_health", "namespaces_in_use"]

KINDS = ("session", "execution")


@dataclass
class HealthReport:
    """The server, modules, indexes, key counts and migration state of one namespace.

    ``problems`` lists what is wrong, each redacted (passwords never show); empty when healthy.
    """

    url: str
    namespace: str
    reachable: bool = False
    problems: list[str] = field(default_factory=list)
    server: dict[str, Any] = field(default_factory=dict)
    json: bool | None = None
    search: bool | None = None
    shards: list[dict[str, Any]] | None = None
    distributed_search: bool | None = None
    indexes: dict[str, dict[str, Any] | None] | None = None
    keys: dict[str, int] | None = None
    migrations: dict[str, Any] | None = None
    unused_namespace: bool = False
    """The namespace has no keys and no indexes (a mistyped ``--namespace``, say)."""
    namespaces: list[str] = field(default_factory=list)
    """The namespaces that have indexes on the server (listed when this one is unused)."""

    @property
    def ok(self) -> bool:
        """True when nothing is wrong."""
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        """The JSON form ``doctor --json`` prints (only the parts that were checked)."""
        out: dict[str, Any] = {"url": self.url, "namespace": self.namespace}
        out["problems"] = list(self.problems)
        out["reachable"] = self.reachable
        out.update(self.server)
        for name in ("json", "search", "shards", "distributed_search", "indexes", "keys"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.migrations is not None:
            out["migrations"] = self.migrations
        if self.unused_namespace:
            out["unused_namespace"] = True
            out["namespaces"] = self.namespaces
        return out


async def namespaces_in_use(client: Any) -> list[str]:
    """The namespaces that have a flywheel-state index on the server (from FT._LIST)."""
    with translate_errors("listing indexes"):
        try:
            names = [as_str(n) for n in await client.execute_command("FT._LIST")]
        except redis_exc.ResponseError:
            return []
    found = {
        name.split(":", 1)[0]
        for name in names
        if ":" in name and name.split(":", 2)[1:2] and name.split(":", 2)[1] in KINDS
    }
    return sorted(found)


async def _count_keys(client: Any, pattern: str) -> int:
    count = 0
    with translate_errors(f"counting {pattern}"):
        async for _ in client.scan_iter(match=pattern, count=1000):
            count += 1
    return count


async def check_health(store: Store) -> HealthReport:
    """Gather the report (see :meth:`flywheel_state.Store.health`)."""
    report = HealthReport(url=store.settings.safe_url, namespace=store.namespace)
    await _check(store, report)
    report.problems = [store.settings.redact(p) for p in report.problems]
    return report


async def _check(store: Store, report: HealthReport) -> None:
    problems = report.problems
    client = store.client
    try:
        await client.ping()
    except redis_exc.AuthenticationError:
        problems.append(
            f"Redis at {store.settings.safe_url} refused the credentials: check "
            "REDIS_USERNAME / REDIS_PASSWORD (or the user and password in REDIS_URL)"
        )
        return
    except Exception as exc:
        problems.append(f"cannot reach Redis at {store.settings.safe_url}: {exc}")
        return
    report.reachable = True
    try:
        report.server = await store.server_info()
        missing = await store.missing_commands()
        report.json = not any(c.startswith("JSON.") for c in missing)
        report.search = not any(c.startswith("FT.") for c in missing)
        if missing:
            problems.append(
                f"missing commands {', '.join(missing)}: use Redis 8 or Redis Stack 7.2+"
            )
            return
        if store.is_cluster:
            report.shards = await store.shards()
            report.distributed_search = await store.has_distributed_search()
            if not report.distributed_search:
                problems.append(
                    "this cluster has no distributed query engine (each shard's search module "
                    "indexes its own keys only): queries and migrations are unavailable; the "
                    "key-value API works with Store(..., search=False)"
                )
                return
        indexes: dict[str, dict[str, Any] | None] = {}
        keys: dict[str, int] = {}
        for kind in KINDS:
            info = await index_info(client, alias_name(store.namespace, kind))
            indexes[kind] = (
                None
                if info is None
                else {
                    "index": as_str(info["index_name"]),
                    "num_docs": int(as_str(info.get("num_docs", b"0"))),
                    "indexing": bool(int(as_str(info.get("indexing", b"0")))),
                }
            )
            keys[kind] = await _count_keys(client, f"{store.namespace}:{kind}:*")
        report.indexes, report.keys = indexes, keys
        if all(v is None for v in indexes.values()) and not await _count_keys(
            client, f"{store.namespace}:*"
        ):
            report.unused_namespace = True
            report.namespaces = await namespaces_in_use(client)
            problems.append(unused_namespace_message(store.namespace, report.namespaces))
            return
        for kind, info in indexes.items():
            if info is None:
                problems.append(
                    f"no {kind} index ({alias_name(store.namespace, kind)}): "
                    "run `flywheel-state migrate up`"
                )
        status = await store.migrations.status()
        report.migrations = {
            "current": status.current,
            "head": status.head,
            "pending": list(status.pending),
            "up_to_date": status.up_to_date,
        }
        if not status.known:
            problems.append(
                f"applied migration revision {status.current} is unknown to this code (head "
                f"{status.head}): the data was migrated by a newer flywheel-state"
            )
        elif status.interrupted is not None:
            revision = status.interrupted.get("revision")
            report.migrations["interrupted"] = dict(status.interrupted)
            report.migrations["resolution"] = status.resolution
            problems.append(
                f"a {status.interrupted.get('direction')} of migration {revision} was "
                f"interrupted: {status.resolution}"
            )
        elif status.pending:
            problems.append(
                f"schema behind head: at revision {status.current or 'base'}, head is "
                f"{status.head} ({len(status.pending)} pending): run `flywheel-state migrate up`"
            )
    except FlywheelStateError as exc:
        problems.append(str(exc))


def unused_namespace_message(namespace: str, in_use: list[str]) -> str:
    """Says a namespace is unused (instead of advising ``migrate up``), naming those in use."""
    others = ", ".join(in_use) if in_use else "none"
    return (
        f"namespace {namespace!r} is unused (no keys, no indexes): check --namespace / "
        f"REDIS_NAMESPACE (namespaces with data: {others}); `flywheel-state migrate up` "
        "creates the indexes of a new one"
    )
