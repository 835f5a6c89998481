"""Command line: ``basemount-py`` (serve, demo-data, demo, mount, unmount, auth, refresh) and the
BaseMount-compatible ``basemount`` and ``basemount-cmd`` entry points.

Every failure the user can fix prints one line and exits non-zero; no tracebacks.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Sequence

from .options import GiB, MiB, MountOptions

DEFAULT = MountOptions  # the class attributes are the defaults (options.py)


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def _add_account_arguments(p: argparse.ArgumentParser) -> None:
    """Which account and API server (mount, manifest)."""
    p.add_argument("--config", metavar="NAME", help="use ~/.basespace/NAME.cfg (default: env vars, then default.cfg)")
    p.add_argument("--api-server", metavar="URL|ALIAS", help="API server URL or region alias (overrides the config)")
    p.add_argument("--allow-insecure-http", action="store_true", help="allow a non-loopback http:// API server")


# The numeric mount options: flag, MountOptions field, unit on the command line, parser, help.
# The default is the field's (options.py), shown in the unit; "{default}" places it in the help.
_SCALE = {"s": 1, "": 1, "MiB": MiB, "GiB": GiB}  # unit -> bytes (or 1)
_TUNABLES: tuple[tuple[str, str, str, Callable[[str], float], str], ...] = (
    ("--metadata-ttl", "metadata_ttl", "s", _positive_float, "listing cache lifetime (default {default} s)"),
    ("--cache-size", "cache_size", "MiB", int, "block cache size (default {default} MiB)"),
    ("--prefetch-max", "prefetch_max", "MiB", int, "largest sequential prefetch window (default {default} MiB)"),
    (
        "--whole-file-max",
        "whole_file_max",
        "MiB",
        int,
        "fetch files up to this size whole, in parallel parts, when read at random, when they are an index "
        "(.bai .csi .tbi .crai .fai .gzi) or have one beside them; 0 = off (default {default} MiB, at most half of --cache-size)",
    ),
    ("--max-connections", "max_connections", "", int, "parallel HTTP connections (default {default})"),
    (
        "--api-max-rate",
        "api_max_rate",
        "",
        _positive_float,
        "ceiling of this mount's API request rate per second; it also slows down on 429s (default {default}; docs/cluster.md)",
    ),
    ("--op-timeout", "op_timeout", "s", _positive_float, "upper bound for any file operation (default {default} s)"),
    ("--upload-threshold", "upload_threshold", "MiB", _positive_float, "files larger than this are uploaded multipart (default {default} MiB)"),
    ("--upload-part-size", "upload_part_size", "MiB", _positive_float, "multipart part size (default {default} MiB)"),
    ("--upload-parallel", "upload_parallel", "", int, "parts uploaded in parallel per file (default {default})"),
    (
        "--cache-max",
        "cache_max",
        "GiB",
        float,
        "disk space of the persistent content cache (DIR/content/): file blocks kept across mounts and shared "
        "between them; 0 = none (default {default}; docs/performance.md)",
    ),
    ("--spool-max", "spool_max", "GiB", _positive_float, "bytes written but not uploaded yet that the spool may hold (default {default} GiB)"),
    ("--write-back", "write_back", "s", float, "seconds from a file's last close to its upload (default {default})"),
)


def _add_mount_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "mountpoint",
        nargs="?",
        help="empty directory to mount on, or /dev/fd/N: a /dev/fuse descriptor already mounted by a privileged helper",
    )
    _add_account_arguments(p)
    p.add_argument("--foreground", "-f", action="store_true", help="stay attached; log to stderr")
    for flag, field, unit, parse, help_text in _TUNABLES:
        value = getattr(DEFAULT, field) / _SCALE[unit]
        default = int(value) if parse is int else value
        metavar = {"s": "S", "": "N"}.get(unit, unit)
        p.add_argument(flag, type=parse, default=default, metavar=metavar, help=help_text.format(default=f"{default:g}"))
    p.add_argument(
        "--direct-io",
        action="store_true",
        help="bypass the kernel page cache for BaseSpace files: faster one-pass reads where filling the "
        "page cache is costly (VMs); shared mmap fails (ENODEV) and re-reads come from the block cache "
        "or the network (docs/performance.md)",
    )
    p.add_argument(
        "--verify",
        action="store_true",
        help="check every whole-file sequential read against the file's ETag (its MD5); a mismatch fails "
        "the read with EIO. Files uploaded multipart (ETag <md5>-<n>) and partial or random reads are not checked",
    )
    p.add_argument(
        "--manifest",
        metavar="FILE",
        help="serve the folders of this snapshot (made by: basemount-py manifest PATH > FILE) without "
        "listing calls; only file content is fetched (docs/cluster.md)",
    )
    p.add_argument("--allow-other", action="store_true", help="let other users see the mount (needs user_allow_other)")
    p.add_argument(
        "--fuse-socket",
        metavar="SOCK",
        help="get the mounted /dev/fuse descriptor from `basemount-py fuse-helper` listening on SOCK (no mountpoint argument then; docs/configuration.md)",
    )
    p.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="local root of the write spool (DIR/spool/) and the content cache (DIR/content/) (default: $XDG_CACHE_HOME/basemount_py)",
    )
    p.add_argument("--log-level", default=DEFAULT.log_level, choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument(
        "--log-file",
        metavar="F",
        help="log file, created 0600 (default in the background: ~/.basespace/basemount_py.log; in the foreground: stderr only)",
    )


def mount_options(args: argparse.Namespace, manifest: dict | None = None) -> MountOptions:
    """The parsed ``mount`` command line as MountOptions (units converted, values clamped)."""
    return MountOptions(
        mountpoint=args.mountpoint or "",
        fuse_socket=args.fuse_socket,
        foreground=args.foreground,
        metadata_ttl=args.metadata_ttl,
        cache_size=max(1, args.cache_size) * MiB,
        prefetch_max=max(1, args.prefetch_max) * MiB,
        whole_file_max=max(0, args.whole_file_max) * MiB,
        max_connections=max(1, args.max_connections),
        api_max_rate=args.api_max_rate,
        manifest=manifest,
        allow_other=args.allow_other,
        op_timeout=args.op_timeout,
        direct_io=args.direct_io,
        verify=args.verify,
        log_level=args.log_level,
        log_file=args.log_file,
        upload_threshold=int(args.upload_threshold * MiB),
        upload_part_size=max(64 * 1024, int(args.upload_part_size * MiB)),
        upload_parallel=max(1, args.upload_parallel),
        cache_dir=os.path.abspath(args.cache_dir) if args.cache_dir else "",
        cache_max=max(0, int(args.cache_max * GiB)),
        spool_max=int(args.spool_max * GiB),
        write_back=max(0.0, args.write_back),
    )


def _run_mount(args: argparse.Namespace) -> int:
    from .api.config import ConfigError, load_credentials, reload_token
    from .mount import mount

    if bool(args.mountpoint) == bool(args.fuse_socket):
        print("basemount-py: give a mountpoint, or --fuse-socket SOCK (the helper says where it mounted)", file=sys.stderr)
        return 1
    try:
        credentials = load_credentials(args.config, args.api_server, allow_insecure=args.allow_insecure_http)
    except ConfigError as exc:
        print(f"basemount-py: {exc}", file=sys.stderr)
        return 1
    manifest = None
    if args.manifest:
        from .tree.manifest import ManifestError, load_manifest

        try:
            manifest = load_manifest(args.manifest, credentials.api_server)
        except ManifestError as exc:
            print(f"basemount-py: {exc}", file=sys.stderr)
            return 1
    opts = mount_options(args, manifest)
    return mount(credentials, opts, token_reloader=lambda: reload_token(credentials))


def _run_fuse_helper(args: argparse.Namespace) -> int:
    from .fuse_helper import run_helper

    return run_helper(args.target, args.socket, args.user, allow_other=args.allow_other)


def _run_manifest(args: argparse.Namespace) -> int:
    import json

    import trio

    from .api.client import BaseSpaceClient
    from .api.config import ConfigError, load_credentials
    from .api.errors import ApiError
    from .tree.manifest import ManifestError, make_manifest, split_path

    try:
        credentials = load_credentials(args.config, args.api_server, allow_insecure=args.allow_insecure_http)
        path = split_path(args.path)
    except (ConfigError, ManifestError) as exc:
        print(f"basemount-py: {exc}", file=sys.stderr)
        return 1

    async def run() -> dict:
        async with BaseSpaceClient(credentials.api_server, credentials.access_token) as client:
            return await make_manifest(client, path)

    try:
        manifest = trio.run(run)
    except (ApiError, ManifestError) as exc:
        print(f"basemount-py: manifest of {args.path}: {exc}", file=sys.stderr)
        return 1
    json.dump(manifest, sys.stdout, separators=(",", ":"))
    sys.stdout.write("\n")
    count = len(manifest["listings"])
    print(f"basemount-py: manifest of /{manifest['root']}: {count} listings", file=sys.stderr)
    return 0


def _run_unmount(args: argparse.Namespace) -> int:
    from .mount import unmount
    from .mount_table import mount_entry
    from .pending import wait_for_uploads

    entry = mount_entry(os.path.abspath(args.mountpoint))
    try:
        if entry is not None and entry.is_basemount:  # (anything else: unmount() refuses it)
            wait_for_uploads(args.mountpoint, keep_pending=args.keep_pending)
    except KeyboardInterrupt:
        print("\nleaving the uploads in the spool: they resume at the next mount of this account", file=sys.stderr)
    return unmount(args.mountpoint, lazy=args.lazy)


def _run_status(args: argparse.Namespace) -> int:
    from .pending import status

    return status(args.mountpoint)


def _run_retry(args: argparse.Namespace) -> int:
    from .pending import retry

    return retry(args.path)


def _folder_of(path: str) -> str:
    return path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))


def _read_small(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read(4096)
    except OSError:
        return None


def send_command(path: str, command: str) -> int:
    """Write a command to PATH/.commands (the daemon runs it against that folder); on failure
    print the daemon's reason (PATH/.error) on one line starting with "Error:"."""
    folder = _folder_of(path)
    target = os.path.join(folder, ".commands")
    try:
        # One unbuffered write: a buffered file would re-send a failed command when closed.
        fd = os.open(target, os.O_WRONLY | os.O_TRUNC)
        try:
            os.write(fd, (command + "\n").encode("utf-8", "surrogateescape"))
        finally:
            try:
                os.close(fd)
            except OSError:  # the command ran in write(); after "unmount" the mount is gone
                pass
    except OSError as exc:
        reason = None
        if exc.errno not in (2, 13, 30) or os.path.exists(target):
            detail = (_read_small(os.path.join(folder, ".error")) or "").strip().splitlines()
            reason = detail[-1].removeprefix("Error: ") if detail else exc.strerror
        print(f"Error: {command.split()[0]} failed for {folder}: {reason or 'not inside a basemount_py mount'}", file=sys.stderr)
        return 1
    print(f"{command.split()[0]}: done for {folder}")
    return 0


