"""`hubstack users ...`: manage the hub's users file (add, remove, passwd, list)."""

from __future__ import annotations

import argparse
import getpass
import secrets
import sys

from hubstack.config import PlatformConfig
from hubstack.errors import CommandError
from hubstack.hub import oidc_ids
from hubstack.hub.accounts import AccountsTableError, accounts_table_for, lookup_account
from hubstack.hub.users import PasswordHashError, UsersFileError, check_hash, users_file_for
from hubstack.images import user as user_images

INITIAL_ADMIN = "admin"


def _gid_list(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            out.append(int(part))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"groups must be comma-separated numeric GIDs, not {part!r}"
            ) from None
    return out


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        line = sys.stdin.readline()
        password = line.rstrip("\r\n")
        if not password:
            raise CommandError("no password on standard input (expected it on the first line)")
        return password
    try:
        password = getpass.getpass("Password: ")
        again = getpass.getpass("Password (again): ")
    except EOFError:
        raise CommandError(
            "no password given; type it at the prompt or use --password-stdin"
        ) from None
    if password != again:
        raise CommandError("passwords do not match; nothing changed")
    if not password:
        raise CommandError("password must not be empty; nothing changed")
    return password


def _change(action):
    """Run a users-file change; its refusal becomes one clear CLI error."""
    try:
        return action()
    except (UsersFileError, AccountsTableError) as e:
        raise CommandError(f"{e}; nothing changed") from None


def _uid_holder(cfg: PlatformConfig, uid: int) -> str | None:
    """Who holds UID outside the users file: an OIDC person (the hub's UID table) or a
    directory account as its last login recorded it."""
    try:
        held = oidc_ids.uid_holder(cfg, uid)
    except oidc_ids.IdentityError as e:
        raise CommandError(f"{e}; nothing changed") from None
    if held is not None:
        return f"{held.name!r}'s, who signs in with OpenID Connect (sub {held.sub!r})"
    directory = _change(lambda: accounts_table_for(cfg).load())
    for name, (rec, _seen) in directory.items():
        if rec.uid == uid:
            return f"{name!r}'s, a {rec.source} account"
    return None


def cmd_add(cfg: PlatformConfig, args: argparse.Namespace) -> int:
    users = users_file_for(cfg)
    held = _uid_holder(cfg, args.uid)
    if held is not None:
        raise CommandError(
            f"{users.path}: users.{args.name}.uid: {args.uid} is already {held}: one UID must "
            "be one person; choose another UID; nothing changed"
        )
    password = _read_password(args)
    rec = _change(
        lambda: users.add(
            args.name,
            uid=args.uid,
            gid=args.gid,
            groups=args.groups or [],
            admin=args.admin,
            password=password,
        )
    )
    print(f"added user {rec.name} (uid {rec.uid}, gid {rec.gid}{', admin' if rec.admin else ''})")
    return 0


def cmd_remove(cfg: PlatformConfig, args: argparse.Namespace) -> int:
    _change(lambda: users_file_for(cfg).remove(args.name))
    print(f"removed user {args.name} (their home folder is kept)")
    return 0


def cmd_passwd(cfg: PlatformConfig, args: argparse.Namespace) -> int:
    users = users_file_for(cfg)
    # Check first so nobody types a password for a user that doesn't exist.
    if _change(lambda: users.get(args.name)) is None:
        raise CommandError(f"{users.path}: no user {args.name!r}; nothing changed")
    password = _read_password(args)
    _change(lambda: users.set_password(args.name, password))
    print(f"password changed for {args.name}")
    return 0


def cmd_list(cfg: PlatformConfig, args: argparse.Namespace) -> int:
    """The users file's accounts and the directory accounts the hub has seen log in, each
    with its SOURCE (file, ldap, oidc)."""
    try:
        records = users_file_for(cfg).load()
    except UsersFileError as e:
        raise CommandError(str(e)) from None
    try:
        directory = accounts_table_for(cfg).load()
    except AccountsTableError as e:
        raise CommandError(str(e)) from None
    if not records and not directory:
        print("no users (the first `hubstack up` creates an admin)")
        return 0
    print(f"{'NAME':16} {'SOURCE':6} {'UID':>6} {'GID':>6} {'ADMIN':5}  GROUPS")
    rows = [(rec, "") for rec in records.values()]
    # A name the file holds is the file's (hubstack.hub.auth): a directory entry under it is
    # a stale one from before the file took the name.
    rows += [(rec, seen) for name, (rec, seen) in directory.items() if name not in records]
    for rec, seen in sorted(rows, key=lambda row: row[0].name):
        note = f"  (last login {seen[:16].replace('T', ' ')} UTC)" if seen else ""
        if rec.source == "file":
            try:
                check_hash(rec.password_hash)
            except PasswordHashError as e:
                note = f"  (cannot log in: {e})"
        elif rec.source not in cfg.auth.sources:
            note += f"  (cannot log in: {rec.source} is not in auth.sources)"
        groups = ",".join(map(str, rec.groups)) or "-"
        if rec.group_names:
            groups += f" ({','.join(rec.group_names)})"
        print(
            f"{rec.name:16} {rec.source:6} {rec.uid:>6} {rec.gid:>6} "
            f"{'yes' if rec.admin else 'no':5}  {groups}{note}"
        )
    return 0


