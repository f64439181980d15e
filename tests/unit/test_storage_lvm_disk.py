"""logical and disk pools without devices: what we read from lvs, vgs, pvs and
parted, the command lines we run, and libvirt's arithmetic for new partitions."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from drivers.storage import blockdev, disk, logical
from drivers.storage.pool_xml import Device, PoolSource, format_pool, parse_pool
from drivers.storage.pool_xml import PoolSizes as Sizes
from drivers.storage.vol_xml import Backing, Volume, format_vol
from protocol.errors import ErrorCode, VirError

# lvs --separator # --noheadings --units b --unbuffered --nosuffix --options LVS_FIELDS
LVS = """\
  root##aaaaaa-1111-2222-3333-4444-5555-666666#/dev/sda2(0)#linear#1#4194304#4194304#8388608#-wi-ao----
  root##aaaaaa-1111-2222-3333-4444-5555-666666#/dev/sdb1(10)#linear#1#4194304#4194304#8388608#-wi-ao----
  snap#root#bbbbbb-1111-2222-3333-4444-5555-666666#/dev/sda2(1)#linear#1#4194304#4194304#4194304#swi-a-s---#
  wide##cccccc-1111-2222-3333-4444-5555-666666#/dev/sda2(2),/dev/sdb1(0)#striped#2#8388608#4194304#8388608#-wi-a-----
  thinpool##dddddd-1111-2222-3333-4444-5555-666666#thinpool_tdata(0)#thin-pool#1#4194304#4194304#4194304#twi-a-tz--
  sleepy##eeeeee-1111-2222-3333-4444-5555-666666#/dev/sda2(5)#linear#1#4194304#4194304#4194304#-wi-------
  sparse#[sparse_vorigin]#ffffff-1111-2222-3333-4444-5555-666666#/dev/sda2(6)#linear#1#4194304#4194304#4194304#swi-a-s---
