"""Connection-level behaviour seen by stock virsh and libvirt-python.

Expected texts are libvirtd 9.0's (seen with ``virsh -c qemu:///system``).
Where a host fact decides the answer (node memory, SMBIOS), the test asks
the host's own libvirtd when one answers read-only, else the kernel.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import libvirt
import pytest
from lxml import etree

from e2e.daemon import DaemonProcess

REF_RO_SOCK = Path("/run/libvirt/libvirt-sock-ro")
LIBVIRT_DIRS = [Path(p) for p in (
    "/run/libvirt", "/etc/libvirt", "/var/lib/libvirt", "/var/log/libvirt", "/var/cache/libvirt",
)]
TINY_XML = """<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>32</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
</domain>
"""
EMPTY_LIST = " Id   Name   State\n--------------------\n\n"


def reference(*args: str) -> subprocess.CompletedProcess[str] | None:
    """The host's libvirtd answering on its read-only socket, if there is one."""
    if not REF_RO_SOCK.is_socket():
        return None
    uri = f"qemu+unix:///system?socket={REF_RO_SOCK}"
    try:
        res = subprocess.run(["virsh", "-c", uri, *args], capture_output=True, text=True,
                             timeout=30, stdin=subprocess.DEVNULL, env=dict(os.environ, LC_ALL="C"))
    except subprocess.TimeoutExpired:
        return None
    if "failed to connect to the hypervisor" in res.stderr:
        return None
    return res


def qemu_version() -> str:
    out = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True,
                         text=True, check=True).stdout
    m = re.search(r"version (\d+)\.(\d+)\.(\d+)", out)
    assert m, out
    return ".".join(m.groups())


def expected_hostname() -> str:
    """What libvirt reports: the canonical name unless it is a localhost one."""
    name = socket.gethostname()
    if "." in name:
        return name
    try:
        canon = socket.getaddrinfo(name, None, flags=socket.AI_CANONNAME)[0][3]
    except OSError:
        return name
    return canon if canon and not canon.startswith("localhost") else name


def host_memory_kib() -> int:
    """libvirt's node memory: the NUMA nodes' total when the kernel has them."""
    nodes = sorted(Path("/sys/devices/system/node").glob("node[0-9]*/meminfo"))
    if nodes:
        return sum(int(re.search(r"MemTotal:\s+(\d+)", n.read_text()).group(1)) for n in nodes)
    return int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))


def test_version(module_daemon: DaemonProcess) -> None:
    out = module_daemon.virsh("version").stdout
    assert "Compiled against library: libvirt 9.0.0\n" in out
    assert "Using library: libvirt 9.0.0\n" in out
    assert "Using API: QEMU 9.0.0\n" in out
    assert f"Running hypervisor: QEMU {qemu_version()}\n" in out

    conn = module_daemon.conn()
    major, minor, micro = (int(x) for x in qemu_version().split("."))
    assert conn.getType() == "QEMU"
    assert conn.getLibVersion() == 9_000_000
    assert conn.getVersion() == major * 1_000_000 + minor * 1000 + micro


def test_uri(module_daemon: DaemonProcess) -> None:
    assert module_daemon.virsh("uri").stdout.strip() == module_daemon.uri
    assert module_daemon.conn().getURI() == module_daemon.uri
    # libvirtd running as root takes qemu:///session to mean its own driver too.
    session = module_daemon.uri.replace("/system?", "/session?")
    assert module_daemon.virsh("uri", uri=session).stdout.strip() == session


def test_hostname(module_daemon: DaemonProcess) -> None:
    expected = expected_hostname()
    assert module_daemon.virsh("hostname").stdout.strip() == expected
    assert module_daemon.conn().getHostname() == expected