def cmd_env(cfg: PlatformConfig, args: argparse.Namespace) -> int:
    """Show, add to or clear an analyst's packages (their per-user image's spec)."""
    if _change(lambda: lookup_account(cfg, args.name)) is None:
        raise CommandError(
            f"{cfg.users_file}: no user {args.name!r} (nor a directory account that has "
            "logged in); nothing changed"
        )
    try:
        current = user_images.load_env(cfg, args.name)
    except user_images.EnvSpecError as e:
        if not args.clear:
            raise CommandError(
                f"{args.name}'s spec is refused now: {e}; fix it with --clear"
            ) from None
        current = user_images.UserEnv()
    if args.pip or args.apt or args.clear:
        base = user_images.UserEnv() if args.clear else current
        # A pip entry for a package already there replaces it (a new version).
        names = {user_images.check_pip_name(p) for p in args.pip if isinstance(p, str)}
        kept = [p for p in base.pip if user_images.check_pip_name(p) not in names]
        data = {"pip": kept + list(args.pip), "apt": list(base.apt) + list(args.apt)}
        try:
            env = user_images.parse_env(cfg, data)
        except user_images.EnvSpecError as e:
            raise CommandError(f"{e}; nothing changed") from None
        if env.empty:
            user_images.clear_env(cfg, args.name)
            print(f"{args.name}: no extra packages (starts on the plain profile image)")
            return 0
        path = user_images.save_env(cfg, args.name, env)
        print(f"{args.name}: {env.describe()} (written to {path}; used from their next start)")
        return 0
    print(f"{args.name}: {current.describe()}")
    return 0


def ensure_initial_admin(cfg: PlatformConfig) -> tuple[str, str] | None:
    """Create the first admin when the users file has no users.

    Returns (name, password) so the caller can show the password once; None when
    users already exist. Prints nothing itself (the password must not reach logs
    the caller does not control).
    """
    users = users_file_for(cfg)
    if users.load():
        return None
    password = secrets.token_urlsafe(12)
    try:
        users.add(
            INITIAL_ADMIN, uid=cfg.hub.min_uid, gid=cfg.hub.min_uid, admin=True, password=password
        )
    except UsersFileError as e:
        if users.load():  # someone else created users meanwhile
            return None
        raise CommandError(f"cannot create the initial admin: {e}") from None
    return INITIAL_ADMIN, password


def register(subparsers) -> None:
    users = subparsers.add_parser("users", help="manage hub users (the users file)")
    sub = users.add_subparsers(dest="users_command", metavar="ACTION", required=True)

    add = sub.add_parser("add", help="add a user with a POSIX identity")
    add.add_argument("name", help="POSIX user name (lowercase, max 32 characters)")
    add.add_argument("--uid", type=int, required=True, help="user id (>= hub.min_uid)")
    add.add_argument("--gid", type=int, required=True, help="primary group id (>= hub.min_uid)")
    add.add_argument(
        "--groups",
        type=_gid_list,
        default=[],
        metavar="GID,...",
        help="supplementary group ids, comma-separated",
    )
    add.add_argument("--admin", action="store_true", help="make the user a hub admin")
    add.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of standard input",
    )
    add.set_defaults(func=cmd_add)

    rm = sub.add_parser("remove", help="remove a user (their home folder is kept)")
    rm.add_argument("name")
    rm.set_defaults(func=cmd_remove)

    pw = sub.add_parser("passwd", help="set a user's password")
    pw.add_argument("name")
    pw.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of standard input",
    )
    pw.set_defaults(func=cmd_passwd)

    ls = sub.add_parser(
        "list", help="list users: the users file's, and directory accounts that logged in"
    )
    ls.set_defaults(func=cmd_list)

    env = sub.add_parser(
        "env",
        help="an analyst's own packages (their per-user image): show, add, clear",
        description="Packages an analyst's server (and Spark executors) get on top of their "
        "profile's image, built at their next start and cached in the registry. pip entries "
        "are a name, [extras] and version specifiers (PEP 508, no URL, path, option or "
        "marker); apt entries must be in user_images.apt_allowlist. Every entry is checked "
        "before anything is written. Without options: show the spec.",
    )
    env.add_argument("name")
    env.add_argument(
        "--pip",
        action="append",
        default=[],
        metavar="REQ",
        help="add a pip package, e.g. 'polars==1.*'",
    )
    env.add_argument(
        "--apt",
        action="append",
        default=[],
        metavar="NAME",
        help="add a Debian package (allowlist)",
    )
    env.add_argument(
        "--clear",
        action="store_true",
        help="remove every package (first, with --pip/--apt: set exactly)",
    )
    env.add_argument("--show", action="store_true", help="print the spec (the default)")
    env.set_defaults(func=cmd_env)