"""


def test_lvs_rows_and_extents() -> None:
    rows = logical.parse_lvs(LVS)
    assert [r.name for r in rows] == ["root", "root", "snap", "wide", "thinpool", "sleepy",
                                      "sparse"]
    assert rows[2].origin == "root" and rows[2].attr == "swi-a-s---"
    assert logical.parse_extents(rows[1]) == [("/dev/sdb1", 10 * 4194304, 11 * 4194304)]
    assert logical.parse_extents(rows[3]) == [
        ("/dev/sda2", 2 * 4194304, 2 * 4194304 + 8388608), ("/dev/sdb1", 0, 8388608)]


def test_lvs_malformed_devices_is_libvirts_error() -> None:
    row = logical.parse_lvs(LVS)[3]
    row.devices = "/dev/sda2(2)"  # two stripes announced, one device
    with pytest.raises(VirError) as e:
        logical.parse_extents(row)
    assert e.value.message == "internal error: malformed volume extent devices value"


def _backend(xml: str) -> logical.LogicalBackend:
    return logical.LogicalBackend(parse_pool(xml))


def test_volumes_from_lvs_skip_inactive_and_thin_pools(monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_stat(vol: Volume) -> None:
        vol.capacity = vol.allocation = vol.physical = 1 << 30  # the node's size

    monkeypatch.setattr(blockdev, "stat_block", fake_stat)
    backend = _backend("<pool type='logical'><name>p</name><source><name>vg</name>"
                       "</source></pool>")
    vols = backend._volumes(logical.parse_lvs(LVS))
    assert list(vols) == ["root", "snap", "wide", "sparse"]
    root = vols["root"]
    assert (root.path, root.key, root.type, root.format) == (
        "/dev/vg/root", "aaaaaa-1111-2222-3333-4444-5555-666666", "block", "")
    assert root.allocation == 8388608 and root.capacity == 1 << 30
    assert root.extents == [("/dev/sda2", 0, 4194304), ("/dev/sdb1", 41943040, 46137344)]
    assert vols["snap"].backing == Backing("/dev/vg/root", "")
    assert vols["sparse"].backing is None  # a virtual origin is lvm's own business
    assert backend.sparse == {"snap", "sparse"}
    xml = format_vol(root)
    assert ("  <key>aaaaaa-1111-2222-3333-4444-5555-666666</key>\n  <source>\n"
            "    <device path='/dev/sda2'>\n      <extent start='0' end='4194304'/>\n"
            "    </device>\n    <device path='/dev/sdb1'>\n"
            "      <extent start='41943040' end='46137344'/>\n    </device>\n  </source>\n"
            ) in xml
    assert "<format" not in xml


def test_vgs_and_pvs() -> None:
    assert logical.parse_vgs("  10603200512:4328521728:\n") == Sizes(
        10603200512, 10603200512 - 4328521728, 4328521728)
    assert logical.parse_vgs("") is None
    sources = logical.parse_pvs("  /dev/sdb\n  /dev/sdc   vg0\n  /dev/sdd   vg0\n"
                                "  /dev/sde   other\n")
    assert sources == [
        PoolSource(devices=[Device("/dev/sdc"), Device("/dev/sdd")], name="vg0", format="lvm2"),
        PoolSource(devices=[Device("/dev/sde")], name="other", format="lvm2")]


def test_find_sources_xml(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, ...]] = []

    async def fake_run(*argv: str) -> str:
        calls.append(argv)
        return "  /dev/loop3 vgx\n" if argv[0] == logical.PVS else ""

    monkeypatch.setattr(blockdev, "run", fake_run)
    xml = asyncio.run(logical.LogicalBackend.find_sources(None))
    assert calls == [(logical.VGSCAN,), (logical.PVS, "--noheadings", "-o", "pv_name,vg_name")]
    assert xml == ("<sources>\n  <source>\n    <device path='/dev/loop3'/>\n"
                   "    <name>vgx</name>\n    <format type='lvm2'/>\n  </source>\n</sources>\n")


def test_lvcreate_command_lines() -> None:
    full = Volume("v", capacity=10 * 1024 * 1024 + 1, allocation=10 * 1024 * 1024 + 1)
    assert logical.lvcreate_args(full, "vg") == [
        "/sbin/lvcreate", "--name", "v", "-L", "10241K", "vg"]
    thin = Volume("t", capacity=1 << 30, allocation=0)
    assert logical.lvcreate_args(thin, "vg") == [
        "/sbin/lvcreate", "--name", "t", "-L", "1K", "--type", "snapshot", "--virtualsize",
        "1048576K", "vg"]
    snap = Volume("s", capacity=4096, allocation=4096, backing=Backing("/dev/vg/base"))
    assert logical.lvcreate_args(snap, "vg")[-2:] == ["-s", "/dev/vg/base"]


def test_logical_pool_xml() -> None:
    d = parse_pool("<pool type='logical'><source><device path='/dev/sdz'/><name>vg1</name>"
                   "</source><target><path>/elsewhere</path></target></pool>")
    assert (d.name, d.target_path, d.source.format) == ("vg1", "/dev/vg1", "lvm2")
    assert ("  <source>\n    <device path='/dev/sdz'/>\n    <name>vg1</name>\n"
            "    <format type='lvm2'/>\n  </source>\n  <target>\n    <path>/dev/vg1</path>\n"
            ) in format_pool(d, Sizes())


def _runs(monkeypatch: pytest.MonkeyPatch, fail: set[str] = frozenset()) -> list[tuple[str, ...]]:
    calls: list[tuple[str, ...]] = []

    async def fake_run(*argv: str) -> str:
        calls.append(argv)
        if argv[0] in fail:
            raise VirError(ErrorCode.INTERNAL_ERROR, f"{argv[0]} failed")
        return ""

    monkeypatch.setattr(blockdev, "run", fake_run)
    return calls


def test_logical_build_undoes_pvcreate_when_vgcreate_fails(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _runs(monkeypatch, fail={logical.VGCREATE})
    zeroed: list[str] = []
    monkeypatch.setattr(blockdev, "zero_ends", zeroed.append)
    backend = _backend("<pool type='logical'><name>vg</name><source><device path='/dev/a'/>"
                       "<device path='/dev/b'/></source></pool>")
    with pytest.raises(VirError):
        asyncio.run(backend.build(logical.BUILD_OVERWRITE))
    assert zeroed == ["/dev/a", "/dev/b"]
    assert calls == [(logical.PVCREATE, "/dev/a"), (logical.PVCREATE, "/dev/b"),
                     (logical.VGCREATE, "vg", "/dev/a", "/dev/b"),
                     (logical.PVREMOVE, "/dev/a"), (logical.PVREMOVE, "/dev/b")]


def test_logical_build_flags() -> None:
    backend = _backend("<pool type='logical'><name>vg</name></pool>")
    with pytest.raises(VirError) as e:
        asyncio.run(backend.build(1))
    assert e.value.message == ("unsupported flags (0x1) in function "
                               "virStorageBackendLogicalBuildPool")
    with pytest.raises(VirError) as e:
        asyncio.run(backend.build(logical.BUILD_OVERWRITE | logical.BUILD_NO_OVERWRITE))
    assert "are mutually exclusive" in e.value.message


def test_logical_delete_vol_deactivates_when_lvremove_fails(
        monkeypatch: pytest.MonkeyPatch) -> None:
    attempts = {"n": 0}
    calls: list[tuple[str, ...]] = []

    async def fake_run(*argv: str) -> str:
        calls.append(argv)
        if argv[0] == logical.LVREMOVE and attempts["n"] == 0:
            attempts["n"] += 1
            raise VirError(ErrorCode.INTERNAL_ERROR, "busy")
        return ""

    monkeypatch.setattr(blockdev, "run", fake_run)
    backend = _backend("<pool type='logical'><name>vg</name></pool>")
    asyncio.run(backend.delete_vol(Volume("v", path="/dev/vg/v"), 0))
    assert calls == [(logical.LVREMOVE, "-f", "/dev/vg/v"), (logical.LVCHANGE, "-aln",
                                                            "/dev/vg/v"),
                     (logical.LVREMOVE, "-f", "/dev/vg/v")]


def test_sparse_logical_volume_is_not_wiped() -> None:
    backend = _backend("<pool type='logical'><name>vg</name></pool>")
    backend.sparse.add("t")
    with pytest.raises(VirError) as e:
        asyncio.run(backend.wipe_vol(Volume("t", path="/dev/vg/t"), 0))
    assert e.value.code == ErrorCode.NO_SUPPORT
    assert e.value.message.endswith("logical volume '/dev/vg/t' is sparse, volume wipe "
                                    "not supported")


def test_run_reports_like_virCommandRun() -> None:
    with pytest.raises(VirError) as e:
        asyncio.run(blockdev.run("sh", "-c", "echo oops >&2; exit 3"))
    assert e.value.message == ("internal error: Child process (sh -c echo oops >&2; exit 3) "
                               "unexpected exit status 3: oops")
    assert asyncio.run(blockdev.run("echo", "hi")) == "hi\n"


@pytest.mark.parametrize(("found", "fmt", "writelabel", "message"), [
    ((None, None), "dos", True, None),
    ((None, None), "dos", False,
     "Storage pool probe failed: Device '/dev/x' is unrecognized, requires build"),
    ((None, "dos"), "dos", False, None),
    ((None, "dos"), "dos", True,
     "Storage pool already built: Device '/dev/x' already formatted using 'dos'"),
    (("LVM2_member", None), "LVM2_member", True,
     "Storage pool already built: Device '/dev/x' already formatted using 'LVM2_member'"),
    (("ext4", None), "gpt", True, ("Storage pool already built: Device '/dev/x' formatted "
     "cannot overwrite using 'gpt', requires build --overwrite")),
])
def test_check_empty(monkeypatch: pytest.MonkeyPatch, found: tuple[str | None, str | None],
                     fmt: str, writelabel: bool, message: str | None) -> None:
    async def fake_probe(device: str) -> tuple[str | None, str | None]:
        return found

    monkeypatch.setattr(blockdev, "probe", fake_probe)
    if message is None:
        asyncio.run(blockdev.check_empty("/dev/x", fmt, writelabel))
        return
    with pytest.raises(VirError) as e:
        asyncio.run(blockdev.check_empty("/dev/x", fmt, writelabel))
    assert e.value.message == message


# parted -s /dev/loop0 unit B print free unit chs print, on a 64 MiB loop device
PARTED_DOS = """\
Model: Loopback device (loopback)
Disk /dev/loop0: 67108864B
Sector size (logical/physical): 512B/512B
Partition Table: msdos
Disk Flags: 

