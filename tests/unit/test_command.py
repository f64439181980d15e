"""QEMU command lines against ``virsh domxml-to-native qemu-argv`` of the reference libvirtd.

tests/data/domain/NAME.argv holds libvirtd's answer for NAME.xml. What libvirtd adds
from machinery we leave out (master key secret, tap fds it opened) is masked.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from test_domain_xml import CAPS, CORPUS, DATA

from drivers.qemu.command import build_argv
from drivers.qemu.domain_xml import DomainDef, parse
from drivers.qemu.domain_xml.firmware import select_firmware

ARGV = sorted(p.stem for p in DATA.glob("*.argv"))
# domxml-to-native turns every interface into a tap and re-addresses them, and
# expands host-model from the host CPU: those options are compared by hand below.
NOT_COMPARED = {
    "net": ("-netdev",),
    "q35-legacy": ("-netdev", "net"),
    "addresses": ("-netdev", "net"),
    "features": ("-cpu",),
    "q35-mixed": ("-netdev", "-vnc"),  # its passwd is not in the XML virsh hands over
    "i440fx-mixed": ("-netdev", "-cpu", "-rtc"),
}  # minimum match and a clock offset from now


def _reference(name: str) -> list[str]:
    words = shlex.split((DATA / f"{name}.argv").read_text())
    return words[words.index(CAPS.emulator) :]


def _ours(name: str, **kw) -> list[str]:
    d = parse((DATA / f"{name}.xml").read_text(), CAPS)
    select_firmware(d, "/var/lib/libvirt/qemu/nvram")
    return build_argv(
        d,
        CAPS,
        monitor_path="/mon.sock",
        vnc_port=5900,
        spice_port=5901,
        channel_dir=f"/var/lib/libvirt/qemu/channel/target/domain--1-{d.name}",
        **kw,
    )


def _normalise(argv: list[str], skip: tuple[str, ...] = ()) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(argv):
        opt = argv[i]
        value = argv[i + 1] if i + 1 < len(argv) else ""
        if opt == "-object" and "masterKey" in value:
            i += 2
            continue
        if opt == "-chardev" and value.startswith("socket,id=charmonitor"):
            value = "MONITOR"
        if opt == "-netdev" and '"type":"tap"' in value:
            value = "TAP"  # libvirtd passes a tap fd it opened
        if opt == "-device":  # domxml-to-native drops a NIC's <mtu>; a real start passes it
            value = re.sub(r'"host_mtu":\d+,', "", value)
        if opt in skip or (opt == "-device" and "net" in skip and '"netdev"' in value):
            i += 2
            continue
        out.append(opt)
        if opt.startswith("-") and value and not value.startswith("-"):
            out.append(value)
            i += 2
        else:
            i += 1
    return out


@pytest.mark.parametrize("name", ARGV)
def test_argv_matches_libvirtd(name: str) -> None:
    skip = NOT_COMPARED.get(name, ())
    assert _normalise(_ours(name), skip) == _normalise(_reference(name), skip)


def _option(argv: list[str], opt: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == opt]


def test_network_backends() -> None:
    argv = _ours("net", net_fds={"net1": 42})
    netdevs = [json.loads(v) for v in _option(argv, "-netdev")]
    assert netdevs[0] == {"type": "user", "id": "hostnet0"}
    assert netdevs[1] == {"type": "tap", "fd": "42", "id": "hostnet1"}
    assert netdevs[2] == {
        "type": "tap",
        "ifname": "h5atap0",
        "script": "no",
        "downscript": "no",
        "id": "hostnet2",
    }
    nics = [json.loads(v) for v in _option(argv, "-device") if '"netdev"' in v]
    assert [(n["driver"], n["id"], n["addr"]) for n in nics] == [
        ("virtio-net-pci", "net0", "0x2"),
        ("e1000", "net1", "0x3"),
        ("rtl8139", "net2", "0x4"),
        ("rtl8139", "net3", "0x5"),
    ]


def test_nic_boot_index_as_libvirtd_starts_it() -> None:
    """domxml-to-native drops it; a real start of q35-legacy puts it after the MAC."""
    nics = [v for v in _option(_ours("q35-legacy"), "-device") if '"netdev"' in v]
    assert nics == [
        '{"driver":"rtl8139","netdev":"hostnet0","id":"net0","mac":"52:54:00:00:00:03","bus":"pci.2","addr":"0x1"}',
        '{"driver":"e1000e","netdev":"hostnet1","id":"net1","mac":"52:54:00:00:00:04","bootindex":1,'
        '"bus":"pci.3","addr":"0x0"}',
    ]


def test_vnc_password_and_keymap() -> None:
    argv = _ours("q35-mixed")
    assert _option(argv, "-vnc") == ["127.0.0.1:0,password=on,audiodev=audio1"]
    assert _option(argv, "-k") == ["de"]


def test_host_model_cpu_uses_host() -> None:
    assert _option(_ours("features"), "-cpu") == ["host"]


def test_pidfile_and_no_daemonize() -> None:
    argv = _ours("minimal", pidfile="/run/x.pid")
    assert _option(argv, "-pidfile") == ["/run/x.pid"]
    assert "-daemonize" not in argv


def _firmware_guest_argv(tmp: Path) -> list[str]:
    kvm = os.access("/dev/kvm", os.R_OK | os.W_OK)
    xml = (DATA / "minimal.xml").read_text()
    if not kvm:
        xml = xml.replace("type='kvm'", "type='qemu'")
    d = parse(xml, CAPS)
    return build_argv(
        d, CAPS, monitor_path=str(tmp / "monitor.sock"), pidfile=str(tmp / "qemu.pid")
    )


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which(CAPS.emulator), reason="no QEMU")
async def test_qemu_runs_our_argv(tmp_path: Path) -> None:
    from qemu.qmp import QMPClient

    argv = _firmware_guest_argv(tmp_path)
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    qmp = QMPClient("test")
    try:
        sock = tmp_path / "monitor.sock"
        for _ in range(100):
            if sock.exists() or proc.returncode is not None:
                break
            await asyncio.sleep(0.05)
        assert proc.returncode is None, (await proc.stderr.read()).decode()
        await qmp.connect(str(sock))
        status = await qmp.execute("query-status")
        assert status["status"] == "prelaunch"  # -S: stopped before the first instruction
        ids = {
            dev.get("qdev_id") for bus in await qmp.execute("query-pci") for dev in bus["devices"]
        }
        assert {"usb", "balloon0"} <= ids  # libvirt's aliases are QEMU's ids
        await qmp.execute("quit")
        with contextlib.suppress(EOFError):  # QEMU may hang up before we do
            await qmp.disconnect()
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def _runnable(name: str, tmp: Path) -> DomainDef:
    """A corpus guest QEMU can start here: TCG, scratch images, host-side backends local."""
    d = parse((DATA / f"{name}.xml").read_text(), CAPS)
    d.type = "qemu"  # nested KVM here lacks SMM and some MSRs that host CPUs and Hyper-V need
    for n, disk in enumerate(d.devices.disks):
        if disk.source is not None or disk.net_source:
            image = tmp / f"disk{n}"
            fmt = disk.driver.get("type", "raw")
            subprocess.run(["qemu-img", "create", "-q", "-f", fmt, str(image), "16M"], check=True)
            disk.type, disk.source, disk.net_source = "file", str(image), {}
    for net in d.devices.interfaces:
        net.type = "user"
    for c in d.devices.serials + d.devices.consoles + d.devices.channels:
        if c.source.type in ("unix", "file", "tcp"):
            c.source.attrs, c.protocol = {}, None
            if c.kind != "channel":
                c.source.type = "pty"
    d.devices.others.pop("vsock", None)  # this host has no /dev/vhost-vsock
    for fs in d.devices.other("filesystem"):  # virtiofs needs a virtiofsd: share by 9p
        for driver in fs.element.findall("driver"):
            fs.element.remove(driver)
    d.os.kernel = d.os.initrd = d.os.cmdline = None
    if d.os.nvram:
        shutil.copyfile(d.os.nvram_attrs["template"], tmp / "VARS.fd")
        d.os.nvram = str(tmp / "VARS.fd")
    return d


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which(CAPS.emulator), reason="no QEMU")
@pytest.mark.parametrize("name", [n for n in CORPUS if n != "qemu-commandline"])
def test_qemu_accepts_every_corpus_argv(name: str, tmp_path: Path) -> None:
    argv = build_argv(
        _runnable(name, tmp_path), CAPS, monitor_path=str(tmp_path / "m"), channel_dir=str(tmp_path)
    )
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)  # fmt: skip
    try:
        for _ in range(100):
            if (tmp_path / "m").exists() or proc.poll() is not None:
                break
            time.sleep(0.05)
        time.sleep(0.2)  # options are checked before the monitor listens; devices after
        assert proc.poll() is None, proc.stderr.read().decode()
    finally:
        proc.kill()
        proc.wait()


MIXES = [c for c in json.loads((DATA / "generated.json").read_text()) if "argv" in c]


@pytest.mark.parametrize("case", MIXES, ids=lambda case: re.search(r"h5a-g[\w-]+", case["xml"])[0])
def test_generated_mixes_argv(case: dict) -> None:
    """domxml-to-native of random mixes; a vsock's cid and fd, variable clocks' start
    times and host-model CPUs are libvirtd's to pick at start, so are not compared."""
    d = parse(case["out"], CAPS)
    name = d.name
    words = shlex.split(case["argv"])
    ours = build_argv(
        d, CAPS, monitor_path="/m", vnc_port=5900, spice_port=5901,
        channel_dir=f"/var/lib/libvirt/qemu/channel/target/domain--1-{name}",
    )  # fmt: skip
    skip: tuple[str, ...] = ("-netdev",)
    if "offset='variable'" in case["out"]:
        skip += ("-rtc",)
    if "host-model" in case["out"]:
        skip += ("-cpu",)
    reference = [w for w in _normalise(words[words.index(CAPS.emulator) :], skip)]
    got = _normalise(ours, skip)
    # the reference was taken from a second definition: new generated ids and MACs
    picked = re.compile(
        r'"guest-cid":\d+(,"vhostfd":"-1")?|"guid":"[0-9a-f-]+"|52:54:00(:[0-9a-f]{2}){3}'
    )
    assert [picked.sub("X", w) for w in got] == [picked.sub("X", w) for w in reference]
