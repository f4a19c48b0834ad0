"""`lbd run | check | get | describe | reload | drain | undrain | demo`: the command line."""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from lbd import ctl
from lbd import log as lbd_log
from lbd.options import DEFAULT_ADMIN_SOCKET, DEFAULT_STATE_DIR, default


def _add_config(p: argparse.ArgumentParser) -> None:
    # `lbd check lbd.yaml` is what a new user types first (config/example.yaml's header says so);
    # --config stays for the unit and scripts. Both may be given; `_config_paths` joins them.
    p.add_argument("positional_config", nargs="*", metavar="PATH", help="config file or directory (as --config)")
    p.add_argument(
        "--config", "-c", action="append", default=[], metavar="PATH",
        help="config file or directory of *.yaml (repeatable): native lbd format or Kubernetes/MetalLB manifests",
    )


def _config_paths(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Fold positional paths into args.config; a command that reads a config needs one."""
    if not hasattr(args, "positional_config"):
        return
    args.config = [*args.config, *args.positional_config]
    if not args.config:
        parser.error(f"no config given: `lbd {args.command} PATH` or `lbd {args.command} --config PATH` "
                     "(a file or a directory of *.yaml)")


def _positive(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise argparse.ArgumentTypeError(f"{value} must be > 0")
    return number


def _count(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"{value} must be >= 0")
    return number


def _buffer_size(value: str) -> int:
    """Bytes, optionally with a K or M suffix (KiB, MiB); 0 leaves buffers to the kernel."""
    scale = {"K": 1024, "M": 1024 * 1024}.get(value[-1:].upper(), 1)
    number = int(value[:-1] if scale != 1 else value) * scale
    if number != 0 and number < 4096:
        raise argparse.ArgumentTypeError(f"{value} must be 0 (kernel autotuning) or at least 4096 bytes")
    return number


def _workers(value: str) -> int:
    """A count of data-plane processes, or `auto`: one per CPU this process may run on."""
    if value == "auto":
        return max(1, len(os.sched_getaffinity(0)))
    number = int(value)
    if not 1 <= number <= 256:
        raise argparse.ArgumentTypeError(f"{value} must be auto or 1-256")
    return number


def _endpoints(value: str) -> tuple[str, ...]:
    urls = tuple(u.strip() for u in value.split(",") if u.strip())
    for url in urls:
        if not url.startswith(("http://", "https://")):
            raise argparse.ArgumentTypeError(f"{url}: an etcd endpoint is a URL, e.g. http://198.18.0.10:2379")
    if not urls:
        raise argparse.ArgumentTypeError("no etcd endpoint given")
    return urls


def _prefix(value: str) -> str:
    if not value.startswith("/"):
        raise argparse.ArgumentTypeError(f"{value}: an etcd key prefix starts with /")
    return value if value.endswith("/") else value + "/"


def _lease_ttl(value: str) -> int:
    number = int(value)
    if not 1 <= number <= 300:
        raise argparse.ArgumentTypeError(f"{value} must be 1-300 seconds")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lbd", description="L4 load balancer daemon: MetalLB-style VIPs, kube-proxy-style relay")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the daemon in the foreground")
    _add_config(run)
    run.add_argument("--node-name", default=socket.gethostname(), help="this node's name (externalTrafficPolicy: Local)")
    run.add_argument("--state-dir", default=str(DEFAULT_STATE_DIR), help="where sticky VIP assignments are kept")
    run.add_argument("--admin-socket", default=str(DEFAULT_ADMIN_SOCKET), help="unix socket of the admin API (mode 0600)")
    run.add_argument("--metrics-address", metavar="HOST:PORT", help="serve Prometheus metrics here (off by default)")
    run.add_argument("--log-format", choices=["json", "console", "auto"], default="auto")
    run.add_argument("--drain-timeout", type=_positive, default=default("drain_timeout"),
                     help="seconds established connections get on stop")
    run.add_argument("--connect-timeout", type=_positive, default=default("connect_timeout"),
                     help="seconds per endpoint connect attempt")
    run.add_argument("--garp-rounds", type=_count, default=default("garp_rounds"), help="gratuitous ARP rounds per VIP")
    run.add_argument("--garp-interval", type=_positive, default=default("garp_interval"),
                     help="seconds between gratuitous ARP rounds")
    run.add_argument("--garp-refresh", type=_positive, default=default("garp_refresh"),
                     help="re-announce every N seconds (off by default)")
    run.add_argument("--socket-buffer", type=_buffer_size, default=default("socket_buffer"), metavar="BYTES",
                     help="kernel buffer per relayed socket and direction (e.g. 256K, 4M); 0 = kernel autotuning")
    run.add_argument("--workers", type=_workers, default=default("workers"), metavar="N|auto",
                     help="data-plane processes sharing each port (SO_REUSEPORT, steered by client "
                          "address so ClientIP affinity holds); auto = one per CPU (default: %(default)s, in-process)")
    run.add_argument("--reset-state", action="store_true", default=default("reset_state"),
                     help="when no generation of the VIP state is readable, set it aside and assign VIPs afresh "
                          "(without it, lbd assigns no new VIP then); ignored while the state is readable")

    run.add_argument("--etcd-endpoints", type=_endpoints, default=default("etcd_endpoints"), metavar="URL[,URL...]",
                     help="cluster mode: nodes agree on VIP owners through this etcd (http://HOST:2379,...); "
                          "without it lbd is a single node that holds every VIP it serves")
    run.add_argument("--etcd-prefix", type=_prefix, default=default("etcd_prefix"),
                     help="keys under this prefix (default %(default)s); one cluster per prefix")
    run.add_argument("--lease-ttl", type=_lease_ttl, default=default("lease_ttl"), metavar="SECONDS",
                     help="this node's etcd lease (default %(default)s): a crashed owner's VIPs move after it runs out")
    run.add_argument("--peer-port", type=int, default=default("peer_port"), metavar="PORT",
                     help="cluster mode: UDP port where members ask each other while etcd is out of reach "
                          "(on the address this node reaches etcd from; default %(default)s)")

    check = sub.add_parser("check", help="validate the config and show what each service would get")
    _add_config(check)
    check.add_argument("--state-dir", default=str(DEFAULT_STATE_DIR), help="read sticky assignments from here, if present")
    check.add_argument("--node-name", default=socket.gethostname(),
                       help="the node to judge externalTrafficPolicy: Local endpoints from")
    check.add_argument("-o", "--output", choices=["table", "json"], default="table")
    check.add_argument("--strict", action="store_true",
                       help="exit 1 on warnings too (fields and kinds lbd does not act on, services without endpoints)")

    ctl.add_commands(sub)  # get, describe, drain, undrain

    reload = sub.add_parser("reload", help="make the running daemon re-read its config (like SIGHUP), and say what changed")
    reload.add_argument("--allow-empty", action="store_true",
                        help="apply a config that exposes no service although some are served (refused otherwise)")
    reload.add_argument("--admin-socket", default=str(DEFAULT_ADMIN_SOCKET))
    reload.add_argument("-o", "--output", choices=["text", "json"], default="text")

    worker = sub.add_parser("worker", help=argparse.SUPPRESS)  # started by `lbd run --workers N`
    worker.add_argument("--index", type=int, required=True)
    worker.add_argument("--channel-fd", type=int, required=True)
    worker.add_argument("--drain-timeout", type=float, required=True)
    worker.add_argument("--log-format", choices=["json", "console"], default="json")
    sub.add_parser("demo", help="build a throwaway lab of network namespaces and show lbd at work")
    return parser


def cmd_check(args: argparse.Namespace) -> int:
    from lbd import config
    from lbd.allocator import allocate
    from lbd.assignments import FileAssignmentStore
    from lbd.status import check_view, statuses
    from lbd.views import services_table

    attempt = config.attempt(args.config)
    warnings = [str(w) for w in attempt.warnings]
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if attempt.loaded is None:
        for err in attempt.errors:
            print(f"error: {err}", file=sys.stderr)
        print(f"{len(attempt.errors)} error(s); config is not valid", file=sys.stderr)
        return 1
    loaded = attempt.loaded
    if not any(s.exposed for s in loaded.model.services):
        warnings.append(f"{', '.join(loaded.sources)}: config exposes nothing: {len(loaded.model.pools)} pool(s), "
                        "no service of type LoadBalancer")
        print(f"warning: {warnings[-1]}", file=sys.stderr)
    previous = FileAssignmentStore(Path(args.state_dir)).load()  # read only: check never writes
    allocation = allocate(loaded.model.pools, loaded.model.services, previous.assignments, hold_new=previous.hold_new)
    services = loaded.model.services
    rows = statuses(services, allocation.assignments, check_view(services, allocation.assignments, args.node_name))
    if args.output == "json":
        print(json.dumps(rows, indent=2))
    else:
        print(services_table(rows, time.time(), wide=True))
        print(f"config OK: {len(loaded.sources)} file(s), {len(loaded.model.pools)} pool(s), "
              f"{len(loaded.model.services)} service(s)" + (f", {len(warnings)} warning(s)" if warnings else ""))
    if args.strict and warnings:
        print(f"{len(warnings)} warning(s); --strict treats them as errors", file=sys.stderr)
        return 1
    return 0


def cmd_reload(args: argparse.Namespace) -> int:
    from lbd.admin import AdminUnavailable, request

    route = "/v1/reload?allow_empty=true" if args.allow_empty else "/v1/reload"
    try:
        answer = request(Path(args.admin_socket), "POST", route, timeout=300.0)
    except AdminUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.output == "json":
        print(json.dumps(answer, indent=2))
    else:
        for warning in answer.get("warnings", []):
            print(f"warning: {warning}", file=sys.stderr)
        for error in answer.get("errors", []):
            print(f"error: {error}", file=sys.stderr)
        if answer.get("applied"):
            print(f"reloaded: {answer['summary']}")
            for key, why in sorted(answer.get("failed", {}).items()):
                print(f"  {key}: cannot be served: {why}")
        else:
            print("not reloaded; the running config stays", file=sys.stderr)
    return 0 if answer.get("applied") else 1


def cmd_run(args: argparse.Namespace) -> int:
    from lbd.daemon import run_daemon
    from lbd.loop import run
    from lbd.options import DaemonOptions, parse_host_port

    lbd_log.configure(args.log_format)
    metrics_address = None
    if args.metrics_address:
        try:
            metrics_address = parse_host_port(args.metrics_address)
        except ValueError as exc:
            print(f"error: --metrics-address {args.metrics_address!r} is not HOST:PORT ({exc})", file=sys.stderr)
            return 2
    options = DaemonOptions(
        config_paths=tuple(args.config),
        node_name=args.node_name,
        state_dir=Path(args.state_dir),
        admin_socket=Path(args.admin_socket) if args.admin_socket else None,
        metrics_address=metrics_address,
        drain_timeout=args.drain_timeout,
        connect_timeout=args.connect_timeout,
        garp_rounds=args.garp_rounds,
        garp_interval=args.garp_interval,
        garp_refresh=args.garp_refresh,
        reset_state=args.reset_state,
        socket_buffer=args.socket_buffer,
        workers=args.workers,
        log_format=args.log_format,
        etcd_endpoints=args.etcd_endpoints,
        etcd_prefix=args.etcd_prefix,
        lease_ttl=args.lease_ttl,
        peer_port=args.peer_port,
    )
    return run(run_daemon(options))


def cmd_worker(args: argparse.Namespace) -> int:
    from lbd.loop import run
    from lbd.workers.worker import serve

    lbd_log.configure(args.log_format)
    return run(serve(args.index, args.channel_fd, args.drain_timeout))


def cmd_demo(args: argparse.Namespace) -> int:
    from lbd.demo import main as demo_main

    return demo_main()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _config_paths(parser, args)
    if args.command not in ("run", "worker"):
        lbd_log.configure("console", level=40)  # quiet: commands print their own results
    handlers = {"run": cmd_run, "worker": cmd_worker, "check": cmd_check, "reload": cmd_reload, "demo": cmd_demo, **ctl.HANDLERS}
    try:
        return handlers[args.command](args)
    except KeyboardInterrupt:
        return 130
