"""What the migration runner returns: status, history records, reports and progress events."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

__all__ = [
    "Direction",
    "MigrationProblem",
    "MigrationProgress",
    "MigrationRecord",
    "MigrationReport",
    "MigrationStatus",
    "StepReport",
]

Direction = Literal["upgrade", "downgrade"]

#: Problems kept in a report or record in full; the rest are only counted.
MAX_PROBLEMS_KEPT = 100
#: Dry-run samples kept per step.
MAX_SAMPLES = 5


@dataclass(frozen=True)
class MigrationProblem:
    """A value a migration could not map as it was; what it did instead."""

    key: str
    """The Redis key."""
    message: str
    """What was wrong and what was done (``status 'paused' is unknown: stored as idle``)."""
    field: str | None = None
    """The field concerned, if any."""
    value: Any = None
    """The original value (JSON-compatible)."""

    def to_json(self) -> str:
        """Compact JSON form (as stored in Redis)."""
        return json.dumps(asdict(self), default=str, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: bytes | str) -> MigrationProblem:
        """Parse :meth:`to_json` output."""
        return cls(**json.loads(raw))


@dataclass(frozen=True)
class MigrationProgress:
    """A progress event, sent to the ``progress`` callback after each batch."""

    revision: str
    """The revision being applied."""
    direction: Direction
    """``upgrade`` or ``downgrade``."""
    label: str
    """What the operation does (``legacy strings -> documents``)."""
    processed: int
    """Keys examined so far (including those of an interrupted earlier run)."""
    changed: int
    """Documents written so far (including those of an interrupted earlier run)."""
    total: int | None
    """Estimated keys to examine, or None when unknown."""
    done: bool = False
    """True on the last event of the operation."""


@dataclass
class StepReport:
    """What one revision did (or, in a dry run, would do)."""

    revision: str
    description: str
    direction: Direction
    dry_run: bool = False
    documents_scanned: int = 0
    """Keys examined by data operations."""
    documents_changed: int = 0
    """Documents written (dry run: that would be written)."""
    actions: list[str] = field(default_factory=list)
    """Schema actions taken, in order (``created index ns:session:idx:v1``)."""
    problems: list[MigrationProblem] = field(default_factory=list)
    """Values that could not be mapped as they were (at most 100 kept)."""
    problem_count: int = 0
    """How many problems there were in all."""
    samples: list[dict[str, Any]] = field(default_factory=list)
    """Dry run: a few keys with their value before and after."""
    resumed: bool = False
    """True when this run continued an interrupted one from its checkpoint."""
    duration_s: float = 0.0

    def add_problem(self, problem: MigrationProblem) -> None:
        """Record a problem (kept in full up to a limit, always counted)."""
        self.problem_count += 1
        if len(self.problems) < MAX_PROBLEMS_KEPT:
            self.problems.append(problem)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-compatible dict."""
        return asdict(self)


@dataclass
class MigrationReport:
    """The result of :meth:`MigrationRunner.upgrade` / :meth:`MigrationRunner.downgrade`."""

    direction: Direction
    from_revision: str | None
    """The revision before the run (None: base)."""
    to_revision: str | None
    """The revision after the run (a dry run: the one it would reach)."""
    dry_run: bool = False
    steps: list[StepReport] = field(default_factory=list)

    @property
    def documents_changed(self) -> int:
        """Documents written by all steps."""
        return sum(s.documents_changed for s in self.steps)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-compatible dict."""
        return {
            "direction": self.direction,
            "from_revision": self.from_revision,
            "to_revision": self.to_revision,
            "dry_run": self.dry_run,
            "documents_changed": self.documents_changed,
            "steps": [s.to_dict() for s in self.steps],
        }


@dataclass(frozen=True)
class MigrationRecord:
    """One entry of a namespace's migration history (an applied, undone or stamped revision)."""

    revision: str | None
    """The revision applied (upgrade), undone (downgrade) or stamped (None: base)."""
    action: Literal["upgrade", "downgrade", "stamp"]
    description: str
    from_revision: str | None
    to_revision: str | None
    started_at: datetime
    duration_s: float
    documents_changed: int
    host: str
    pid: int
    problem_count: int = 0
    problems: tuple[MigrationProblem, ...] = ()

    def to_json(self) -> str:
        """Compact JSON form (as stored in Redis)."""
        data = asdict(self)
        data["started_at"] = self.started_at.timestamp()
        data["problems"] = [asdict(p) for p in self.problems]
        return json.dumps(data, default=str, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: bytes | str) -> MigrationRecord:
        """Parse :meth:`to_json` output."""
        data = json.loads(raw)
        data["started_at"] = datetime.fromtimestamp(float(data["started_at"]), timezone.utc)
        data["problems"] = tuple(MigrationProblem(**p) for p in data.get("problems", ()))
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-compatible dict (datetimes as ISO strings)."""
        data = asdict(self)
        data["started_at"] = self.started_at.isoformat()
        return data


@dataclass(frozen=True)
class MigrationStatus:
    """Where a namespace stands: :meth:`MigrationRunner.status`."""

    namespace: str
    current: str | None
    """The applied revision (None: nothing applied)."""
    head: str | None
    """The newest revision this code knows."""
    pending: tuple[str, ...]
    """Revisions an upgrade to head would apply, in order."""
    applied: tuple[MigrationRecord, ...]
    """The record of each applied revision, oldest first."""
    known: bool
    """False when the applied revision is unknown to this code (data newer than the code)."""
    interrupted: dict[str, Any] | None = None
    """The step a killed run left unfinished (``revision``, ``direction``, ...), if any."""
    lock_holder: dict[str, Any] | None = None
    """Who holds the migration lock right now (``host``, ``pid``, ``since``, ``purpose``)."""
    resolution: str | None = None
    """With an interrupted step: the commands that resolve it (naming a missing script)."""
    interrupted_script_missing: bool = False
    """True when the interrupted step's script is not among this code's migrations."""

    @property
    def up_to_date(self) -> bool:
        """True when the applied revision is the head and no step is half done."""
        return self.known and not self.pending and self.interrupted is None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-compatible dict."""
        return {
            "namespace": self.namespace,
            "current": self.current,
            "head": self.head,
            "up_to_date": self.up_to_date,
            "known": self.known,
            "pending": list(self.pending),
            "interrupted": self.interrupted,
            "resolution": self.resolution,
            "interrupted_script_missing": self.interrupted_script_missing,
            "lock_holder": self.lock_holder,
            "applied": [r.to_dict() for r in self.applied],
        }
