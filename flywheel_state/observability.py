"""OpenTelemetry spans and metrics for flywheel-state's public calls (extra ``otel``).

flywheel-state is instrumented the way a library should be: it uses the global tracer and
meter providers of ``opentelemetry-api`` and never configures an SDK. The application decides
(``opentelemetry-sdk``, an exporter, ``opentelemetry-instrument``); without a configured SDK
every call costs next to nothing, and without ``opentelemetry-api`` installed nothing here is
imported and the methods are left exactly as they are.

**Spans.** One span of kind CLIENT per public call of the repositories (``sessions.save``,
``executions.get``, ``sessions.find`` ...), the migration runner (``migrations.upgrade``) and the
compat API (``compat.sessions.save_session``), child of the caller's current span. Attributes:
``db.system.name`` = ``redis``, ``db.operation.name`` (the span name), ``server.address``,
``server.port``, ``flywheel_state.namespace``, ``flywheel_state.kind``; for queries
``flywheel_state.query.filters`` (the filter *names*) and ``flywheel_state.query.match_count``;
for reads ``flywheel_state.found``. On failure ``error.type`` (the exception's class name),
status ERROR and an ``exception`` event carrying only ``exception.type``: error messages can
hold ids and rejected values, so they are left out. ``NotFoundError`` from ``get`` / ``ttl`` is
an outcome (``flywheel_state.found`` = false), not an error. Ids, filter values and document
contents are never put in spans, except the record id (``flywheel_state.record.id``) when
``Settings(trace_ids=True)``. A call a repository makes to its own public methods (``get``
uses ``get_or_none``) is part of the outer span, not a span of its own.

**Metrics** (meter ``flywheel_state``):

- ``db.client.operation.duration`` (histogram, seconds): ``db.system.name``,
  ``db.operation.name``, and ``error.type`` on failure;
- ``flywheel_state.session.ttl_refreshes`` (counter): session TTLs restarted by sliding writes
  and ``refresh_on_read`` reads;
- ``flywheel_state.conflicts`` (counter): optimistic-concurrency conflicts (ConflictError);
- ``flywheel_state.corrupt_records`` (counter): calls that met a record that is not a valid
  document (CorruptRecordError);
- ``flywheel_state.migration.documents_rewritten`` (counter): documents written by migration
  runs (``migrations.upgrade`` / ``migrations.downgrade``);

  (these counters carry ``db.system.name`` and ``db.operation.name``, the call that counted);
- ``db.client.connection.count`` (observable up-down counter): connections of each Store's
  pools, by ``db.client.connection.state`` (``idle`` / ``used``) and
  ``db.client.connection.pool.name`` (the namespace).

No metric attribute holds an id or a value. Instrumentation is applied with :func:`instrument`
at the end of each instrumented module, so the methods themselves stay plain.
"""

from __future__ import annotations

import contextvars
import functools
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from flywheel_state.errors import ConflictError, CorruptRecordError, NotFoundError

if TYPE_CHECKING:
    from flywheel_state.config import Settings
    from flywheel_state.store import Store

try:
    from opentelemetry import metrics as _metrics
    from opentelemetry import trace as _trace
except ImportError:  # the extra is not installed: instrument() leaves methods untouched
    _metrics = None  # type: ignore[assignment]
    _trace = None  # type: ignore[assignment]

__all__ = [
    "AVAILABLE",
    "DURATION_BUCKETS",
    "OpSpec",
    "Scope",
    "instrument",
    "instrument_compat",
    "instrument_library",
    "register_store",
    "server_of_client",
    "server_of_settings",
]

AVAILABLE: bool = _trace is not None
"""True when ``opentelemetry-api`` is installed (``pip install 'flywheel-state[otel]'``)."""

DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
"""Advisory bucket boundaries (seconds) of ``db.client.operation.duration``."""