Number  Start      End        Size       Type      File system  Flags
        1024B      1048575B   1047552B             Free Space
 1      1048576B   5242879B   4194304B   primary
 2      5242880B   40000511B  34757632B  extended               lba
        5243904B   5744639B   500736B              Free Space
 5      5999616B   10000383B  4000768B   logical
        10000384B  11750399B  1750016B             Free Space
 6      11999744B  20000255B  8000512B   logical
        20000256B  40000511B  20000256B            Free Space
        40000512B  67108863B  27108352B            Free Space

Model: Loopback device (loopback)
Disk /dev/loop0: 257,0,1
Sector size (logical/physical): 512B/512B
BIOS cylinder,head,sector geometry: 257,255,2.  Each cylinder is 261kB.
Partition Table: msdos
Disk Flags: 

Number  Start     End       Type      File system  Flags
 1      4,4,0     20,19,1   primary
"""

PARTED_GPT = """\
Model: Loopback device (loopback)
Disk /dev/loop1: 52428800B
Sector size (logical/physical): 512B/512B
Partition Table: gpt
Disk Flags: 

Number  Start     End        Size       File system  Name     Flags
        17408B    1048575B   1031168B   Free Space
 1      1048576B  2097151B   1048576B                primary
        2097152B  52411903B  50314752B  Free Space

