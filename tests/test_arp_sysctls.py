"""ARP sysctls: what `all` already puts in effect is not written (ProtectKernelTunables= works);
what is missing and cannot be written is an error that names the setting and the fix."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from lbd.net.addresses import SYSCTL_DROP_IN, ArpSysctlError, set_arp_sysctls


def proc_sys(tmp: Path, every: tuple[int, int], eth0: tuple[int, int]) -> Path:
    for name, (ignore, announce) in (("all", every), ("eth0", eth0)):
        conf = tmp / "net" / "ipv4" / "conf" / name
        conf.mkdir(parents=True)
        (conf / "arp_ignore").write_text(f"{ignore}\n")
        (conf / "arp_announce").write_text(f"{announce}\n")
    return tmp


def value(root: Path, name: str, key: str) -> int:
    return int((root / "net" / "ipv4" / "conf" / name / key).read_text())


def read_only(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: Path, *args: object, **kwargs: object) -> int:
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "write_text", refuse)


def test_interface_values_are_set_when_not_in_effect(tmp_path: Path) -> None:
    root = proc_sys(tmp_path, every=(0, 0), eth0=(0, 0))
    assert set_arp_sysctls("eth0", root) == {"arp_ignore": 1, "arp_announce": 2}
    assert (value(root, "eth0", "arp_ignore"), value(root, "eth0", "arp_announce")) == (1, 2)
    assert set_arp_sysctls("eth0", root) == {}  # idempotent


def test_values_in_effect_through_all_need_no_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The sysctl.d drop-in sets `all`; the unit's ProtectKernelTunables= makes /proc/sys read-only.
    root = proc_sys(tmp_path, every=(1, 2), eth0=(0, 0))
    read_only(monkeypatch)
    assert set_arp_sysctls("eth0", root) == {}


def test_read_only_and_not_in_effect_names_the_setting_and_the_drop_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = proc_sys(tmp_path, every=(1, 0), eth0=(0, 0))  # arp_ignore is right, arp_announce is not
    read_only(monkeypatch)
    with pytest.raises(ArpSysctlError) as caught:
        set_arp_sysctls("eth0", root)
    message = str(caught.value)
    assert message.startswith("cannot set net.ipv4.conf.eth0.arp_announce=2 (it is 0, and all.arp_announce is 0): "
                              "Read-only file system")
    assert f"set net.ipv4.conf.all.arp_announce=2 in {SYSCTL_DROP_IN}" in message


def test_a_larger_all_value_cannot_be_overridden_per_interface(tmp_path: Path) -> None:
    root = proc_sys(tmp_path, every=(8, 2), eth0=(1, 2))  # arp_ignore=8: answer no ARP at all
    with pytest.raises(ArpSysctlError, match=r"net.ipv4.conf.all.arp_ignore is 8, which overrides eth0's"):
        set_arp_sysctls("eth0", root)
