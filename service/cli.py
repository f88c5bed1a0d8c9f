"""The `slotlog` command: serve | migrate | tenants create | replay | history | project.

`serve` with no DATABASE_URL starts the embedded PostgreSQL under SLOTLOG_DATA_DIR, applies the
schema, makes sure a tenant exists, and runs uvicorn; on exit (SIGTERM, Ctrl-C) it stops the
embedded server so no postgres process is left behind.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import os
import signal
import sys
from collections.abc import Callable, Sequence

from service.db import EmbeddedPostgres, data_dir, ensure_database, migrate


def _database_url() -> tuple[str, EmbeddedPostgres | None]:
    url = os.environ.get("DATABASE_URL")
    if url:
        return url, None
    embedded = EmbeddedPostgres(data_dir())
    url = asyncio.run(ensure_database(embedded.admin_url))
    os.environ["DATABASE_URL"] = url
    return url, embedded


def _die_with_parent() -> None:
    # `make run` is our parent: if it is killed, take us (and so the embedded server) down too.
    if sys.platform.startswith("linux"):
        with_libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        with_libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    _die_with_parent()
    # SIGTERM becomes KeyboardInterrupt in this (parent) process, so `finally` stops postgres
    # even when uvicorn runs several worker processes.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    url, embedded = _database_url()
    try:
        asyncio.run(migrate(url))
        from service.bootstrap import ensure_startup_tenant
        from service.tenants import BootstrapKeyError

        try:
            asyncio.run(ensure_startup_tenant(url, development=embedded is not None))
        except BootstrapKeyError as e:
            print(f"slotlog: {e}", file=sys.stderr, flush=True)
            return 2
        print(f"slotlog: serving on http://{args.host}:{args.port}", file=sys.stderr, flush=True)
        uvicorn.run(
            "service.app:create_app",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=5,
        )
    except KeyboardInterrupt:
        pass
    finally:
        if embedded is not None:
            embedded.stop()
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    url, embedded = _database_url()
    try:
        asyncio.run(migrate(url))
        print("schema applied", file=sys.stderr)
    finally:
        if embedded is not None:
            embedded.stop()
    return 0


def cmd_tenants_create(args: argparse.Namespace) -> int:
    import json

    import asyncpg

    from service.tenants import create_tenant

    url, embedded = _database_url()

    async def run() -> dict[str, str]:
        await migrate(url)
        pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
        try:
            return await create_tenant(pool, args.name)
        finally:
            await pool.close()

    try:
        try:
            keys = asyncio.run(run())
        except asyncpg.UniqueViolationError:
            print(f"slotlog: a tenant named {args.name!r} already exists", file=sys.stderr)
            return 1
        print(json.dumps(keys, indent=2))
    finally:
        if embedded is not None:
            embedded.stop()
    return 0


def _with_database(run: Callable[[str], int]) -> int:
    url, embedded = _database_url()
    try:
        asyncio.run(migrate(url))
        return run(url)
    finally:
        if embedded is not None:
            embedded.stop()


def cmd_replay(args: argparse.Namespace) -> int:
    from service.admin import replay_main

    return _with_database(lambda url: replay_main(url, args.projection, verify=args.verify))


def cmd_history(args: argparse.Namespace) -> int:
    from service.admin import history_main

    return _with_database(lambda url: history_main(url, args.booking_id, args.tenant))


def cmd_project(args: argparse.Namespace) -> int:
    from service.admin import project_main

    return _with_database(lambda url: project_main(url, until_caught_up=args.until_caught_up))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slotlog", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve the HTTP API")
    serve.add_argument("--host", default=os.environ.get("SLOTLOG_HOST", "127.0.0.1"))
    serve.add_argument("--port", type=int, default=int(os.environ.get("SLOTLOG_PORT", "8000")))
    serve.add_argument("--workers", type=int, default=int(os.environ.get("SLOTLOG_WORKERS", "1")))
    serve.set_defaults(func=cmd_serve)

    mig = sub.add_parser("migrate", help="apply schema.sql (idempotent)")
    mig.set_defaults(func=cmd_migrate)

    tenants = sub.add_parser("tenants", help="manage tenants")
    tsub = tenants.add_subparsers(dest="tenants_command", required=True)
    tcreate = tsub.add_parser("create", help="create a tenant; prints its id and keys as JSON")
    tcreate.add_argument("name")
    tcreate.set_defaults(func=cmd_tenants_create)

    replay = sub.add_parser(
        "replay", help="rebuild read models from the log and swap them in (or --verify)"
    )
    replay.add_argument(
        "--projection", action="append", metavar="NAME", help="only this one (repeatable)"
    )
    replay.add_argument(
        "--verify", action="store_true", help="compare with the live tables; exit 1 on a difference"
    )
    replay.set_defaults(func=cmd_replay)

    history = sub.add_parser("history", help="a booking's events as a table (audit trail)")
    history.add_argument("booking_id")
    history.add_argument("--tenant", help="the tenant id, when the id exists in several")
    history.set_defaults(func=cmd_history)

    project = sub.add_parser("project", help="run the projection runner (one per cluster)")
    project.add_argument(
        "--until-caught-up", action="store_true", help="exit once no projection lags"
    )
    project.set_defaults(func=cmd_project)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    sys.exit(args.func(args))
