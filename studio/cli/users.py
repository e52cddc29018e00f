"""``python -m studio users``: the accounts of a users file."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import print_result


def cmd_users(args) -> int:
    import getpass

    from ..auth import UsersFile

    users = UsersFile(args.auth)
    if args.action == "list":
        rows = [{"user": name, "role": u["role"]} for name, u in sorted(users.load().items())]
        print_result(rows, args.json, "\n".join(f"{r['user']}\t{r['role']}" for r in rows))
        return 0
    if not args.name:
        raise ValueError("users add needs a user name")
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass(f"password for {args.name}: ")
        if password != getpass.getpass("again: "):
            raise ValueError("passwords differ")
    users.add(args.name, password, args.role)
    print(f"{args.name} ({args.role}) saved to {args.auth}")
    return 0


def add_commands(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("users", help="manage the accounts of a users file (passwords stored as scrypt hashes)")
    p.add_argument("action", choices=["add", "list"], help="add (or update) a user, or list users")
    p.add_argument("name", nargs="?", help="user name (for add)")
    p.add_argument("--role", choices=["admin", "annotator"], default="annotator", help="role of the user (default annotator)")
    p.add_argument("--auth", type=Path, required=True, help="users file to edit (pass the same to app.py --auth)")
    p.add_argument("--password-stdin", action="store_true", help="read the password from standard input, not a prompt")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.add_argument("-v", "--verbose", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_users)
