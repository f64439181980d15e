"""fs, netfs and iscsi pools without a daemon: their XML, the command lines built
for mount, mkfs and iscsiadm, the mount table, the blkid probe, and libvirtd's
errors (texts taken from libvirtd 9.0 on this machine)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from drivers.storage import fs, iscsi
from drivers.storage.fs import FsBackend, NetfsBackend, mount_argv, mounted, source_spec
from drivers.storage.iscsi import IscsiBackend
from drivers.storage.pool import backend_class
from drivers.storage.pool_xml import PoolSizes, format_pool, parse_pool, same_source
from protocol.errors import ErrorCode, ErrorDomain, VirError

UUID = "6327cf6d-d084-43f8-ab90-84788127c9eb"
NS = "http://libvirt.org/schemas/storagepool/fs/1.0"


def netfs(fmt: str = "nfs", extra: str = "", target: str = "/mnt/n") -> str:
    return (f"<pool type='netfs'><name>n</name><uuid>{UUID}</uuid><source>"
            f"<host name='127.0.0.1'/><dir path='/export//x/'/><format type='{fmt}'/>{extra}"
            f"</source><target><path>{target}</path></target></pool>")


def fspool(device: str = "/dev/loop7", fmt: str = "ext4", target: str = "/mnt/f") -> str:
    return (f"<pool type='fs'><name>f</name><uuid>{UUID}</uuid><source>"
            f"<device path='{device}'/><format type='{fmt}'/></source>"
            f"<target><path>{target}</path></target></pool>")


def test_netfs_xml_as_libvirtd_prints_it() -> None:
    xml = (f"<pool type='netfs' xmlns:fs='{NS}'><name>n</name><uuid>{UUID}</uuid><source>"
           "<host name='127.0.0.1'/><dir path='/export'/><format type='auto'/>"
           "<protocol ver='4'/></source><target><path>/mnt/n</path></target>"
           "<fs:mount_opts><fs:option name='sync'/></fs:mount_opts></pool>")
    assert format_pool(parse_pool(xml), PoolSizes()) == f"""<pool type='netfs' xmlns:fs='{NS}'>
  <name>n</name>
  <uuid>{UUID}</uuid>
  <capacity unit='bytes'>0</capacity>
  <allocation unit='bytes'>0</allocation>
  <available unit='bytes'>0</available>
  <source>
    <host name='127.0.0.1'/>
    <dir path='/export'/>
    <format type='auto'/>
    <protocol ver='4'/>
  </source>
  <target>
    <path>/mnt/n</path>
  </target>
  <fs:mount_opts>
    <fs:option name='sync'/>
  </fs:mount_opts>
