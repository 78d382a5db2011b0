"""How a setting added after schema 1 is declared, so that adding it changes no existing run id, and how a setting of
schema 1 that turned out to say how a run executes (not what it computes) keeps every existing id."""

from __future__ import annotations

from typing import Any

from pydantic import Field
from pydantic.fields import FieldInfo

_OMIT_AT_DEFAULT = "spikesuite_omit_from_run_id_at_default"
_PINNED = "spikesuite_run_id_value"


def added_field(default: Any, **kwargs: Any) -> Any:
    """A ``Field`` for a setting added after schema 1: at ``default`` it stays out of run ids (``suite.config.study``)."""
    extra = dict(kwargs.pop("json_schema_extra", None) or {})
    extra[_OMIT_AT_DEFAULT] = True
    return Field(default, json_schema_extra=extra, **kwargs)


def omitted_at_default(field: FieldInfo) -> bool:
    """Declared with ``added_field``: left out of run ids at its default."""
    extra = field.json_schema_extra
    return isinstance(extra, dict) and bool(extra.get(_OMIT_AT_DEFAULT))


def execution_field(default: Any, *, id_value: Any, **kwargs: Any) -> Any:
    """A ``Field`` for a schema-1 setting that says how a run executes, not what it computes (``train.compile``):
    the run id hashes ``id_value`` (its schema-1 default) whatever it is set to, so every setting of it keeps the id
    that runs recorded before it became an execution detail have."""
    extra = dict(kwargs.pop("json_schema_extra", None) or {})
    extra[_PINNED] = id_value
    return Field(default, json_schema_extra=extra, **kwargs)


def pinned_id_value(field: FieldInfo) -> tuple[bool, Any]:
    """``(True, value)`` for an ``execution_field`` (the value its run ids hash), else ``(False, None)``."""
    extra = field.json_schema_extra
    if isinstance(extra, dict) and _PINNED in extra:
        return True, extra[_PINNED]
    return False, None
