"""How a setting added after schema 1 is declared, so that adding it changes no existing run id."""

from __future__ import annotations

from typing import Any

from pydantic import Field
from pydantic.fields import FieldInfo

_OMIT_AT_DEFAULT = "spikesuite_omit_from_run_id_at_default"


def added_field(default: Any, **kwargs: Any) -> Any:
    """A ``Field`` for a setting added after schema 1: at ``default`` it stays out of run ids (``suite.config.study``)."""
    extra = dict(kwargs.pop("json_schema_extra", None) or {})
    extra[_OMIT_AT_DEFAULT] = True
    return Field(default, json_schema_extra=extra, **kwargs)


def omitted_at_default(field: FieldInfo) -> bool:
    """Declared with ``added_field``: left out of run ids at its default."""
    extra = field.json_schema_extra
    return isinstance(extra, dict) and bool(extra.get(_OMIT_AT_DEFAULT))
