"""Tenants and keys: the CLI, bootstrap keys from the environment, hashed storage."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import asyncpg
import pytest

from service.tenants import BootstrapKeyError, KeyCache, create_tenant, ensure_tenant_with_keys


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


async def test_bootstrap_keys_are_idempotent_and_stored_as_their_sha256(pool: asyncpg.Pool) -> None:
    first = await ensure_tenant_with_keys(pool, "default", "sk_boot_1", "pk_boot_1")
    second = await ensure_tenant_with_keys(pool, "default", "sk_boot_1", "pk_boot_1")
    assert first == second
    assert await pool.fetchval("SELECT count(*) FROM tenants") == 1
    rows = await pool.fetch("SELECT key_hash, kind FROM api_keys ORDER BY kind")
    assert [(bytes(r["key_hash"]), r["kind"]) for r in rows] == [
        (hashlib.sha256(b"pk_boot_1").digest(), "public"),
        (hashlib.sha256(b"sk_boot_1").digest(), "secret"),
    ]
    principal = await KeyCache().lookup(pool, "sk_boot_1")
    assert principal is not None and principal.tenant_id == first
    assert principal.kind == "secret"
    assert await KeyCache().lookup(pool, "sk_wrong") is None


async def tenant_of(pool: asyncpg.Pool, key: str) -> str | None:
    principal = await KeyCache().lookup(pool, key)  # a fresh cache: what the database says
    return None if principal is None else principal.tenant_id


async def test_bootstrap_keys_replaced_in_the_environment_stop_working(pool: asyncpg.Pool) -> None:
    # SPEC §1: the bootstrap tenant has exactly the keys the environment gives, so replacing a
    # leaked key there and restarting revokes it.
    other = await create_tenant(pool, "Other")
    tenant = await ensure_tenant_with_keys(pool, "default", "sk_old", "pk_old")
    assert await ensure_tenant_with_keys(pool, "default", "sk_new", "pk_new") == tenant
    assert await tenant_of(pool, "sk_old") is None and await tenant_of(pool, "pk_old") is None
    assert await tenant_of(pool, "sk_new") == tenant and await tenant_of(pool, "pk_new") == tenant
    # Only a secret key given: the tenant keeps no public key.
    await ensure_tenant_with_keys(pool, "default", "sk_new", None)
    assert await tenant_of(pool, "pk_new") is None and await tenant_of(pool, "sk_new") == tenant
    # Other tenants' keys are theirs.
    assert await tenant_of(pool, other["secret_key"]) == other["tenant_id"]
    assert await tenant_of(pool, other["public_key"]) == other["tenant_id"]


async def test_a_bootstrap_key_of_another_tenant_is_refused_and_changes_nothing(
    pool: asyncpg.Pool,
) -> None:
    other = await create_tenant(pool, "Other")
    tenant = await ensure_tenant_with_keys(pool, "default", "sk_boot_1", "pk_boot_1")
    with pytest.raises(BootstrapKeyError, match=f"already a key of tenant {other['tenant_id']}"):
        await ensure_tenant_with_keys(pool, "default", other["secret_key"], "pk_boot_2")
    assert (
        await tenant_of(pool, "sk_boot_1") == tenant
        and await tenant_of(pool, "pk_boot_1") == tenant
    )
    assert await tenant_of(pool, "pk_boot_2") is None
    assert await tenant_of(pool, other["secret_key"]) == other["tenant_id"]
    with pytest.raises(BootstrapKeyError, match="must start with 'pk_'"):
        await ensure_tenant_with_keys(pool, "default", "sk_boot_1", "sk_not_public")
    assert await tenant_of(pool, "pk_boot_1") == tenant


def test_serve_refuses_a_bad_bootstrap_key_in_one_line(database_url: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "service", "serve", "--port", "0"],
        env={**os.environ, "DATABASE_URL": database_url, "SLOTLOG_BOOTSTRAP_SECRET_KEY": "pk_x"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "slotlog: the bootstrap secret key must start with 'sk_'" in out.stderr
    assert "Traceback" not in out.stderr