_NAME = "flywheel_state"
_SYSTEM = {"db.system.name": "redis"}
_QUERY_PARAMS = frozenset({"sort", "limit", "offset", "batch_size"})
_current: contextvars.ContextVar[object | None] = contextvars.ContextVar(
    "flywheel_state_span_owner", default=None
)


@dataclass(frozen=True)
class Scope:
    """What the spans of one instrumented object carry besides the operation.

    Attributes:
        attributes: Span attributes of every call (namespace, kind, server).
        include_ids: Whether record ids go into spans (``Settings.trace_ids``).
    """

    attributes: Mapping[str, Any]
    include_ids: bool = False


@dataclass(frozen=True)
class OpSpec:
    """How one method is instrumented.

    Attributes:
        shape: ``"call"`` (a coroutine method), ``"query"`` (a coroutine with filter keyword
            arguments and a match count) or ``"iter"`` (a plain method returning an async
            iterator: the span covers the whole iteration).
        id_from: Where the record id is (for ``trace_ids``): ``"arg"`` (the first positional
            argument), ``"model"`` (the first argument's ``id``) or None.
        read: NotFoundError is an outcome, not an error; sets ``flywheel_state.found``.
        outcome: Extra span attributes from the result (never ids or values).
        count: Maps (object, result, kwargs) to metric increments: instrument name -> amount.
    """

    shape: Literal["call", "query", "iter"] = "call"
    id_from: Literal["arg", "model"] | None = None
    read: bool = False
    outcome: Callable[[Any], Mapping[str, Any]] | None = None
    count: Callable[[Any, Any, Mapping[str, Any]], Mapping[str, int]] | None = None


def server_of_client(client: Any) -> dict[str, Any]:
    """``server.address`` / ``server.port`` of a redis.asyncio client (empty when unknown)."""
    kwargs = getattr(getattr(client, "connection_pool", None), "connection_kwargs", None) or {}
    if "path" in kwargs:
        return {"server.address": str(kwargs["path"])}
    out: dict[str, Any] = {}
    if "host" in kwargs:
        out["server.address"] = str(kwargs["host"])
    if isinstance(kwargs.get("port"), int):
        out["server.port"] = kwargs["port"]
    return out


def server_of_settings(settings: Settings) -> dict[str, Any]:
    """``server.address`` / ``server.port`` from Settings (the URL's host, never credentials)."""
    if settings.url is None:
        return {"server.address": settings.host, "server.port": settings.port}
    try:
        parts = urlsplit(settings.url)
        host, port = parts.hostname, parts.port
    except ValueError:
        return {}
    out: dict[str, Any] = {}
    if host:
        out["server.address"] = host
    if port is not None:
        out["server.port"] = port
    return out


# ---------------------------------------------------------------------------------- instruments