def _sends(command: str) -> Callable[[argparse.Namespace], int]:
    """A subcommand that writes COMMAND to the .commands file of its path's folder."""
    return lambda args: send_command(args.path, command)


def _run_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args.mountpoint, keep_running=not args.no_wait)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="basemount-py", description="Mount BaseSpace Sequence Hub with FUSE.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("mount", help="mount a BaseSpace account")
    _add_mount_arguments(p)
    p.set_defaults(func=_run_mount)

    p = sub.add_parser("manifest", help="print a JSON snapshot of a folder's listings, for mount --manifest")
    p.add_argument("path", help="folder relative to the account root, e.g. 'Projects/My Project/Samples'")
    _add_account_arguments(p)
    p.set_defaults(func=_run_manifest)

    p = sub.add_parser("unmount", help="unmount cleanly (names the processes that block it)")
    p.add_argument("mountpoint")
    p.add_argument("--lazy", action="store_true", help="detach now, clean up when no longer busy")
    p.add_argument("--keep-pending", action="store_true", help="do not wait for pending uploads: the next mount of the account sends them")
    p.set_defaults(func=_run_unmount)

    p = sub.add_parser(
        "fuse-helper",
        help="as root: mount TARGET for USER and hand the FUSE descriptor to that user's daemon",
        description="The privileged half of an unprivileged mount (where /dev/fuse is root-only, or in a "
        "container): waits on SOCK for `basemount-py mount --fuse-socket SOCK` run by USER, mounts TARGET "
        "with mount(2), passes the /dev/fuse descriptor over the socket, and unmounts when that daemon exits.",
    )
    p.add_argument("target", help="empty directory to mount on")
    p.add_argument("--socket", required=True, metavar="SOCK", help="Unix socket to create (owned by USER, mode 0600)")
    p.add_argument("--user", required=True, help="the only user (name or uid) whose daemon may connect")
    p.add_argument("--allow-other", action="store_true", help="let other users see the mount")
    p.set_defaults(func=_run_fuse_helper)

    # The commands that take one path and nothing else.
    for name, help_text, run, arg in (
        ("status", "uploads pending, in progress, committed recently and failed", _run_status, "mountpoint"),
        ("retry", "upload a file that failed for good again", _run_retry, "path"),
        ("refresh", "reload a folder and its sub-folders from the API", _sends("refresh"), "path"),
        ("trash", "move a project/sample/app result/app session/run folder to the trash", _sends("move-to-trash"), "path"),
        ("restore", "restore a MOUNT/.Trash/ITEM folder", _sends("restore-from-trash"), "path"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument(arg)
        p.set_defaults(func=run)

    p = sub.add_parser("auth", help="log in with the OAuth device flow and write ~/.basespace/NAME.cfg")
    from .api import auth

    auth.add_arguments(p)
    p.set_defaults(func=auth.main)

    p = sub.add_parser("serve", help="run the BaseSpace API emulator on an account folder")
    from .emulator import cli as emulator_cli

    emulator_cli.add_arguments(p)
    p.set_defaults(func=emulator_cli.main)

    p = sub.add_parser("demo-data", help="generate the demo account folder")
    from .emulator import demo_data

    demo_data.add_arguments(p)
    p.set_defaults(func=demo_data.main)

    p = sub.add_parser("demo", help="serve a generated demo account and mount it (Ctrl-C to stop)")
    p.add_argument("mountpoint", nargs="?", help="where to mount (default: a new temporary folder)")
    p.add_argument("--no-wait", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=_run_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


def basemount_compat_main(argv: Sequence[str] | None = None) -> int:
    """``basemount [--config N] [--api-server U] [-f] MP`` and ``basemount --unmount MP``."""
    parser = argparse.ArgumentParser(prog="basemount", description="BaseMount-compatible front end of basemount-py.")
    parser.add_argument("mountpoint", nargs="?")
    parser.add_argument("--config", metavar="NAME")
    parser.add_argument("--api-server", metavar="URL|ALIAS")
    parser.add_argument("--unmount", metavar="MP")
    parser.add_argument("-f", "--foreground", action="store_true")
    args = parser.parse_args(argv)
    if args.unmount:
        return main(["unmount", args.unmount])
    if not args.mountpoint:
        parser.error("a mountpoint is required")
    forwarded = ["mount", args.mountpoint]
    if args.config:
        forwarded += ["--config", args.config]
    if args.api_server:
        forwarded += ["--api-server", args.api_server]
    if args.foreground:
        forwarded.append("--foreground")
    return main(forwarded)


def basemount_cmd_main(argv: Sequence[str] | None = None) -> int:
    """``basemount-cmd [--path P] [COMMAND [ARG...]]``: with no command, list the valid ones
    (the daemon says which: ``P/.commands`` lists the commands valid in that folder)."""
    from .commands import DESCRIPTIONS

    parser = argparse.ArgumentParser(prog="basemount-cmd")
    parser.add_argument("--path", default=".")
    parser.add_argument("command", nargs="?")
    parser.add_argument("argument", nargs="*", help="rename-appsession: the new name")
    args = parser.parse_args(argv)
    folder = _folder_of(args.path)
    if not args.command:
        text = _read_small(os.path.join(folder, ".commands"))
        if text is None or "Commands valid here:" not in text:
            print(f"Error: {folder} is not inside a basemount_py mount", file=sys.stderr)
            return 1
        print(text.split("Commands valid here:", 1)[1].strip("\n"))
        return 0
    if args.command not in DESCRIPTIONS:
        print(f"Error: unknown command {args.command!r}; valid: {', '.join(DESCRIPTIONS)}", file=sys.stderr)
        return 1
    if args.command == "rename-appsession" and not args.argument:
        print("Error: rename-appsession needs the new name: basemount-cmd rename-appsession NEW NAME", file=sys.stderr)
        return 1
    return send_command(args.path, " ".join([args.command, *args.argument]))


if __name__ == "__main__":
    sys.exit(main())
