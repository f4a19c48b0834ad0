"""Parsing in a child process: the same answer as in-process, and any failure of the child
(crash, hang) is a config error naming the files, never an exception in the daemon."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from lbd.config import attempt
from lbd.config_process import attempt_in_child


def test_the_child_answers_what_attempt_answers(config_file) -> None:
    good = config_file("pools: [{name: p, addresses: [192.0.2.0/28]}]\nservices: [{name: web, ports: [{port: 80}], endpoints: [192.0.2.100]}]\n")
    bad = config_file("services: [{name: web, ports: [{port: 70000}]}]\n", "bad.yaml")
    # Kinds lbd skips log a debug line while parsing: it must not mix into the answer.
    chatty = config_file("""
        apiVersion: v1
        kind: Secret
        metadata: {name: tls}
        ---
        apiVersion: metallb.io/v1beta1
        kind: L2Advertisement
        metadata: {name: all}
        ---
        apiVersion: metallb.io/v1beta1
        kind: IPAddressPool
        metadata: {name: p}
        spec: {addresses: [192.0.2.0/28], autoAssign: true}
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: web, annotations: {metallb.universe.tf/address-pool: p}}
        spec: {type: LoadBalancer, ports: [{port: 80}]}
    """, "chatty.yaml")
    for paths in ([str(good)], [str(bad)], [str(good), str(bad)], [str(chatty)]):
        assert asyncio.run(attempt_in_child(paths, 30)) == attempt(paths)


def test_a_crashing_child_is_a_config_error(config_file, monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(config_file("pools: []\n"))
    monkeypatch.setattr(sys, "executable", "/bin/false")
    (error,) = asyncio.run(attempt_in_child([path], 30)).errors
    assert error.file == path
    assert error.message == "the config parser failed (exit status 1): no message"


def test_a_hanging_child_is_stopped(config_file, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(config_file("pools: []\n"))
    sleeper = tmp_path / "sleeper"
    sleeper.write_text("#!/bin/sh\nexec sleep 30\n")
    sleeper.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(sleeper))
    (error,) = asyncio.run(attempt_in_child([path], 0.5)).errors
    assert error.message == "parsing took longer than 0.5 s and was stopped"
