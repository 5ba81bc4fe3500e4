"""The base of every stored document."""

from __future__ import annotations

import abc
import json
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

from annotated_types import Ge, Le
from aredis_om import JsonModel
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic import Field as PydanticField

from flywheel_state.models._upgrades import upgrade_document

if TYPE_CHECKING:
    from typing_extensions import Self

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

    # Assignments are validated, so a bad value fails where it is assigned (a pydantic
    # ValidationError) instead of being saved and breaking later reads or the index.
    model_config = ConfigDict(validate_assignment=True, use_enum_values=False)

    # redis-om declares a hidden ``pk`` field whose validator mints a ULID on every validation;
    # the models use ``id`` as their primary key, so ``pk`` is redeclared as inert and unstored.
    pk: str | None = PydanticField(default=None, exclude=True)

    if TYPE_CHECKING:  # each kind declares it (its primary key); not a field of the base
        id: str

    schema_version: Annotated[int, Ge(0), Le(2**53)] = 1
    version: Annotated[int, Ge(0), Le(2**53)] = 0

    #: The current shape of this kind of document; migrations that change it bump it.
    SCHEMA_VERSION: ClassVar[int] = 1
    #: The key segment after the namespace: ``{namespace}:{KIND}:{id}``.
    KIND: ClassVar[str] = ""
    #: Fields holding free-form values (``Any``): checked on every write to be plain JSON data
    #: that reads back equal (see ``repositories.base.check_free_form``).
    FREE_FORM: ClassVar[tuple[str, ...]] = ()

    # redis-om's __init__ re-checks the primary key declaration and builds an un-awaited
    # has_redis_json() coroutine on every instance; worse, any custom __init__ makes pydantic
    # validate every document twice in model_validate_json (from JSON, then again inside
    # __init__). Plain pydantic construction, marked as such, keeps a single validation pass.
    def __init__(self, /, **data: Any) -> None:
        BaseModel.__init__(self, **type(self)._upgraded(data))

    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]

    # Stored documents of an older shape are upgraded in memory (register_upgrade, see
    # models/_upgrades.py).
    # This is done around validation rather than in a mode="before" model validator: such a
    # validator makes pydantic build the whole document as Python objects before validating,
    # which costs about a third of a read. Reads of current documents pay one int comparison.

    @classmethod
    def _upgraded(cls, data: dict[str, Any]) -> dict[str, Any]:
        """``data`` brought to SCHEMA_VERSION; without schema_version it is a new object."""
        version = data.get("schema_version")
        if version is None:
            return {**data, "schema_version": cls.SCHEMA_VERSION}
        if version == cls.SCHEMA_VERSION:
            return data
        try:
            return upgrade_document(cls.KIND, data, cls.SCHEMA_VERSION)
        except ValueError as exc:
            raise ValidationError.from_exception_data(
                cls.__name__,
                [
                    {
                        "type": "value_error",
                        "loc": ("schema_version",),
                        "input": version,
                        "ctx": {"error": exc},
                    }
                ],
            ) from exc

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any) -> Self:
        """Validate ``obj``, upgrading a stored dict of an older schema version first."""
        if type(obj) is dict:
            obj = cls._upgraded(obj)
        return super().model_validate(obj, **kwargs)

    @classmethod
    def model_validate_json(cls, json_data: str | bytes | bytearray, **kwargs: Any) -> Self:
        """Validate a stored JSON document, upgrading an older schema version in memory."""
        try:
            if kwargs:
                model = super().model_validate_json(json_data, **kwargs)
            else:
                # What BaseModel.model_validate_json does without options, minus a Python
                # frame and its keyword arguments: on every read.
                model = cls.__pydantic_validator__.validate_json(json_data)
        except ValidationError as error:
            # An older shape may not validate as the current one: upgrade it, then validate.
            try:
                data = json.loads(json_data)
            except ValueError:
                raise error from None
            if type(data) is not dict or data.get("schema_version") in (
                None,
                cls.SCHEMA_VERSION,
            ):
                raise
            return cls.model_validate(data, **kwargs)
        if model.schema_version != cls.SCHEMA_VERSION:
            return cls.model_validate(json.loads(json_data), **kwargs)
        return model

    class Meta:
        # The only redis-om setting the models use: their own I/O methods fail clearly. Keys and
        # indexes are the repositories' and the migrations' (no redis-om key prefix).
        database = _UnboundDatabase()
