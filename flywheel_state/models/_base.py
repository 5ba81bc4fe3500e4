"""The base of every stored document."""

from __future__ import annotations

import abc
from typing import Any, ClassVar

from aredis_om import JsonModel
from pydantic import BaseModel, ConfigDict, model_validator
from pydantic import Field as PydanticField

from flywheel_state.models._upgrades import upgrade_document

__all__ = ["Document"]


class _UnboundDatabase:
    """Stands in for redis-om's global connection, which flywheel-state never uses.

    redis-om binds a client to each model class at import (from REDIS_OM_URL) and to the first
    event loop. flywheel-state does all I/O through the Store's client instead, so a model's own
    I/O methods (``Session.find()``, ``session.save()``) are pointed here and fail clearly.
    """

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(
            "flywheel-state models do no I/O of their own: use the Store's repositories "
            "(store.sessions / store.executions) instead of redis-om's model methods."
        )

    def __repr__(self) -> str:
        return "<unbound: use Store repositories>"


class Document(JsonModel, abc.ABC):
    """Common fields and behaviour of stored documents.

    ``schema_version`` is the document's shape (bumped by migrations that change it);
    ``version`` is bumped by every write and used for optimistic concurrency.
    """

    model_config = ConfigDict(validate_assignment=False, use_enum_values=False)

    # redis-om declares a hidden ``pk`` field whose validator mints a ULID on every validation;
    # the models use ``id`` as their primary key, so ``pk`` is redeclared as inert and unstored.
    pk: str | None = PydanticField(default=None, exclude=True)

    schema_version: int = 1
    version: int = 0

    #: The current shape of this kind of document; migrations that change it bump it.
    SCHEMA_VERSION: ClassVar[int] = 1
    #: The key segment after the namespace: ``{namespace}:{KIND}:{id}``.
    KIND: ClassVar[str] = ""

    # redis-om's __init__ re-checks the primary key declaration and builds an un-awaited
    # has_redis_json() coroutine on every instance; worse, any custom __init__ makes pydantic
    # validate every document twice in model_validate_json (from JSON, then again inside
    # __init__). Plain pydantic construction, marked as such, keeps a single validation pass.
    def __init__(self, /, **data: Any) -> None:
        BaseModel.__init__(self, **data)

    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]

    @model_validator(mode="before")
    @classmethod
    def _upgrade_schema(cls, data: Any) -> Any:
        # Stored documents of an older shape are upgraded in memory (see models/_upgrades.py);
        # the current shape costs one lookup. A dict without schema_version is a new object:
        # it gets the class's SCHEMA_VERSION (a model bumps only that, not the field default).
        if type(data) is dict:
            version = data.get("schema_version")
            if version is None:
                if cls.SCHEMA_VERSION != 1:
                    return {**data, "schema_version": cls.SCHEMA_VERSION}
            elif version != cls.SCHEMA_VERSION:
                return upgrade_document(cls.KIND, data, cls.SCHEMA_VERSION)
        return data

    class Meta:
        database = _UnboundDatabase()
        global_key_prefix = "flywheel_state"
