"""Start-up chores: the bootstrap tenant from the environment, and a development tenant on the
first `make run` (its keys are kept in the data directory so every start can print them)."""

from __future__ import annotations

import json
import os
import sys

import asyncpg

from service.db import data_dir
from service.tenants import create_tenant, ensure_tenant_with_keys


async def ensure_startup_tenant(url: str, *, development: bool = False) -> None:
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
    try:
        secret = os.environ.get("SLOTLOG_BOOTSTRAP_SECRET_KEY") or None
        public = os.environ.get("SLOTLOG_BOOTSTRAP_PUBLIC_KEY") or None
        if secret or public:
            await ensure_tenant_with_keys(pool, "default", secret, public)
            return
        if not development:
            return
        keys_file = data_dir() / "dev-tenant.json"
        if keys_file.exists():
            keys = json.loads(keys_file.read_text())
        else:
            keys = await create_tenant(pool, f"development-{os.getpid()}")
            keys_file.parent.mkdir(parents=True, exist_ok=True)
            keys_file.write_text(json.dumps(keys, indent=2))
            keys_file.chmod(0o600)
        print(
            "slotlog: development tenant (keys kept in "
            f"{keys_file}):\n{json.dumps(keys, indent=2)}",
            file=sys.stderr,
            flush=True,
        )
    finally:
        await pool.close()
