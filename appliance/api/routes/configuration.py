"""``/api/v1/config`` and ``/api/v1/rules``: read, validate and replace config.yaml and
detection.yml, and the JSON Schemas they are checked against (configfiles.py)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from appliance.flowenricher.config import CONFIG_SCHEMA, RULES_SCHEMA, load_schema

from ..configfiles import Parsed, parse_body
from ..deps import Admin, Context, Reader
from ..errors import ERROR_RESPONSES, ErrorBody
from ..schemas import ConfigView, RulesView, Validated

router = APIRouter(prefix="/api/v1", tags=["config and rules"], responses=ERROR_RESPONSES)

_REPLACE_ERRORS: dict[int | str, dict[str, Any]] = {
    409: {"model": ErrorBody, "description": "The service runs without such a file: nothing to replace"},
    500: {"model": ErrorBody, "description": "The service could not apply it; file and settings unchanged"},
}


def _body(kind: Literal["object", "document"], what: str) -> dict[str, Any]:
    json_schema: dict[str, Any] = {"type": "object"} if kind == "object" else {"type": ["array", "object"]}
    return {"requestBody": {"required": True, "description": f"The {what} as JSON, or as YAML text (any other "
                            "content type). YAML text is saved as sent, comments included.",
                            "content": {"application/json": {"schema": json_schema},
                                        "application/yaml": {"schema": {"type": "string"}}}}}


async def _parsed(request: Request, source: str) -> Parsed:
    return parse_body(await request.body(), request.headers.get("content-type", ""), source)


@router.get("/config", response_model=ConfigView)
def get_config(ctx: Context, _: Reader) -> ConfigView:
    """The running config, as written and with every default (secrets masked)."""
    return ConfigView(**ctx.files.config_view())


@router.put("/config", response_model=ConfigView, responses=_REPLACE_ERRORS,
            openapi_extra=_body("object", "config.yaml document"))
async def put_config(request: Request, ctx: Context, _: Admin) -> ConfigView:
    """Replace the config: validated against the schema, saved atomically, applied to the
    running service.  A masked secret (********) keeps the current value.  On any
    failure the running config and the file stay as they were."""
    parsed = await _parsed(request, "config")
    await run_in_threadpool(ctx.files.replace_config, parsed)
    return ConfigView(**ctx.files.config_view())


@router.post("/config/validate", response_model=Validated, openapi_extra=_body("object", "config.yaml document"))
async def validate_config(request: Request, ctx: Context, _: Reader) -> Validated:
    """Validate a config without saving or applying it (422 with every problem)."""
    parsed = await _parsed(request, "config")
    await run_in_threadpool(ctx.files.validate_config, parsed)
    return Validated(detail="the config is valid")


@router.get("/rules", response_model=RulesView)
def get_rules(ctx: Context, _: Reader) -> RulesView:
    """The running detection rules, every default filled in."""
    return RulesView(**ctx.files.rules_view())


@router.put("/rules", response_model=RulesView, responses=_REPLACE_ERRORS,
            openapi_extra=_body("document", "detection.yml document (a list of rules, or {rules: [...]})"))
async def put_rules(request: Request, ctx: Context, _: Admin) -> RulesView:
    """Replace the detection rules: validated, saved atomically, applied to the running
    engine.  On any failure the running rules and the file stay as they were."""
    parsed = await _parsed(request, "rules")
    await run_in_threadpool(ctx.files.replace_rules, parsed)
    return RulesView(**ctx.files.rules_view())


@router.post("/rules/validate", response_model=Validated,
             openapi_extra=_body("document", "detection.yml document"))
async def validate_rules(request: Request, ctx: Context, _: Reader) -> Validated:
    """Validate rules without saving or applying them (422 with every problem)."""
    parsed = await _parsed(request, "rules")
    rules = await run_in_threadpool(ctx.files.validate_rules, parsed)
    return Validated(detail=f"{len(rules)} valid rules")


@router.get("/schemas/{name}", response_model=dict[str, Any],
            responses={404: {"model": ErrorBody, "description": "No such schema"}})
def schema(name: Literal["config", "rules"], _: Reader) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) that config.yaml or detection.yml is checked against."""
    return dict(load_schema(CONFIG_SCHEMA if name == "config" else RULES_SCHEMA))
