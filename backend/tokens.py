"""`flywheel token create|list|revoke`: access tokens for clients, admins and scrapers, stored hashed."""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Sequence

from backend.auth import ROLES, hash_token, new_token, person_of
from backend.store import open_store
from core.config import Settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flywheel token", description=__doc__)
    sub = parser.add_subparsers(dest="action", required=True)
    create = sub.add_parser("create", help="create a token and print it once")
    create.add_argument(
        "--role",
        choices=ROLES,
        default="client",
        help="client: an editor's; admin: dashboard and trainer; metrics: a scraper's (/metrics only)",
    )
    create.add_argument(
        "--admin", action="store_const", const="admin", dest="role", help="same as --role admin"
    )
    create.add_argument("--name", default="", help="who or what it is for")
    sub.add_parser("list", help="list tokens (never their values)")
    revoke = sub.add_parser("revoke", help="revoke a token by id")
    revoke.add_argument("id", type=int, help="the token's id, as `flywheel token list` shows it")
    return parser


async def _run(settings: Settings, args: argparse.Namespace) -> int:
    store = await open_store(settings)
    try:
        if args.action == "create":
            token = new_token()
            token_id = await store.add_token(args.name or args.role, args.role, hash_token(token))
            person = person_of(hash_token(token))
            print(f"# token {token_id} ({args.role}, person {person}); shown once, store it now")
            print(token)
        elif args.action == "list":
            for t in await store.tokens(include_revoked=True):
                state = "revoked" if t["revoked_at"] else "active"
                created = time.strftime("%Y-%m-%d %H:%M", time.localtime(t["created_at"]))
                person = person_of(t["hash"])
                print(f"{t['id']:>4}  {t['role']:<7}  {state:<7}  {created}  {person}  {t['name']}")
        elif not await store.revoke_token(args.id):
            print(f"no active token with id {args.id}")
            return 1
        else:
            print(f"revoked token {args.id}")
    finally:
        await store.close()
    return 0


def main(settings: Settings, argv: Sequence[str]) -> int:
    return asyncio.run(_run(settings, _parser().parse_args(list(argv))))
