"""``basemount-py serve``: run the BaseSpace API emulator over an account folder.

``add_arguments(parser)`` declares the options (the main CLI adds them to its ``serve``
sub-command; ``python -m basemount_py.emulator`` uses them directly) and ``main(args)`` runs the
server.  An unusable account folder or a bad option value is one clear line on stderr and exit
status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

from .account import AccountError
from .knobs import KnobError, Knobs, SCOPES

__all__ = ["add_arguments", "main", "knobs_from_args"]

# knob name -> CLI option, type, help (all of them numbers except fault_scope); "{default}" in a help
# text is replaced by the knob's default (knobs.Knobs)
_KNOB_OPTIONS = {
    "latency_ms": ("--latency-ms", float, "delay every API/content answer by MS milliseconds"),
    "conn_bandwidth": ("--conn-bandwidth", float, "cap each response body at MBPS MB/s (10^6 bytes; 0 = unlimited)"),
    "error_rate": ("--error-rate", float, "fraction of requests answered 500 or 503"),
    "throttle_rate": ("--throttle-rate", float, "fraction of requests answered 429 with Retry-After"),
    "retry_after": ("--retry-after", float, "Retry-After seconds of 429 answers (default {default:g})"),
    "reset_rate": ("--reset-rate", float, "fraction of content responses aborted (TCP reset) mid-body"),
    "truncate_rate": ("--truncate-rate", float, "fraction of content responses closed before Content-Length bytes"),
    "stall_rate": ("--stall-rate", float, "fraction of responses that stall for --stall-seconds"),
    "stall_seconds": ("--stall-seconds", float, "length of a stall in seconds (default {default:g})"),
    "fault_seed": ("--fault-seed", int, "seed of the fault RNG (default {default}: runs are reproducible)"),
    "rate_limit": ("--rate-limit", float, "API requests/s allowed per access token; more get 429 + Retry-After (default {default:g}; 0 = no limit)"),
    "url_lifetime": ("--url-lifetime", float, "lifetime of signed content URLs in seconds (default {default:g})"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, metavar="ACCOUNT_DIR", help="account folder to serve")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; keep it loopback)")
    parser.add_argument("--port", type=int, default=0, help="port (default 0 = any free port)")
    parser.add_argument("--token", default=None, help="accepted access token (default: account.json AccessToken, else 'emulator-token')")
    defaults = Knobs()
    for name, (flag, kind, help_text) in _KNOB_OPTIONS.items():
        parser.add_argument(flag, dest=name, type=kind, default=None, help=help_text.format(default=getattr(defaults, name)))
    parser.add_argument("--fault-scope", dest="fault_scope", choices=SCOPES, default=None, help="which requests the random faults hit (default all)")
    parser.add_argument("--ready-file", default=None, metavar="PATH", help="write the base URL here once serving")
    parser.add_argument("--tls-cert", default=None, metavar="PEM", help="serve HTTPS with this certificate (with --tls-key)")
    parser.add_argument("--tls-key", default=None, metavar="PEM", help="the certificate's private key")


def knobs_from_args(args: argparse.Namespace) -> Knobs:
    knobs = Knobs()
    changes = {name: getattr(args, name) for name in list(_KNOB_OPTIONS) + ["fault_scope"]}
    knobs.merge({k: v for k, v in changes.items() if v is not None})
    return knobs


def main(args: argparse.Namespace) -> int:
    # imported here so `--help` stays fast and works even if the server stack is missing
    from .app import Emulator
    from .server import bind_socket, serve

    if not 0 <= args.port <= 65535:
        print(f"basemount-py serve: --port must be between 0 and 65535, not {args.port}", file=sys.stderr)
        return 2
    if bool(args.tls_cert) != bool(args.tls_key):
        print("basemount-py serve: --tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    for path in filter(None, (args.tls_cert, args.tls_key)):
        if not os.path.isfile(path):
            print(f"basemount-py serve: no such file: {path}", file=sys.stderr)
            return 2
    try:
        knobs = knobs_from_args(args)
        emulator = Emulator(args.data, token=args.token, knobs=knobs)
    except (AccountError, KnobError) as exc:
        print(f"basemount-py serve: invalid account folder or option: {exc}", file=sys.stderr)
        return 2
    try:
        sock = bind_socket(args.host, args.port)
    except OSError as exc:
        print(f"basemount-py serve: cannot listen on {args.host}:{args.port}: {exc.strerror}", file=sys.stderr)
        return 2
    try:
        serve(
            emulator,
            sock,
            ready_file=args.ready_file,
            banner=f"BaseSpace API emulator serving {args.data}",
            tls=(args.tls_cert, args.tls_key) if args.tls_cert else None,
        )
    except KeyboardInterrupt:
        pass
    return 0