Model: Loopback device (loopback)
Disk /dev/loop1: 200,199,1
Sector size (logical/physical): 512B/512B
BIOS cylinder,head,sector geometry: 200,255,2.  Each cylinder is 261kB.
Partition Table: gpt
Disk Flags: 
"""


def test_parted_dos_layout_as_libvirt_parthelper_lists_it() -> None:
    layout = disk.parse_parted(PARTED_DOS)
    assert (layout.label, layout.geometry) == ("msdos", (257, 255, 2))
    # what libvirt_parthelper prints for the same device, its metadata rows aside
    assert [(p.num, p.kind, p.content, p.start, p.end) for p in layout.parts] == [
        (0, "normal", "free", 1024, 1048576),
        (1, "normal", "data", 1048576, 5242880),
        (2, "extended", "metadata", 5242880, 40000512),
        (0, "logical", "free", 5243904, 5744640),
        (5, "logical", "data", 5999616, 10000384),
        (0, "logical", "free", 10000384, 11750400),
        (6, "logical", "data", 11999744, 20000256),
        (0, "logical", "free", 20000256, 40000512),
        (0, "normal", "free", 40000512, 67107840),  # the last partial cylinder kept out
    ]


def test_dos_pool_sizes_and_volumes() -> None:
    found = disk.lay_out(disk.parse_parted(PARTED_DOS), "/dev/loop0", stat_vol=False)
    assert list(found.volumes) == ["loop0p1", "loop0p2", "loop0p5", "loop0p6"]
    ext = found.volumes["loop0p2"]
    assert (ext.capacity, ext.allocation) == (34757632, 0)  # logical ones unstated here
    assert ext.extents == [("/dev/loop0", 5242880, 40000512)]
    assert found.kinds == {"loop0p1": "normal", "loop0p2": "extended", "loop0p5": "logical",
                           "loop0p6": "logical"}
    assert found.sizes.capacity == 67107840
    assert found.sizes.available == (1048576 - 1024) + 500736 + 1750016 + 20000256 + 27107328
    assert found.free[0] == (1024, 1048576, "normal")


def test_gpt_layout_and_first_sector() -> None:
    layout = disk.parse_parted(PARTED_GPT)
    assert [(p.num, p.kind, p.content) for p in layout.parts] == [
        (0, "normal", "free"), (1, "normal", "data"), (0, "normal", "free")]
    assert layout.parts[-1].end == 52411904  # no cylinder rounding on gpt
    layout.parts[0].start = 0
    found = disk.lay_out(layout, "/dev/loop1", stat_vol=False)
    assert found.free[0][0] == 512  # libvirt never offers sector 0


def test_partition_nodes() -> None:
    assert disk.part_path("/dev/loop0", 3) == "/dev/loop0p3"
    assert disk.part_path("/dev/null", 1) == "/dev/null1"


@pytest.mark.parametrize(("label", "fmt", "kinds", "spec"), [
    ("dos", "none", {"a": "normal"}, "primary ext2"),
    ("dos", "linux-swap", {}, "primary linux-swap"),
    ("dos", "extended", {}, "extended"),
    ("dos", "fat32", {"a": "normal", "b": "normal", "c": "normal", "d": "extended"},
     "logical fat32"),
    ("gpt", "linux", {str(i): "normal" for i in range(9)}, "primary"),
])
def test_partition_spec(label: str, fmt: str, kinds: dict[str, str], spec: str) -> None:
    assert disk.part_spec(label, fmt, kinds) == spec


@pytest.mark.parametrize(("fmt", "kinds", "message"), [
    ("extended", {"a": "extended"}, "internal error: extended partition already exists"),
    ("none", {c: "normal" for c in "abcd"},
     "internal error: no extended partition found and no primary partition available"),
])
def test_partition_spec_refusals(fmt: str, kinds: dict[str, str], message: str) -> None:
    with pytest.raises(VirError) as e:
        disk.part_spec("dos", fmt, kinds)
    assert e.value.message == message


def test_boundaries_round_to_cylinders_on_dos() -> None:
    geometry = (257, 255, 2)  # cylinders of 261120 bytes
    free = [(1024, 67107840, "normal")]
    assert disk.boundaries("dos", geometry, free, {}, 10 << 20) == (1024, 10705919)
    assert disk.boundaries("gpt", geometry, [(17408, 52411904, "normal")], {}, 1 << 20) == (
        17408, 17408 + (1 << 20) - 1)
    # the smallest area that fits wins; logical partitions go inside the extended one
    free = [(1024, 1048576, "normal"), (5243904, 20000256, "logical"),
            (40000512, 67107840, "normal")]
    kinds = {c: "normal" for c in "abc"} | {"d": "extended"}
    start, end = disk.boundaries("dos", geometry, free, kinds, 1 << 20)
    assert start == 5243904 + 512
    assert (end + 1) % 261120 == 0
    with pytest.raises(VirError) as e:
        disk.boundaries("dos", geometry, free, {}, 64 << 20)
    assert e.value.message == "internal error: no large enough free extent"


def _disk(path: str = "/dev/loop0") -> disk.DiskBackend:
    return disk.DiskBackend(parse_pool(
        f"<pool type='disk'><name>d</name><source><device path='{path}'/></source>"
        "<target><path>/dev</path></target></pool>"))


def test_disk_delete_takes_the_number_as_libvirt(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _runs(monkeypatch)
    backend = _disk("/dev/sda")
    asyncio.run(backend.delete_vol(Volume("sda2", path="/dev/sda2"), 0))
    assert calls == [("parted", "/dev/sda", "rm", "--script", "2")]
    calls.clear()
    backend = _disk("/dev/loop0")
    asyncio.run(backend.delete_vol(Volume("loop0p1", path="/dev/loop0p1"), 0))
    assert calls == [("parted", "/dev/loop0", "rm", "--script", "p1")]
    with pytest.raises(VirError) as e:
        asyncio.run(backend.delete_vol(Volume("x", path="/dev/null"), 0))
    assert e.value.message == ("internal error: Volume path 'null' did not start with parent "
                               "pool source device name.")


def test_disk_build_labels(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _runs(monkeypatch)
    monkeypatch.setattr(blockdev, "zero_ends", lambda path: None)
    backend = _disk()
    assert backend.d.source.format == "unknown"
    asyncio.run(backend.build(disk.BUILD_OVERWRITE))
    assert calls == [("parted", "/dev/loop0", "mklabel", "--script", "msdos")]
    assert backend.d.source.format == "dos"  # libvirt settles the label it wrote


def test_disk_volume_formats_parse() -> None:
    from drivers.storage.vol_xml import parse_vol

    vol = parse_vol("<volume><name>sda1</name><capacity>1</capacity><target>"
                    "<format type='linux-swap'/></target></volume>",
                    formats=disk.DiskBackend.vol_formats)
    assert vol.format == "linux-swap"
    with pytest.raises(VirError) as e:
        parse_vol("<volume><name>sda1</name><capacity>1</capacity><target>"
                  "<format type='qcow2'/></target></volume>",
                  formats=disk.DiskBackend.vol_formats)
    assert e.value.message == "unsupported configuration: unknown volume format type qcow2"
    lv = parse_vol("<volume><name>v</name><capacity>1</capacity><target>"
                   "<format type='anything'/></target></volume>", formats=None)
    assert lv.format == ""


def test_zero_ends_of_a_file(tmp_path: Any) -> None:
    path = tmp_path / "dev"
    path.write_bytes(b"\xff" * (3 << 20))
    blockdev.zero_ends(str(path))
    data = path.read_bytes()
    assert data[: 1 << 20] == bytes(1 << 20) and data[-(1 << 20):] == bytes(1 << 20)
    assert data[(1 << 20): (2 << 20)] == b"\xff" * (1 << 20)
