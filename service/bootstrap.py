"""Start-up chores: make sure a tenant exists to talk to (filled in by the tenants module)."""

from __future__ import annotations


async def ensure_startup_tenant(url: str) -> None:
    return None