</pool>
"""


def test_iscsi_xml_as_libvirtd_prints_it() -> None:
    xml = (f"<pool type='iscsi'><name>i</name><uuid>{UUID}</uuid><source>"
           "<host name='127.0.0.1' port='3261'/><device path='iqn.2026-01.org.example:t'/>"
           "<initiator><iqn name='iqn.2026-01.org.example:i'/></initiator>"
           "<auth type='chap' username='u'><secret usage='s'/></auth>"
           "<vendor name='V'/><product name='P'/><format type='x'/><dir path='/a'/></source>"
           "<target><path>/dev/disk/by-path</path></target></pool>")
    assert format_pool(parse_pool(xml), PoolSizes()).split("\n")[6:19] == [
        "  <source>",
        "    <host name='127.0.0.1' port='3261'/>",
        "    <device path='iqn.2026-01.org.example:t'/>",
        "    <initiator>",
        "      <iqn name='iqn.2026-01.org.example:i'/>",
        "    </initiator>",
        "    <auth type='chap' username='u'>",
        "      <secret usage='s'/>",
        "    </auth>",
        "    <vendor name='V'/>",
        "    <product name='P'/>",
        "  </source>",
        "  <target>",
    ]


@pytest.mark.parametrize(("xml", "code", "message"), [
    ("<pool type='fs'><name>a</name></pool>", ErrorCode.XML_ERROR,
     "XML error: missing storage pool source device name"),
    ("<pool type='fs'><name>a</name><source><device path='/dev/x'/></source></pool>",
     ErrorCode.XML_ERROR, "XML error: missing storage pool target path"),
    ("<pool type='netfs'><name>a</name></pool>", ErrorCode.XML_ERROR,
     "XML error: missing storage pool source host name"),
    ("<pool type='netfs'><name>a</name><source><host name='h'/></source></pool>",
     ErrorCode.XML_ERROR, "XML error: missing storage pool source path"),
    ("<pool type='iscsi'><name>a</name><source><host name='h'/></source></pool>",
     ErrorCode.XML_ERROR, "XML error: missing storage pool target path"),
    ("<pool type='iscsi-direct'><name>a</name></pool>", ErrorCode.XML_ERROR,
     "XML error: missing storage pool source host name"),
    (fspool(fmt="bogus"), ErrorCode.CONFIG_UNSUPPORTED,
     "unsupported configuration: unknown pool format type bogus"),
    ("<pool type='fs'><name>a</name><source><device/></source></pool>",
     ErrorCode.XML_ERROR, "XML error: missing storage pool source device path"),
    ("<pool type='netfs'><name>a</name><source><host/></source></pool>",
     ErrorCode.XML_ERROR, "XML error: missing storage pool host name"),
    ("<pool type='iscsi'><name>a</name><source><host name='h' port='x'/></source></pool>",
     ErrorCode.XML_ERROR,
     ("XML error: Invalid value for attribute 'port' in element 'host': 'x'. Expected integer "
      "value")),
    (("<pool type='fs'><name>a</name><source><device path='/d' part_separator='maybe'/>"
      "</source></pool>"), ErrorCode.XML_ERROR,
     "XML error: Invalid value for attribute 'part_separator' in element 'device': 'maybe'."),
    (netfs("cifs", "<protocol ver='3'/>"), ErrorCode.CONFIG_UNSUPPORTED,
     "unsupported configuration: storage pool protocol ver unsupported for pool type 'cifs'"),
    (netfs("nfs", "<protocol ver='3,4'/>"), ErrorCode.XML_DETAIL,
     "XML error: storage pool protocol ver '3,4' must not contain ','"),
    (netfs("nfs", "<auth username='u'><secret usage='s'/></auth>"),
     ErrorCode.CONFIG_UNSUPPORTED, "unsupported configuration: storage pool missing auth type"),
    (netfs("nfs", "<auth type='chap'><secret usage='s'/></auth>"), ErrorCode.XML_ERROR,
     "XML error: missing username for auth"),
    (netfs("nfs", "<auth type='bad' username='u'><secret usage='s'/></auth>"),
     ErrorCode.CONFIG_UNSUPPORTED, "unsupported configuration: unknown auth type 'bad'"),
    (netfs("nfs", "<auth type='chap' username='u'/>"), ErrorCode.XML_ERROR,
     "XML error: Missing <secret> element in auth"),
    (netfs("nfs", "<auth type='chap' username='u'><secret/></auth>"), ErrorCode.XML_ERROR,
     "XML error: missing secret uuid or usage attribute"),
])
def test_source_errors_are_libvirtd_s(xml: str, code: ErrorCode, message: str) -> None:
    with pytest.raises(VirError) as e:
        parse_pool(xml)
    assert (e.value.code, e.value.message) == (code, message)


def test_iscsi_direct_has_no_backend_here() -> None:
    """libvirtd 9.0 of Debian is built without libiscsi: iscsi-direct pools are refused."""
    assert parse_pool("<pool type='iscsi-direct'><name>a</name><source><host name='h'/>"
                      "<device path='iqn.x:y'/><initiator><iqn name='iqn.x:i'/></initiator>"
                      "</source></pool>").target_path == ""
    with pytest.raises(VirError) as e:
        backend_class("iscsi-direct")
    assert e.value.message == "internal error: missing backend for pool type 6 (iscsi-direct)"
    assert backend_class("iscsi") is IscsiBackend


def test_source_conflicts_by_type() -> None:
    a, b = parse_pool(netfs()), parse_pool(netfs(target="/mnt/other"))
    b.name = "m"
    assert same_source(a, b)  # same host and export, whatever the target
    assert not same_source(a, parse_pool(netfs(extra="").replace("/export//x/", "/y")))
    f1, f2 = parse_pool(fspool(target="/a")), parse_pool(fspool(target="/b"))
    assert same_source(f1, f2)  # one device
    assert not same_source(f1, parse_pool(fspool(device="/dev/loop6")))
    assert not same_source(a, f1)


def test_mount_command_lines_as_libvirt_builds_them() -> None:
    assert mount_argv(parse_pool(fspool())) == [
        "/bin/mount", "-o", "nodev,nosuid,noexec", "-t", "ext4", "/dev/loop7", "/mnt/f"]
    assert mount_argv(parse_pool(netfs())) == [
        "/bin/mount", "-o", "nodev,nosuid,noexec", "-t", "nfs", "127.0.0.1:/export/x",
        "/mnt/n"]
    assert mount_argv(parse_pool(netfs("auto", "<protocol ver='3'/>"))) == [
        "/bin/mount", "-o", "nodev,nosuid,noexec,nfsvers=3", "127.0.0.1:/export/x", "/mnt/n"]
    assert mount_argv(parse_pool(netfs("cifs"))) == [
        "/bin/mount", "-o", "nodev,nosuid,noexec,guest", "-t", "cifs",
        "//127.0.0.1//export/x", "/mnt/n"]
    assert mount_argv(parse_pool(netfs("glusterfs"))) == [
        "/bin/mount", "-o", "nodev,nosuid,noexec,direct-io-mode=1", "-t", "glusterfs",
        "127.0.0.1:/export/x", "/mnt/n"]
    custom = netfs("nfs", "<protocol ver='4'/>").replace(
        "<pool type='netfs'>", f"<pool type='netfs' xmlns:fs='{NS}'>").replace(
        "</pool>", "<fs:mount_opts><fs:option name='sync'/><fs:option name='lazytime'/>"
                   "</fs:mount_opts></pool>")
    assert mount_argv(parse_pool(custom))[1:3] == ["-o", "nodev,nosuid,noexec,nfsvers=4,sync,lazytime"]


def test_mount_table(tmp_path: Path) -> None:
    table = tmp_path / "mounts"
    table.write_text("/dev/loop7 /mnt/f ext4 rw 0 0\n"
                     "127.0.0.1:/export /mnt/with\\040space nfs rw 0 0\n")
    assert mounted("/dev/loop7", "/mnt/f", str(table))
    assert not mounted("/dev/loop6", "/mnt/f", str(table))
    assert not mounted("/dev/loop7", "/mnt/g", str(table))
    assert mounted("127.0.0.1:/export", "/mnt/with space", str(table))
    assert source_spec(parse_pool(fspool())) == "/dev/loop7"


async def test_start_checks_the_source_first() -> None:
    d = parse_pool(fspool())
    d.source.devices.clear()
    with pytest.raises(VirError) as e:
        await FsBackend(d).start()
    assert (e.value.code, e.value.message) == (ErrorCode.INTERNAL_ERROR,
                                               "internal error: missing source device")
    assert not await FsBackend(d).is_active()


async def test_child_errors_read_as_libvirt_s() -> None:
    with pytest.raises(VirError) as e:
        await fs.run("/nonexistent/iscsiadm", "--mode", "session")
    assert (e.value.code, e.value.domain, e.value.message) == (
        ErrorCode.INTERNAL_ERROR, ErrorDomain.NONE,
        ("internal error: Child process (/nonexistent/iscsiadm --mode session) unexpected exit "
         "status 127: libvirt:  error : cannot execute binary /nonexistent/iscsiadm: No such "
         "file or directory\n"))
    status, _, err = await fs.run("/bin/sh", "-c", "echo oops >&2; exit 3", check=False)
    assert (status, err) == (3, "oops\n")


async def test_netfs_build_has_no_device_to_format(tmp_path: Path) -> None:
    d = parse_pool(netfs(target=str(tmp_path / "n")))
    with pytest.raises(VirError) as e:
        await NetfsBackend(d).build(fs.BUILD_OVERWRITE)
    assert e.value.message == ("Requested operation is not valid: No source device specified "
                               "when formatting pool 'n'")
    assert (tmp_path / "n").is_dir()  # made first, as libvirt does
    (tmp_path / "n").chmod(0o755)
    await NetfsBackend(d).build(0)
    assert (tmp_path / "n").stat().st_mode & 0o777 == 0o711  # libvirt's mode over the one found


@pytest.mark.skipif(shutil.which("mkfs.ext4") is None, reason="needs mkfs.ext4")
async def test_build_on_an_image_file(tmp_path: Path) -> None:
    """An image file serves as a device for mkfs and the blkid probe."""
    image = tmp_path / "fs.img"
    image.write_bytes(b"")
    os.truncate(image, 16 << 20)
    backend = FsBackend(parse_pool(fspool(str(image), target=str(tmp_path / "m"))))
    await backend.build(0)  # the directory alone
    assert (tmp_path / "m").is_dir()
    assert (await fs.run(fs.BLKID, "-p", str(image), check=False))[0] == 2
    await backend.build(fs.BUILD_NO_OVERWRITE)  # empty: formatted
    with pytest.raises(VirError) as e:
        await backend.build(fs.BUILD_NO_OVERWRITE)
    assert (e.value.code, e.value.message) == (
        ErrorCode.STORAGE_POOL_BUILT,
        f"Storage pool already built: Device '{image}' already formatted using 'ext4'")
    other = FsBackend(parse_pool(fspool(str(image), "vfat", str(tmp_path / "m"))))
    with pytest.raises(VirError) as e:
        await other.build(fs.BUILD_NO_OVERWRITE)
    assert e.value.message == (
        f"Storage pool already built: Format of device '{image}' does not match the expected "
        "format 'vfat', forced overwrite is necessary")
    await backend.build(fs.BUILD_OVERWRITE)
    missing = FsBackend(parse_pool(fspool(str(tmp_path / "nope"), target=str(tmp_path / "m"))))
    with pytest.raises(VirError) as e:
        await missing.build(fs.BUILD_OVERWRITE)
    assert e.value.message == ("Requested operation is not valid: Source device does not exist "
                               "when formatting pool 'f'")


async def test_netfs_discovery_errors(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(VirError) as e:
        await NetfsBackend.find_sources(None)
    assert (e.value.code, e.value.message) == (
        ErrorCode.INVALID_ARG, "invalid argument: hostname must be specified for netfs sources")
    with pytest.raises(VirError) as e:
        await NetfsBackend.find_sources("<source><host name='a'/><host name='b'/></source>")
    assert e.value.message == ("unsupported configuration: Expected exactly 1 host for the "
                               "storage pool")
    with pytest.raises(VirError) as e:
        await NetfsBackend.find_sources("<sourc/>")
    assert e.value.message == "XML error: expecting root element of 'source', not 'sourc'"
    monkeypatch.setattr(fs, "SHOWMOUNT", "/bin/false")
    with pytest.raises(VirError) as e:
        await NetfsBackend.find_sources("<source><host name='h'/></source>")
    assert (e.value.code, e.value.message) == (
        ErrorCode.OPERATION_FAILED, "operation failed: no storage pools were found on host 'h'")
    fake = tmp_path / "showmount"
    fake.write_text("#!/bin/sh\nprintf '/srv/a dir   *\\n/tmp    10.0.0.0/8\\nnoise\\n'\n")
    fake.chmod(0o755)
    monkeypatch.setattr(fs, "SHOWMOUNT", str(fake))
    assert await NetfsBackend.find_sources("<source><host name='h'/></source>") == """<sources>
  <source>
    <host name='h'/>
    <dir path='/srv/a dir'/>
    <format type='nfs'/>
  </source>
  <source>
    <host name='h'/>
    <dir path='/tmp'/>
    <format type='nfs'/>
  </source>
