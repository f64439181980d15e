"""VNC of a running guest: its address as virsh shows it, screenshots, OPEN_GRAPHICS_FD."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from xml.etree import ElementTree

import libvirt
import pytest

from e2e.access import firmware_xml, running
from e2e.daemon import DaemonProcess

pytestmark = pytest.mark.slow

NAME = "i3e-graphics"
RFB = b"RFB 003.008\n"


@pytest.fixture(scope="module")
def guest(module_daemon: DaemonProcess) -> Iterator[DaemonProcess]:
    with running(module_daemon, NAME, firmware_xml(NAME)):
        yield module_daemon


def _vnc_port(daemon: DaemonProcess) -> int:
    xml = daemon.virsh("dumpxml", NAME).stdout
    graphics = ElementTree.fromstring(xml).find("devices/graphics")
    assert graphics is not None and graphics.get("autoport") == "yes"
    return int(graphics.get("port", "-1"))


def test_live_xml_vncdisplay_and_domdisplay_agree(guest: DaemonProcess) -> None:
    port = _vnc_port(guest)
    assert port >= 5900
    assert guest.virsh("vncdisplay", NAME).stdout.strip() == f"127.0.0.1:{port - 5900}"
    assert guest.virsh("domdisplay", NAME).stdout.strip() == f"vnc://127.0.0.1:{port - 5900}"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        assert s.recv(12) == RFB


def test_screenshot_is_a_png(guest: DaemonProcess) -> None:
    path = guest.root / "shot.png"
    out = guest.virsh("screenshot", NAME, str(path)).stdout
    assert f"Screenshot saved to {path}, with type of image/png" in out
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width > 0 and height > 0
    res = guest.virsh("screenshot", NAME, str(path), "--screen", "1", check=False)
    assert "error: Requested operation is not valid: no such screen ID" in res.stderr


def test_open_graphics_fd_gives_a_vnc_connection(guest: DaemonProcess) -> None:
    conn = guest.conn()
    dom = conn.lookupByName(NAME)
    for flags in (0, libvirt.VIR_DOMAIN_OPEN_GRAPHICS_SKIPAUTH):
        with socket.socket(fileno=dom.openGraphicsFD(0, flags)) as s:
            s.settimeout(10)
            assert s.recv(12) == RFB
    assert dom.info()[0] == libvirt.VIR_DOMAIN_RUNNING  # the connection still works
    with pytest.raises(libvirt.libvirtError) as err:
        dom.openGraphicsFD(1)
    assert err.value.get_error_message() == "internal error: No graphics backend with index 1"


def test_open_graphics_fd_spice(guest: DaemonProcess) -> None:
    """A SPICE server answers the link message a client sends first."""
    conn = guest.conn()
    xml = firmware_xml("i3e-spice").replace(
        "<graphics type='vnc' autoport='yes'/><video><model type='vga'/></video>",
        "<graphics type='spice' autoport='yes'/><video><model type='qxl'/></video>")
    dom = conn.createXML(xml, 0)
    try:
        with socket.socket(fileno=dom.openGraphicsFD(0, 0)) as s:
            s.settimeout(10)
            link = struct.pack("<IBBHIIII", 0, 1, 0, 0, 0, 0, 0, 18)  # connection id, channel
            s.sendall(b"REDQ" + struct.pack("<III", 2, 2, len(link)) + link)
            assert s.recv(4) == b"REDQ"
    finally:
        dom.destroy()
