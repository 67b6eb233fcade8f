"""Template rendering in Jinja2's sandbox.

Templates come from users, so they render in `SandboxedEnvironment` (no attribute access to
Python internals) with `StrictUndefined` (a misspelt variable is an error, not a blank).
Campaign launch renders every step against its contacts first, so a template that cannot
render is rejected then, never halfway through a send.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import SandboxedEnvironment

_env = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)

#: Contact fields every template may use; unmapped CSV columns come in as `attributes`.
CONTACT_FIELDS = (
    "email",
    "first_name",
    "last_name",
    "full_name",
    "company",
    "job_title",
    "phone",
    "website",
    "city",
    "country",
    "timezone",
)


class TemplateRenderError(ValueError):
    pass


def variable_name(key: str) -> str:
    """A CSV header as a template variable: "Favourite Penguin" → favourite_penguin."""
    return re.sub(r"\W+", "_", key.strip().lower()).strip("_")


def contact_context(contact: Mapping[str, Any]) -> dict[str, Any]:
    """The variables a template sees for one contact: its attributes, then its fields."""
    attributes = dict(contact.get("attributes") or {})
    context: dict[str, Any] = {variable_name(k): v for k, v in attributes.items()}
    context["attributes"] = attributes
    for field in CONTACT_FIELDS:
        context[field] = contact.get(field) or ""
    return context


def render(source: str, context: Mapping[str, Any], *, where: str = "template") -> str:
    try:
        return _env.from_string(source).render(context)
    except TemplateError as exc:
        raise TemplateRenderError(f"{where}: {exc.__class__.__name__}: {exc}") from exc


def check_syntax(source: str, *, where: str = "template") -> None:
    """Parse without rendering: for templates that have no contacts to render against yet."""
    try:
        _env.parse(source)
    except TemplateError as exc:
        raise TemplateRenderError(f"{where}: {exc.__class__.__name__}: {exc}") from exc