</sources>
"""


def iscsipool(extra: str = "") -> str:
    return (f"<pool type='iscsi'><name>i</name><uuid>{UUID}</uuid><source>"
            f"<host name='127.0.0.1'/><device path='iqn.x:t'/>{extra}</source>"
            "<target><path>/dev/disk/by-path</path></target></pool>")


async def test_iscsi_start_without_iscsiadm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(iscsi, "ISCSIADM", "/nonexistent/iscsiadm")
    d = parse_pool(iscsipool())
    with pytest.raises(VirError) as e:
        await IscsiBackend(d).start()
    assert (e.value.code, e.value.domain, e.value.message) == (
        ErrorCode.INTERNAL_ERROR, ErrorDomain.NONE,
        ("internal error: /nonexistent/iscsiadm failed new mode for target 'iqn.x:t' with "
         "status '127'"))
    assert d.source.hosts[0].port == 3260  # libvirt fills the default port in on start
    assert not await IscsiBackend(d).is_active()
    d.source.devices.clear()
    with pytest.raises(VirError) as e:
        await IscsiBackend(d).start()
    assert e.value.message == "internal error: missing source device"


async def test_iscsi_commands(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A stand-in iscsiadm logs its arguments: the session probe, the node record,
    the login; then discovery lists the targets it prints."""
    log = tmp_path / "log"
    fake = tmp_path / "iscsiadm"
    fake.write_text(f"#!/bin/sh\necho \"$@\" >> {log}\n"
                    "case \"$*\" in *discovery*) echo '[::1]:3260,1 iqn.x:a'; "
                    "echo '127.0.0.1:3260,1 iqn.x:b';;\n"
                    "*--login*) echo 'iscsiadm: cannot make connection' >&2; exit 8;; esac\n")
    fake.chmod(0o755)
    monkeypatch.setattr(iscsi, "ISCSIADM", str(fake))
    with pytest.raises(VirError) as e:
        await IscsiBackend(parse_pool(iscsipool())).start()
    assert e.value.message == (
        f"internal error: Child process ({fake} --mode node --portal 127.0.0.1:3260,1 "
        "--targetname iqn.x:t --login) unexpected exit status 8: iscsiadm: cannot make "
        "connection\n")
    assert log.read_text().splitlines() == [
        "--mode session",
        "--mode node --portal 127.0.0.1:3260,1 --targetname iqn.x:t --op new",
        "--mode node --portal 127.0.0.1:3260,1 --targetname iqn.x:t --login",
    ]
    assert await IscsiBackend.find_sources(
        "<source><host name='::1' port='3270'/></source>") == """<sources>
  <source>
    <host name='::1' port='3270'/>
    <device path='iqn.x:a'/>
  </source>
  <source>
    <host name='::1' port='3270'/>
    <device path='iqn.x:b'/>
  </source>
</sources>
"""
    assert log.read_text().splitlines()[-1] == (
        "--mode discovery --type sendtargets --portal [::1]:3270,1 --op nonpersistent")


