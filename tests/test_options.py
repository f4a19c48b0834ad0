"""One source per default: the CLI, the daemon's options and the systemd unit agree."""

from __future__ import annotations

import configparser
from dataclasses import fields
from pathlib import Path

import pytest

from lbd.cli import build_parser
from lbd.options import DEFAULT_ADMIN_SOCKET, DEFAULT_STATE_DIR, DaemonOptions, parse_host_port, stop_timeout

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "lbd.service"


def test_cli_defaults_are_the_options_defaults() -> None:
    args = build_parser().parse_args(["run", "--config", "lbd.yaml"])
    for f in fields(DaemonOptions):
        if f.name in ("config_paths", "node_name"):
            continue
        given = getattr(args, f.name)
        if f.name in ("state_dir", "admin_socket"):
            given = Path(given)
        assert given == f.default, f.name
    assert Path(args.state_dir) == DEFAULT_STATE_DIR and Path(args.admin_socket) == DEFAULT_ADMIN_SOCKET


def test_unit_stop_timeout_outlasts_the_default_drain() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read(UNIT)
    exec_start = unit["Service"]["ExecStart"]
    assert "--drain-timeout" not in exec_start  # else the stop timeout must follow that value
    assert float(unit["Service"]["TimeoutStopSec"]) == stop_timeout()


def test_unit_lets_lbd_raise_its_fd_limit() -> None:
    # `lbd run` raises its soft NOFILE limit to the hard one; 2 descriptors per relayed connection.
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read(UNIT)
    assert int(unit["Service"]["LimitNOFILE"]) >= 65536


def test_host_port() -> None:
    assert parse_host_port("127.0.0.1:9100") == ("127.0.0.1", 9100)
    assert parse_host_port("[::1]:9100") == ("::1", 9100)
    assert parse_host_port(":9100") == ("127.0.0.1", 9100)
    for bad in ("9100", "host:9100", "127.0.0.1:0", "127.0.0.1:70000"):
        try:
            parse_host_port(bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad!r} was accepted")


def test_config_paths_may_be_positional_for_run_and_check() -> None:
    from lbd.cli import _config_paths

    parser = build_parser()
    for command in ("run", "check"):
        args = parser.parse_args([command, "a.yaml", "--config", "b.yaml"])
        _config_paths(parser, args)
        assert args.config == ["b.yaml", "a.yaml"]


def test_cluster_options() -> None:
    args = build_parser().parse_args(["run", "--config", "lbd.yaml", "--etcd-endpoints",
                                      "http://198.18.0.10:2379, http://198.18.0.11:2379", "--etcd-prefix", "/mine",
                                      "--lease-ttl", "1"])
    assert args.etcd_endpoints == ("http://198.18.0.10:2379", "http://198.18.0.11:2379")
    assert args.etcd_prefix == "/mine/" and args.lease_ttl == 1
    for bad in (["--etcd-endpoints", "198.18.0.10:2379"], ["--etcd-prefix", "lbd"], ["--lease-ttl", "0"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["run", "--config", "lbd.yaml", *bad])
