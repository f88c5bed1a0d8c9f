"""Tenants and API keys: creation, bootstrap keys, and authentication of a bearer key.

Keys are random, shown once, and stored as SHA-256 digests (they are high-entropy secrets, so a
fast hash is the right tool; a password KDF would only slow every request). `sk_` keys may do
everything in their tenant; `pk_` keys may only read availability and the public session listing.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["secret", "public"]


@dataclass(frozen=True, slots=True)
class Principal:
    tenant_id: str
    kind: Kind
    key_id: str


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def key_id_of(key: str) -> str:
    return "key_" + hashlib.sha256(key.encode()).hexdigest()[:12]


def new_key(kind: Kind) -> str:
    return ("sk_" if kind == "secret" else "pk_") + secrets.token_urlsafe(24)


async def _add_key(db: Any, tenant_id: str, key: str, kind: Kind) -> None:
    await db.execute(
        "INSERT INTO api_keys (key_hash, key_id, tenant_id, kind) VALUES ($1, $2, $3, $4) "
        "ON CONFLICT (key_hash) DO NOTHING",
        digest(key),
        key_id_of(key),
        tenant_id,
        kind,
    )


async def create_tenant(db: Any, name: str) -> dict[str, str]:
    """A new tenant with one secret and one public key; the keys are returned once."""
    tenant_id = "tn_" + secrets.token_hex(8)
    secret, public = new_key("secret"), new_key("public")
    async with db.acquire() as conn, conn.transaction():
        await conn.execute("INSERT INTO tenants (tenant_id, name) VALUES ($1, $2)", tenant_id, name)
        await _add_key(conn, tenant_id, secret, "secret")
        await _add_key(conn, tenant_id, public, "public")
    return {"tenant_id": tenant_id, "secret_key": secret, "public_key": public}


class BootstrapKeyError(ValueError):
    """A bootstrap key that cannot be the bootstrap tenant's: a wrong prefix, or already a key
    of another tenant."""


async def ensure_tenant_with_keys(
    db: Any, name: str, secret_key: str | None, public_key: str | None
) -> str:
    """Make sure tenant `name` exists and accepts exactly these keys (bootstrap): the keys given
    are added and every other key of the tenant is removed, so that a key replaced in the
    environment stops working at the next start-up (in a process already running, when its
    KeyCache entry expires). Raises BootstrapKeyError, changing nothing, for a key with the
    wrong prefix or one that is already another tenant's."""
    wanted: dict[Kind, str] = {}
    if secret_key:
        wanted["secret"] = secret_key
    if public_key:
        wanted["public"] = public_key
    for kind, key in wanted.items():
        prefix = "sk_" if kind == "secret" else "pk_"
        if not key.startswith(prefix):
            raise BootstrapKeyError(f"the bootstrap {kind} key must start with {prefix!r}")
    async with db.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(7320002)")
        tenant_id = await conn.fetchval("SELECT tenant_id FROM tenants WHERE name = $1", name)
        if tenant_id is None:
            tenant_id = "tn_" + secrets.token_hex(8)
            await conn.execute(
                "INSERT INTO tenants (tenant_id, name) VALUES ($1, $2)", tenant_id, name
            )
        for kind, key in wanted.items():
            owner = await conn.fetchval(
                "SELECT tenant_id FROM api_keys WHERE key_hash = $1", digest(key)
            )
            if owner is not None and owner != tenant_id:
                raise BootstrapKeyError(
                    f"the bootstrap {kind} key is already a key of tenant {owner}: "
                    "give the bootstrap tenant a key of its own"
                )
        await conn.execute(
            "DELETE FROM api_keys WHERE tenant_id = $1 AND key_hash <> ALL($2::bytea[])",
            tenant_id,
            [digest(key) for key in wanted.values()],
        )
        for kind, key in wanted.items():
            await _add_key(conn, tenant_id, key, kind)
    return str(tenant_id)


class KeyCache:
    """Authenticates keys with a short in-process cache (a key lookup per request is waste)."""

    def __init__(self, ttl: float = 30.0) -> None:
        self.ttl = ttl
        self._cache: dict[bytes, tuple[float, Principal | None]] = {}

    async def lookup(self, db: Any, key: str) -> Principal | None:
        h = digest(key)
        now = time.monotonic()
        hit = self._cache.get(h)
        if hit is not None and hit[0] > now:
            return hit[1]
        row = await db.fetchrow(
            "SELECT tenant_id, kind, key_id FROM api_keys WHERE key_hash = $1", h
        )
        principal = Principal(row["tenant_id"], row["kind"], row["key_id"]) if row else None
        # Unknown keys are cached briefly too, so a flood of bad keys cannot flood the database.
        self._cache[h] = (now + (self.ttl if principal else 2.0), principal)
        if len(self._cache) > 10_000:
            self._cache.clear()
        return principal
