"""The QEMU program: qemu-monitor-command (QMP and HMP) and qemu-monitor-event."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator

import libvirt
import libvirt_qemu
import pytest

from e2e.access import firmware_xml, running
from e2e.daemon import DaemonProcess
from e2e.watch import VirshEvents

pytestmark = pytest.mark.slow

NAME = "i3e-qemu"


@pytest.fixture(scope="module")
def guest(module_daemon: DaemonProcess) -> Iterator[DaemonProcess]:
    with running(module_daemon, NAME, firmware_xml(NAME)):
        yield module_daemon


def test_qmp_command(guest: DaemonProcess) -> None:
    out = guest.virsh("qemu-monitor-command", NAME, '{"execute":"query-status"}').stdout
    reply = json.loads(out)
    assert reply["return"]["status"] == "running"
    assert re.fullmatch(r"libvirt-\d+", reply["id"])
    out = guest.virsh("qemu-monitor-command", NAME, '{"execute":"no-such-thing"}').stdout
    assert json.loads(out)["error"]["class"] == "CommandNotFound"  # QEMU's answer, as is
    log = (guest.root / "var/log/libvirt/qemu" / f"{NAME}.log").read_text()
    assert log.count("is tainted: custom-monitor") == 1


def test_hmp_command(guest: DaemonProcess) -> None:
    out = guest.virsh("qemu-monitor-command", NAME, "--hmp", "info status").stdout
    assert out.strip() == "VM status: running"
    dom = guest.conn().lookupByName(NAME)
    assert libvirt_qemu.qemuMonitorCommand(dom, "info name", 1).strip() == NAME


def test_command_on_a_guest_not_running(guest: DaemonProcess) -> None:
    path = guest.root / "i3e-qemu-off.xml"
    path.write_text(firmware_xml("i3e-qemu-off"))
    guest.virsh("define", str(path))
    try:
        res = guest.virsh("qemu-monitor-command", "i3e-qemu-off", "--hmp", "info status",
                          check=False)
        assert "error: Requested operation is not valid: domain is not running" in res.stderr
    finally:
        guest.virsh("undefine", "i3e-qemu-off")


def monitor_events(daemon: DaemonProcess, *args: str) -> VirshEvents:
    return VirshEvents(daemon, "qemu-monitor-event", "--loop", *args)


def test_monitor_events_with_filters(guest: DaemonProcess) -> None:
    watches = {
        "all": monitor_events(guest),
        "stop": monitor_events(guest, "--domain", NAME, "--event", "STOP"),
        "nocase": monitor_events(guest, "--event", "resume", "--no-case"),
        "regex": monitor_events(guest, "--event", "^(RES|XYZ)", "--regex"),
    }
    try:
        time.sleep(1.0)  # let them register
        guest.virsh("suspend", NAME)
        guest.virsh("resume", NAME)
        stop = rf"event STOP at \d+\.\d{{6}} for domain '{NAME}': <null>"
        resume = rf"event RESUME at \d+\.\d{{6}} for domain '{NAME}': <null>"
        watches["all"].wait_for(stop)
        watches["all"].wait_for(resume)
        watches["stop"].wait_for(stop)
        watches["nocase"].wait_for(resume)
        watches["regex"].wait_for(resume)
        time.sleep(0.5)
        assert not any("RESUME" in line for line in watches["stop"].lines())
        assert not any("STOP" in line for line in watches["nocase"].lines())
        assert not any("STOP" in line for line in watches["regex"].lines())
    finally:
        for watch in watches.values():
            watch.close()


def test_monitor_event_details(guest: DaemonProcess) -> None:
    """An event with data (a VNC client connecting) comes with it as compact JSON."""
    watch = monitor_events(guest, "--domain", NAME, "--event", "VNC_CONNECTED")
    try:
        time.sleep(1.0)
        port = int(re.findall(r"<graphics type='vnc' port='(\d+)'",
                              guest.virsh("dumpxml", NAME).stdout)[0])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.recv(12)
        line = watch.wait_for(rf"event VNC_CONNECTED at \d+\.\d{{6}} for domain '{NAME}': .*")[0]
        details = json.loads(line.split(": ", 1)[1])
        assert details["server"]["service"] == str(port)
        assert details["client"]["host"] == "127.0.0.1"
        assert ", " not in line.split(": ", 1)[1]
    finally:
        watch.close()


def test_monitor_event_register_and_deregister(guest: DaemonProcess) -> None:
    conn = libvirt.open(guest.uri)  # callbacks run on the session's event loop (conftest)
    try:
        dom = conn.lookupByName(NAME)
        ids = [
            libvirt_qemu.qemuMonitorEventRegister(conn, dom, "STOP", lambda *a: None, None, 0),
            libvirt_qemu.qemuMonitorEventRegister(
                conn, None, "^vnc_", lambda *a: None, None,
                libvirt_qemu.VIR_CONNECT_DOMAIN_QEMU_MONITOR_EVENT_REGISTER_REGEX
                | libvirt_qemu.VIR_CONNECT_DOMAIN_QEMU_MONITOR_EVENT_REGISTER_NOCASE),
        ]
        for callback_id in ids:
            libvirt_qemu.qemuMonitorEventDeregister(conn, callback_id)
        with pytest.raises(libvirt.libvirtError) as err:
            libvirt_qemu.qemuMonitorEventRegister(conn, None, "(", lambda *a: None, None,
                                                  1)
        assert "failed to compile regex '('" in err.value.get_error_message()
    finally:
        conn.close()
