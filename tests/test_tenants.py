"""Tenants and keys: the CLI, bootstrap keys from the environment, hashed storage."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import asyncpg

from service.tenants import KeyCache, digest, ensure_tenant_with_keys


def test_tenants_create_prints_the_keys_once(database_url: str) -> None:
    env = {**os.environ, "DATABASE_URL": database_url}
    out = subprocess.run(
        [sys.executable, "-m", "service", "tenants", "create", "Acme"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    keys = json.loads(out.stdout)
    assert set(keys) == {"tenant_id", "secret_key", "public_key"}
    assert keys["secret_key"].startswith("sk_") and keys["public_key"].startswith("pk_")
    again = subprocess.run(
        [sys.executable, "-m", "service", "tenants", "create", "Acme"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 1 and "already exists" in again.stderr


async def test_bootstrap_keys_are_idempotent_and_hashed(pool: asyncpg.Pool) -> None:
    first = await ensure_tenant_with_keys(pool, "default", "sk_boot_1", "pk_boot_1")
    second = await ensure_tenant_with_keys(pool, "default", "sk_boot_1", "pk_boot_1")
    assert first == second
    assert await pool.fetchval("SELECT count(*) FROM tenants") == 1
    rows = await pool.fetch("SELECT key_hash, kind FROM api_keys ORDER BY kind")
    assert [(bytes(r["key_hash"]), r["kind"]) for r in rows] == [
        (digest("pk_boot_1"), "public"),
        (digest("sk_boot_1"), "secret"),
    ]
    principal = await KeyCache().lookup(pool, "sk_boot_1")
    assert principal is not None and principal.tenant_id == first
    assert principal.kind == "secret"
    assert await KeyCache().lookup(pool, "sk_wrong") is None