async def test_iscsi_discovery_errors() -> None:
    with pytest.raises(VirError) as e:
        await IscsiBackend.find_sources(None)
    assert e.value.message == "invalid argument: hostname must be specified for iscsi sources"
    with pytest.raises(VirError) as e:
        await IscsiBackend.find_sources("<source/>")
    assert e.value.message == ("unsupported configuration: Expected exactly 1 host for the "
                               "storage pool")


async def test_iscsi_luns_of_a_session(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A logged-in session (as iscsiadm lists it) and its LUNs (as sysfs shows them)
    make the pool's volumes, named unit:BUS:TARGET:LUN, at their by-path links."""
    fake = tmp_path / "iscsiadm"
    fake.write_text("#!/bin/sh\ncase \"$*\" in '--mode session') "
                    "echo 'tcp: [7] 127.0.0.1:3260,1 iqn.x:t (non-flash)';; esac\n")
    fake.chmod(0o755)
    sysfs = tmp_path / "sys"
    (sysfs / "class/iscsi_session/session7/device/target3:0:0").mkdir(parents=True)
    for lun, kind, block in (("3:0:0:1", "0", "sdz"), ("3:0:0:2", "12", "sdy"),
                             ("4:0:0:1", "0", "sdx")):
        (sysfs / "bus/scsi/devices" / lun / "block" / block).mkdir(parents=True)
        (sysfs / "bus/scsi/devices" / lun / "type").write_text(kind + "\n")
    monkeypatch.setattr(iscsi, "ISCSIADM", str(fake))
    monkeypatch.setattr(iscsi, "SYSFS", str(sysfs))
    backend = IscsiBackend(parse_pool(iscsipool()))
    assert await iscsi.session("iqn.x:t", probe=True) == "7"
    assert await backend.is_active()
    await backend.start()  # logged in already: nothing to do
    assert iscsi._host_number("7") == 3
    backend.d.target_path = "/dev"
    assert backend._luns(3) == [("unit:0:0:1", "/dev/sdz")]
    backend.d.target_path = "/srv"
    with pytest.raises(VirError) as e:
        backend._luns(3)
    assert e.value.message == ("invalid argument: unable to use target path '/srv' for dev "
                               "'sdz'")
    with pytest.raises(VirError) as e:
        await iscsi.session("iqn.x:other", probe=False)
    assert e.value.message == "internal error: cannot find iscsiadm session: "