def test_nodeinfo(module_daemon: DaemonProcess) -> None:
    res = module_daemon.virsh("nodeinfo")
    ref = reference("nodeinfo")
    if ref is not None and ref.returncode == 0:
        # The current clock speed may move between two reads on real hardware.
        def steady(text: str) -> list[str]:
            return [ln for ln in text.splitlines() if not ln.startswith("CPU frequency:")]

        assert steady(res.stdout) == steady(ref.stdout)
    fields = dict(line.split(":", 1) for line in res.stdout.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    assert fields["CPU model"] == "x86_64"
    assert int(fields["CPU(s)"]) == os.cpu_count()
    assert fields["Memory size"] == f"{host_memory_kib()} KiB"

    info = module_daemon.conn().getInfo()
    assert info[0] == "x86_64" and info[2] == os.cpu_count()
    assert info[1] == host_memory_kib() // 1024


def test_sysinfo(module_daemon: DaemonProcess) -> None:
    res = module_daemon.virsh("sysinfo", check=False)
    ref = reference("sysinfo")
    if ref is not None:
        assert (res.returncode, res.stdout, res.stderr) == (ref.returncode, ref.stdout, ref.stderr)
    if Path("/sys/firmware/dmi/tables").exists():
        assert res.returncode == 0 and res.stdout.startswith("<sysinfo type='smbios'>")
    else:
        assert res.returncode == 1
        assert "error: unsupported configuration: Host SMBIOS information is not available" \
            in res.stderr
        with pytest.raises(libvirt.libvirtError) as exc:
            module_daemon.conn().getSysinfo()
        assert exc.value.get_error_code() == libvirt.VIR_ERR_CONFIG_UNSUPPORTED


def test_capabilities(module_daemon: DaemonProcess, tmp_path: Path) -> None:
    xml = module_daemon.virsh("capabilities").stdout
    caps = etree.fromstring(xml.encode())
    assert caps.findtext("host/cpu/arch") == "x86_64"
    guests = {(g.findtext("os_type"), g.find("arch").get("name")) for g in caps.findall("guest")}
    assert ("hvm", "x86_64") in guests
    x86 = caps.xpath("guest[os_type='hvm']/arch[@name='x86_64']")[0]
    assert x86.findtext("emulator") == "/usr/bin/qemu-system-x86_64"
    assert "qemu" in {d.get("type") for d in x86.findall("domain")}
    assert module_daemon.conn().getCapabilities().strip() == xml.strip()

    ref = reference("capabilities")
    if ref is not None and ref.returncode == 0:
        ref_caps = etree.fromstring(ref.stdout.encode())

        def machines(root: etree._Element) -> set[tuple[str, str]]:
            return {(a.get("name"), m.text) for a in root.findall("guest/arch")
                    for m in a.findall("machine")}

        assert machines(caps) == machines(ref_caps)

    # libvirt 9.0's schema allows no '.' in a host CPU feature name although
    # libvirtd itself reports e.g. 'sse4.1': its own output fails the same way.
    for feature in caps.xpath("host/cpu/feature[contains(@name, '.')]"):
        feature.getparent().remove(feature)
    path = tmp_path / "caps.xml"
    path.write_bytes(etree.tostring(caps))
    res = subprocess.run(["virt-xml-validate", str(path), "capability"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_list_all_empty(module_daemon: DaemonProcess) -> None:
    assert module_daemon.virsh("list", "--all").stdout == EMPTY_LIST
    assert module_daemon.conn().listAllDomains() == []
    assert module_daemon.conn().numOfDomains() == 0


def test_bad_uri_path(module_daemon: DaemonProcess) -> None:
    bad = module_daemon.uri.replace("/system?", "/nonsense?")
    message = "internal error: unexpected qemu URI path '/nonsense', try qemu:///system"
    res = module_daemon.virsh("uri", uri=bad, check=False)
    assert res.returncode == 1
    assert res.stderr.splitlines() == ["error: failed to connect to the hypervisor", f"error: {message}"]
    with pytest.raises(libvirt.libvirtError) as exc:
        libvirt.open(bad)
    assert exc.value.get_error_code() == libvirt.VIR_ERR_INTERNAL_ERROR
    assert str(exc.value) == message


def test_readonly_socket_reads(module_daemon: DaemonProcess) -> None:
    ro = module_daemon.ro_uri
    assert module_daemon.admin_sock.is_socket()
    for cmd in ("version", "hostname", "capabilities"):
        assert module_daemon.virsh(cmd, uri=ro).stdout == module_daemon.virsh(cmd).stdout, cmd
    assert "CPU(s):" in module_daemon.virsh("nodeinfo", uri=ro).stdout
    assert module_daemon.virsh("list", "--all", uri=ro).stdout == EMPTY_LIST
    # Opened without the read-only flag: only the socket makes it read-only.
    conn = libvirt.open(ro)
    try:
        assert conn.getLibVersion() == 9_000_000
        assert conn.listAllDomains() == []
    finally:
        conn.close()


def test_readonly_socket_refuses_changes(module_daemon: DaemonProcess, tmp_path: Path) -> None:
    name = f"h6-ro-{uuid.uuid4().hex[:8]}"
    xml_file = tmp_path / "dom.xml"
    xml_file.write_text(TINY_XML.format(name=name))
    res = module_daemon.virsh("define", str(xml_file), uri=module_daemon.ro_uri, check=False)
    assert res.returncode == 1
    assert "error: operation forbidden: read only access prevents virDomainDefineXML" in res.stderr

    ref = reference("define", str(xml_file))
    if ref is not None:
        assert (ref.returncode, ref.stderr) == (res.returncode, res.stderr)

    conn = libvirt.open(module_daemon.ro_uri)
    try:
        for call, api in ((conn.defineXML, "virDomainDefineXML"),
                          (conn.createXML, "virDomainCreateXML")):
            with pytest.raises(libvirt.libvirtError) as exc:
                call(TINY_XML.format(name=name))
            assert exc.value.get_error_code() == libvirt.VIR_ERR_OPERATION_DENIED
            assert exc.value.get_error_domain() == libvirt.VIR_FROM_DOMAIN
            assert str(exc.value) == f"operation forbidden: read only access prevents {api}"
    finally:
        conn.close()
    assert module_daemon.virsh("list", "--all").stdout == EMPTY_LIST


def test_sigterm_exits_cleanly(daemon: DaemonProcess) -> None:
    pid_file = daemon.root / "run/libvirtd.pid"
    had_pid_file = pid_file.exists()
    daemon.virsh("uri")
    assert daemon.stop() == 0, daemon.log()
    for sock in (daemon.sock, daemon.ro_sock, daemon.admin_sock):
        assert not sock.exists(), sock
    if had_pid_file:
        assert not pid_file.exists()


def test_idle_timeout(start_daemon: Callable[..., DaemonProcess]) -> None:
    d = start_daemon("-t", "2")
    conn = libvirt.open(d.uri)
    time.sleep(3)
    assert d.running(), "exited with a client connected"
    conn.close()
    deadline = time.monotonic() + 10
    while d.running() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not d.running(), "still running 10s after the last client left"
    assert d.proc.returncode == 0, d.log()
    assert not d.sock.exists()


def listening_unix_paths(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    paths = set()
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        cols = line.split()
        if len(cols) >= 8 and cols[6] in inodes:
            paths.add(cols[7])
    return paths


def open_files(pid: int) -> set[str]:
    files = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            files.add(os.readlink(fd))
        except OSError:
            pass
    return files


def test_root_keeps_everything_under_root(daemon: DaemonProcess, tmp_path: Path) -> None:
    name = f"h6-root-{uuid.uuid4().hex[:8]}"
    xml_file = tmp_path / "dom.xml"
    xml_file.write_text(TINY_XML.format(name=name))
    daemon.virsh("define", str(xml_file))

    sockets = listening_unix_paths(daemon.pid)
    assert {str(daemon.sock), str(daemon.ro_sock), str(daemon.admin_sock)} <= sockets
    assert all(p.startswith(f"{daemon.root}/") for p in sockets), sockets
    outside = {f for f in open_files(daemon.pid)
               if any(f == str(d) or f.startswith(f"{d}/") for d in LIBVIRT_DIRS)}
    assert not outside, outside

    assert (daemon.root / f"etc/libvirt/qemu/{name}.xml").is_file()
    leaked = [p for d in LIBVIRT_DIRS if d.exists() for p in d.rglob(f"*{name}*")]
    assert not leaked, leaked
    daemon.virsh("undefine", name)


def test_two_roots_side_by_side(start_daemon: Callable[..., DaemonProcess],
                                tmp_path: Path) -> None:
    a, b = start_daemon(), start_daemon()
    xml_file = tmp_path / "dom.xml"
    xml_file.write_text(TINY_XML.format(name="h6-side"))
    a.virsh("define", str(xml_file))
    assert a.virsh("list", "--all", "--name").stdout.split() == ["h6-side"]
    assert b.virsh("list", "--all").stdout == EMPTY_LIST