class _Instruments:
    """The meter's instruments, created once (they follow the global provider when it is set)."""

    def __init__(self) -> None:
        assert _metrics is not None
        meter = _metrics.get_meter(_NAME)
        self.duration = meter.create_histogram(
            "db.client.operation.duration",
            unit="s",
            description="Duration of flywheel-state operations (one per public call).",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self.counters = {
            "ttl_refreshes": meter.create_counter(
                "flywheel_state.session.ttl_refreshes",
                unit="{refresh}",
                description="Session TTLs restarted by sliding writes and refresh_on_read.",
            ),
            "conflicts": meter.create_counter(
                "flywheel_state.conflicts",
                unit="{conflict}",
                description="Writes refused by optimistic concurrency (ConflictError).",
            ),
            "corrupt": meter.create_counter(
                "flywheel_state.corrupt_records",
                unit="{record}",
                description="Calls that met a record that is not a valid document.",
            ),
            "rewritten": meter.create_counter(
                "flywheel_state.migration.documents_rewritten",
                unit="{document}",
                description="Documents written by migration runs.",
            ),
        }
        meter.create_observable_up_down_counter(
            "db.client.connection.count",
            callbacks=[_pool_observations],
            unit="{connection}",
            description="Connections of each Store's pools, idle or in use.",
        )


_stores: weakref.WeakSet[Store] = weakref.WeakSet()


def register_store(store: Store) -> None:
    """Report the connection pools of ``store`` in ``db.client.connection.count``."""
    if AVAILABLE:
        _stores.add(store)


def _pool_observations(options: Any) -> Iterator[Any]:
    assert _metrics is not None
    for store in list(_stores):
        used = idle = 0
        for client in list(store._clients.values()):
            pool = client.connection_pool
            # redis-py keeps these on every asyncio ConnectionPool (5.x to 8.x).
            used += len(getattr(pool, "_in_use_connections", ()))
            idle += len(getattr(pool, "_available_connections", ()))
        name = store.namespace
        for state, value in (("used", used), ("idle", idle)):
            yield _metrics.Observation(
                value,
                {"db.client.connection.state": state, "db.client.connection.pool.name": name},
            )


_INSTRUMENTS: _Instruments | None = _Instruments() if AVAILABLE else None


# ---------------------------------------------------------------------------------- spans


_seen_provider: list[Any] = [None, False]  # the last provider checked, and whether it traces


def _tracing() -> bool:
    """False while no tracer provider is set (the API's proxy) or a no-op one is.

    ``get_tracer_provider()`` costs microseconds per call (it looks at the environment while
    nothing is set): the API's module global it returns is read directly, and the check is
    cached per provider object. A provider named only by ``OTEL_PYTHON_TRACER_PROVIDER`` is
    seen once something calls ``get_tracer_provider()`` (any tracer does, on first use).
    """
    assert _trace is not None
    provider = getattr(_trace, "_TRACER_PROVIDER", _MISSING)
    if provider is _MISSING:  # a future API without that global: ask the public way
        provider = _trace.get_tracer_provider()
    if provider is None:
        return False
    if provider is not _seen_provider[0]:
        _seen_provider[0] = provider
        _seen_provider[1] = not isinstance(
            provider, (_trace.ProxyTracerProvider, _trace.NoOpTracerProvider)
        )
    return bool(_seen_provider[1])


_MISSING = object()


def _error_type(exc: BaseException) -> str:
    return type(exc).__qualname__


def _span_attributes(
    name: str, spec: OpSpec, scope: Scope, args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> dict[str, Any]:
    attrs = dict(scope.attributes)
    attrs.update(_METRIC_ATTRS.get(name) or _metric_attrs(name))
    if spec.shape in ("query", "iter"):
        attrs["flywheel_state.query.filters"] = sorted(k for k in kwargs if k not in _QUERY_PARAMS)
    if scope.include_ids and args:
        first = args[0]
        if spec.id_from == "arg" and isinstance(first, str):
            attrs["flywheel_state.record.id"] = first
        elif spec.id_from == "model" and isinstance(getattr(first, "id", None), str):
            attrs["flywheel_state.record.id"] = first.id
    return attrs


def _finished(
    owner: Any,
    name: str,
    spec: OpSpec,
    start: float,
    result: Any,
    exc: BaseException | None,
    kwargs: Mapping[str, Any],
) -> None:
    """Record the call's duration and counters."""
    elapsed = time.perf_counter() - start
    assert _INSTRUMENTS is not None
    attrs = _METRIC_ATTRS.get(name) or _metric_attrs(name)
    if exc is None or (spec.read and isinstance(exc, NotFoundError)):
        _INSTRUMENTS.duration.record(elapsed, attrs)
        if exc is None and spec.count is not None:
            for counter, amount in spec.count(owner, result, kwargs).items():
                if amount:
                    _INSTRUMENTS.counters[counter].add(amount, attrs)
        return
    _INSTRUMENTS.duration.record(elapsed, {**attrs, "error.type": _error_type(exc)})
    if isinstance(exc, ConflictError):
        _INSTRUMENTS.counters["conflicts"].add(1, attrs)
    elif isinstance(exc, CorruptRecordError):
        _INSTRUMENTS.counters["corrupt"].add(1, attrs)


_METRIC_ATTRS: dict[str, dict[str, str]] = {}


def _metric_attrs(name: str) -> dict[str, str]:
    attrs = {**_SYSTEM, "db.operation.name": name}
    _METRIC_ATTRS[name] = attrs
    return attrs


def _end_span(span: Any, spec: OpSpec, result: Any, exc: BaseException | None) -> None:
    assert _trace is not None
    if exc is None:
        if spec.read:
            span.set_attribute("flywheel_state.found", True)
        if spec.outcome is not None:
            span.set_attributes(dict(spec.outcome(result)))
    elif spec.read and isinstance(exc, NotFoundError):
        span.set_attribute("flywheel_state.found", False)
    else:
        kind = _error_type(exc)
        span.set_attribute("error.type", kind)
        span.add_event("exception", {"exception.type": kind})
        span.set_status(_trace.Status(_trace.StatusCode.ERROR))
    span.end()


def _wrap_coroutine(
    fn: Callable[..., Any], op: str, spec: OpSpec, prefix: Callable[[Any], str], scope: Any
) -> Callable[..., Any]:
    assert _trace is not None
    tracer = _trace.get_tracer(_NAME)
    names: dict[type, str] = {}

    @functools.wraps(fn)
    async def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        if _current.get() is self:  # a call from inside one of this object's own spans
            return await fn(self, *args, **kwargs)
        name = names.get(type(self))
        if name is None:
            name = names[type(self)] = f"{prefix(self)}.{op}"
        token = _current.set(self)
        start = time.perf_counter()
        try:
            if not _tracing():
                try:
                    result = await fn(self, *args, **kwargs)
                except BaseException as exc:
                    _finished(self, name, spec, start, None, exc, kwargs)
                    raise
                _finished(self, name, spec, start, result, None, kwargs)
                return result
            span = tracer.start_span(
                name,
                kind=_trace.SpanKind.CLIENT,
                attributes=_span_attributes(name, spec, scope(self), args, kwargs),
            )
            try:
                with _trace.use_span(
                    span, end_on_exit=False, record_exception=False, set_status_on_exception=False
                ):
                    result = await fn(self, *args, **kwargs)
            except BaseException as exc:
                _finished(self, name, spec, start, None, exc, kwargs)
                _end_span(span, spec, None, exc)
                raise
            _finished(self, name, spec, start, result, None, kwargs)
            _end_span(span, spec, result, None)
            return result
        finally:
            _current.reset(token)

    return wrapper


def _wrap_iterator(
    fn: Callable[..., Any], op: str, spec: OpSpec, prefix: Callable[[Any], str], scope: Any
) -> Callable[..., Any]:
    assert _trace is not None
    tracer = _trace.get_tracer(_NAME)

    @functools.wraps(fn)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        iterator = fn(self, *args, **kwargs)  # argument errors are raised here, as before
        return _traced_iteration(self, iterator, f"{prefix(self)}.{op}", spec, args, kwargs)

    async def _traced_iteration(
        self: Any,
        iterator: AsyncIterator[Any],
        name: str,
        spec: OpSpec,
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
    ) -> AsyncIterator[Any]:
        start = time.perf_counter()
        # The span is not made current: the consumer's own code runs between the items.
        span = (
            tracer.start_span(
                name,
                kind=_trace.SpanKind.CLIENT,
                attributes=_span_attributes(name, spec, scope(self), args, kwargs),
            )
            if _tracing()
            else None
        )
        count = 0
        try:
            async for item in iterator:
                count += 1
                yield item
        except BaseException as exc:
            if isinstance(exc, GeneratorExit):  # closed early by the consumer: not an error
                exc = None  # type: ignore[assignment]
            _finished(self, name, spec, start, None, exc, kwargs)
            if span is not None:
                span.set_attribute("flywheel_state.query.match_count", count)
                _end_span(span, spec, None, exc)
            raise
        finally:
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                await aclose()
        _finished(self, name, spec, start, None, None, kwargs)
        if span is not None:
            span.set_attribute("flywheel_state.query.match_count", count)
            _end_span(span, spec, None, None)

    return wrapper


def instrument(
    cls: type,
    *,
    prefix: Callable[[Any], str],
    scope: Callable[[Any], Scope],
    operations: Mapping[str, OpSpec] | Iterable[str],
) -> None:
    """Wrap methods of ``cls`` with spans and metrics (nothing happens without the API).

    Args:
        cls: The class whose methods to wrap (in place).
        prefix: Gives the span-name prefix of an instance (``"sessions"``).
        scope: Gives the span attributes and id policy of an instance.
        operations: Method names, or method name -> :class:`OpSpec`.
    """
    if not AVAILABLE:
        return
    specs = operations if isinstance(operations, Mapping) else {op: OpSpec() for op in operations}
    for op, spec in specs.items():
        fn = cls.__dict__[op]
        if getattr(fn, "__flywheel_instrumented__", False):
            continue
        make = _wrap_iterator if spec.shape == "iter" else _wrap_coroutine
        wrapped = make(fn, op, spec, prefix, scope)
        wrapped.__flywheel_instrumented__ = True  # type: ignore[attr-defined]
        setattr(cls, op, wrapped)


# ---------------------------------------------------------------------------------- wiring


def _match_count(value: Callable[[Any], int]) -> Callable[[Any], Mapping[str, Any]]:
    return lambda result: {"flywheel_state.query.match_count": value(result)}


def _repository_scope(repo: Any) -> Scope:
    attrs: dict[str, Any] = {
        "flywheel_state.namespace": repo.namespace,
        "flywheel_state.kind": repo.model.KIND,
    }
    attrs.update(server_of_client(repo._client))
    return Scope(attrs, bool(getattr(repo, "trace_ids", False)))


def _repository_prefix(repo: Any) -> str:
    return f"{repo.model.KIND}s"


def instrument_library() -> None:
    """Instrument the repositories, queries and the migration runner (idempotent)."""
    if not AVAILABLE:
        return
    from flywheel_state.migrations.runner import MigrationRunner
    from flywheel_state.repositories.base import DEFAULT, Repository
    from flywheel_state.repositories.query import QueryMixin
    from flywheel_state.repositories.sessions import SessionRepository

    def slides(repo: Any, kwargs: Mapping[str, Any]) -> bool:
        if not repo.sliding:
            return False
        ttl = kwargs.get("ttl", DEFAULT)
        return ttl is not None and not (ttl is DEFAULT and repo.default_ttl is None)

    def write_refresh(repo: Any, result: Any, kwargs: Mapping[str, Any]) -> Mapping[str, int]:
        return {"ttl_refreshes": 1} if slides(repo, kwargs) else {}

    def many_refresh(repo: Any, result: Any, kwargs: Mapping[str, Any]) -> Mapping[str, int]:
        return {"ttl_refreshes": len(result)} if slides(repo, kwargs) else {}

    def read_refresh(repo: Any, result: Any, kwargs: Mapping[str, Any]) -> Mapping[str, int]:
        if not getattr(repo, "refresh_on_read", False) or repo.default_ttl is None:
            return {}
        found = result if isinstance(result, list) else [result]
        return {"ttl_refreshes": sum(1 for r in found if r is not None)}

    def found_many(result: Any) -> Mapping[str, Any]:
        return {
            "flywheel_state.batch.size": len(result),
            "flywheel_state.found_count": sum(1 for r in result if r is not None),
        }

    instrument(
        Repository,
        prefix=_repository_prefix,
        scope=_repository_scope,
        operations={
            "save": OpSpec(id_from="model", count=write_refresh),
            "insert": OpSpec(id_from="model", count=write_refresh),
            "save_many": OpSpec(
                outcome=lambda r: {"flywheel_state.batch.size": len(r)}, count=many_refresh
            ),
            "get": OpSpec(id_from="arg", read=True, count=read_refresh),
            "get_or_none": OpSpec(
                id_from="arg",
                read=True,
                outcome=lambda r: {"flywheel_state.found": r is not None},
                count=read_refresh,
            ),
            "get_many": OpSpec(outcome=found_many, count=read_refresh),
            "exists": OpSpec(id_from="arg", outcome=lambda r: {"flywheel_state.found": r}),
            "ttl": OpSpec(id_from="arg", read=True),
            "update": OpSpec(id_from="arg", count=write_refresh),
            "touch": OpSpec(id_from="arg", count=write_refresh),
            "delete": OpSpec(id_from="arg", outcome=lambda r: {"flywheel_state.found": r}),
            "delete_many": OpSpec(outcome=lambda r: {"flywheel_state.deleted_count": r}),
        },
    )
    instrument(
        SessionRepository,
        prefix=_repository_prefix,
        scope=_repository_scope,
        operations={"append_history": OpSpec(id_from="arg", count=write_refresh)},
    )
    instrument(
        QueryMixin,
        prefix=_repository_prefix,
        scope=_repository_scope,
        operations={
            "find": OpSpec(shape="query", outcome=_match_count(lambda page: page.total)),
            "count": OpSpec(shape="query", outcome=_match_count(int)),
            "ids": OpSpec(shape="query", outcome=_match_count(len)),
            "iterate": OpSpec(shape="iter"),
            "stats": OpSpec(outcome=_match_count(lambda s: s["total"]["all"])),
        },
    )

    def runner_scope(runner: Any) -> Scope:
        attrs: dict[str, Any] = {"flywheel_state.namespace": runner.namespace}
        attrs.update(server_of_client(runner._client))
        return Scope(attrs)

    def rewritten(runner: Any, report: Any, kwargs: Mapping[str, Any]) -> Mapping[str, int]:
        return {} if report.dry_run else {"rewritten": report.documents_changed}

    def report_outcome(report: Any) -> Mapping[str, Any]:
        return {
            "flywheel_state.migration.dry_run": report.dry_run,
            "flywheel_state.migration.steps": len(report.steps),
            "flywheel_state.migration.documents_changed": report.documents_changed,
        }

    instrument(
        MigrationRunner,
        prefix=lambda _: "migrations",
        scope=runner_scope,
        operations={
            "current": OpSpec(),
            "status": OpSpec(),
            "history": OpSpec(),
            "plan": OpSpec(),
            "upgrade": OpSpec(outcome=report_outcome, count=rewritten),
            "downgrade": OpSpec(outcome=report_outcome, count=rewritten),
            "stamp": OpSpec(),
        },
    )


def instrument_compat(session_manager: type, execution_cache: type) -> None:
    """Instrument the original API's classes (``compat.sessions.*``, ``compat.executions.*``)."""

    def scope_for(kind: str) -> Callable[[Any], Scope]:
        def scope(manager: Any) -> Scope:
            attrs: dict[str, Any] = {
                "flywheel_state.namespace": manager.namespace,
                "flywheel_state.kind": kind,
            }
            attrs.update(server_of_settings(manager.settings))
            return Scope(attrs, manager.settings.trace_ids)

        return scope

    instrument(
        session_manager,
        prefix=lambda _: "compat.sessions",
        scope=scope_for("session"),
        operations={
            "save_session": OpSpec(id_from="model"),
            "load_session": OpSpec(id_from="arg"),
            "delete_session": OpSpec(id_from="arg"),
            "list_sessions": OpSpec(),
        },
    )
    instrument(
        execution_cache,
        prefix=lambda _: "compat.executions",
        scope=scope_for("execution"),
        operations={
            "cache_result": OpSpec(id_from="arg"),
            "get_result": OpSpec(id_from="arg"),
            "cache_flow_history": OpSpec(),
            "get_flow_history": OpSpec(),
        },
    )
