"""Request-body schemas for routes that read the raw body themselves (gzip, size limits).

Those routes take no pydantic body parameter, so FastAPI cannot document them; ``json_body``
writes the model's schema into ``openapi_extra`` with component references, and
``install`` adds the referenced models under ``components/schemas`` so the document is valid.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

_REF = "#/components/schemas/{model}"
_DEFS: dict[str, Any] = {}


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template=_REF)
    _DEFS.update(schema.pop("$defs", {}))
    _DEFS[model.__name__] = schema
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": _REF.format(model=model.__name__)}}}}}


def install(app: FastAPI) -> None:
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = original()
            schema.setdefault("components", {}).setdefault("schemas", {}).update(_DEFS)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
