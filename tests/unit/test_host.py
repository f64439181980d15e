"""drivers.host against a fake /proc + /sys tree and canned dmidecode output."""

from __future__ import annotations

from pathlib import Path

import pytest
from lxml import etree

from drivers import host
from protocol.errors import ErrorCode, ErrorDomain, VirError

CPUINFO_BLOCK = """processor\t: {n}
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 85
stepping\t: 7
microcode\t: 0x5003604
cpu MHz\t\t: {mhz}
flags\t\t: fpu sse4_1 pclmulqdq constant_tsc nonstop_tsc rep_good xsave avx512_vnni
address sizes\t: 46 bits physical, 48 bits virtual

"""


def _write(root: Path, path: str, text: str) -> None:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)


def _fake_host(root: Path, *, numa: bool = True) -> None:
    """Two nodes, each one socket of two cores with two threads; cpu7 offline."""
    _write(root, "/proc/cpuinfo", "".join(
        CPUINFO_BLOCK.format(n=n, mhz="2100.000" if n < 7 else "2399.999") for n in range(8)
    ))
    _write(root, "/proc/meminfo", "MemTotal:  8000 kB\nMemFree:  3000 kB\n")
    _write(root, "/sys/devices/system/cpu/present", "0-7\n")
    _write(root, "/sys/devices/system/cpu/online", "0-6\n")
    for cpu in range(8):
        topo = f"/sys/devices/system/cpu/cpu{cpu}/topology/"
        _write(root, topo + "physical_package_id", f"{cpu // 4}\n")
        _write(root, topo + "core_id", f"{(cpu % 4) // 2}\n")
        _write(root, topo + "die_id", "0\n")
        first = cpu - cpu % 2
        _write(root, topo + "thread_siblings_list", f"{first}-{first + 1}\n")
    if not numa:
        return
    for node in range(2):
        base = f"/sys/devices/system/node/node{node}/"
        _write(root, base + "meminfo",
               f"Node {node} MemTotal:  {4096 * (node + 1)} kB\n"
               f"Node {node} MemFree:   {1024 * (node + 1)} kB\n"
               f"Node {node} MemUsed:   1 kB\n")
        _write(root, base + "distance", "10 21\n" if node == 0 else "21 10\n")
        _write(root, base + "hugepages/hugepages-2048kB/nr_hugepages", f"{node}\n")
        for cpu in range(node * 4, node * 4 + 4):
            (root / base.lstrip("/") / f"cpu{cpu}").mkdir()


def test_node_info_numa(tmp_path: Path) -> None:
    _fake_host(tmp_path)
    info = host.node_info(str(tmp_path))
    assert info == host.NodeInfo(
        model=host.host_arch(), memory=4096 + 8192, cpus=7, mhz=2399,
        nodes=2, sockets=1, cores=2, threads=2,
    )


def test_node_info_without_numa_uses_cpu_dir(tmp_path: Path) -> None:
    _fake_host(tmp_path, numa=False)
    info = host.node_info(str(tmp_path))
    assert (info.nodes, info.sockets, info.cores, info.threads, info.cpus) == (1, 2, 2, 2, 7)
    assert info.memory == 8000


def test_odd_topology_collapses_like_libvirt(tmp_path: Path) -> None:
    _fake_host(tmp_path)
    _write(tmp_path, "/sys/devices/system/cpu/cpu3/topology/core_id", "9\n")
    info = host.node_info(str(tmp_path))
    assert (info.nodes, info.sockets, info.cores, info.threads) == (1, 1, 8, 1)


def test_free_memory(tmp_path: Path) -> None:
    _fake_host(tmp_path)
    assert host.free_memory(str(tmp_path)) == (1024 + 2048) * 1024
    assert host.cells_free_memory(0, 10, str(tmp_path)) == [1024 * 1024, 2048 * 1024]
    assert host.cells_free_memory(1, 1, str(tmp_path)) == [2048 * 1024]
    with pytest.raises(VirError) as err:
        host.cells_free_memory(2, 1, str(tmp_path))
    assert err.value.code == ErrorCode.INTERNAL_ERROR
    assert err.value.message == "internal error: start cell 2 out of range (0-1)"


def test_free_memory_without_numa(tmp_path: Path) -> None:
    _fake_host(tmp_path, numa=False)
    assert host.free_memory(str(tmp_path)) == 3000 * 1024
    assert host.cells_free_memory(0, 4, str(tmp_path)) == [3000 * 1024]


def test_host_cpu_without_cpu_map(tmp_path: Path) -> None:
    _fake_host(tmp_path)
    cpu = host.host_cpu(str(tmp_path), cpu_map_dir=str(tmp_path / "none"))
    assert cpu.vendor == "Intel" and cpu.model is None
    assert (cpu.family, cpu.model_number, cpu.stepping) == (6, 85, 7)
    assert cpu.microcode == 0x5003604
    assert cpu.tsc_frequency == 2_100_000_000
    assert cpu.phys_bits == 46
    assert (cpu.sockets, cpu.dies, cpu.cores, cpu.threads) == (1, 1, 2, 2)
    assert cpu.features == (
        "fpu", "sse4.1", "pclmuldq", "invtsc", "xsave", "avx512vnni", "osxsave",
    )


FAKE_CPU_MAP = {
    "index.xml": """<cpus><arch name='x86'>
      <include filename='vendors.xml'/><include filename='features.xml'/>
      <include filename='small.xml'/><include filename='exact.xml'/>
      <include filename='big.xml'/><include filename='amd.xml'/>
    </arch></cpus>""",
    "vendors.xml": "<cpus><vendor name='Intel' string='GenuineIntel'/></cpus>",
    "features.xml": """<cpus>
      <feature name='fpu'/><feature name='pclmuldq'><alias name='pclmulqdq'/></feature>
      <feature name='sse4.1'/><feature name='xsave'/><feature name='osxsave'/>
      <feature name='invtsc'/><feature name='avx512vnni'/><feature name='svm'/>
    </cpus>""",
    "small.xml": "<cpus><model name='small'><feature name='fpu'/></model></cpus>",
    "exact.xml": """<cpus><model name='exact'><signature family='6' model='85'/>
      <feature name='fpu'/></model></cpus>""",
    "big.xml": """<cpus><model name='big'><feature name='fpu'/><feature name='xsave'/>
      <feature name='sse4.1'/></model></cpus>""",
    "amd.xml": """<cpus><model name='amd'><vendor name='AMD'/><feature name='fpu'/>
      <feature name='xsave'/><feature name='sse4.1'/><feature name='pclmuldq'/></model></cpus>""",
}


def test_host_cpu_model_from_cpu_map(tmp_path: Path) -> None:
    _fake_host(tmp_path)
    cpu_map = tmp_path / "cpu_map"
    for name, text in FAKE_CPU_MAP.items():
        _write(cpu_map, name, text)
    cpu = host.host_cpu(str(tmp_path), cpu_map_dir=str(cpu_map))
    # 'big' leaves fewer features over, but 'exact' matches the signature;
    # 'amd' has the wrong vendor.
    assert cpu.model == "exact"
    assert cpu.features == ("pclmuldq", "sse4.1", "xsave", "osxsave", "invtsc", "avx512vnni")
    _write(cpu_map, "exact.xml", "<cpus><model name='exact'><feature name='svm'/></model></cpus>")
    host._load_cpu_map.cache_clear()
    cpu = host.host_cpu(str(tmp_path), cpu_map_dir=str(cpu_map))
    assert cpu.model == "big"
    assert cpu.features == ("pclmuldq", "osxsave", "invtsc", "avx512vnni")


def test_numa_cells(tmp_path: Path) -> None:
    _fake_host(tmp_path)
    cells = host.numa_cells(str(tmp_path))
    assert [c.id for c in cells] == [0, 1]
    assert cells[1].memory == 8192
    assert cells[1].distances == [(0, 21), (1, 10)]
    assert cells[1].pages[2048] == 1
    assert [c.id for c in cells[1].cpus] == [4, 5, 6]
    assert cells[1].cpus[0] == host.CellCPU(4, 1, 0, 0, "4-5")


def test_cpu_list_round_trip() -> None:
    assert host.parse_cpu_list("0-2,5,7-8\n") == {0, 1, 2, 5, 7, 8}
    assert host.format_cpu_list({0, 1, 2, 5, 7, 8}) == "0-2,5,7-8"


DMIDECODE = """\
Handle 0x0000, DMI type 0, 24 bytes
BIOS Information
\tVendor: SeaBIOS
\tVersion: 1.16.0-debian
\tRelease Date: 04/01/2014
\tAddress: 0xE8000
\tBIOS Revision: 0.0

Handle 0x0100, DMI type 1, 27 bytes
System Information
\tManufacturer: QEMU
\tProduct Name: Standard PC <i440FX>
\tVersion: pc-i440fx-7.2
\tSerial Number: Not Specified
\tUUID: 8f6a0d4c-8e8d-4ee6-a5a3-60a1f9d7c1e2
\tWake-up Type: Power Switch
\tSKU Number: Not Specified
\tFamily: Not Specified

Handle 0x0300, DMI type 3, 22 bytes
Chassis Information
\tManufacturer: QEMU
\tType: Other
\tVersion: pc-i440fx-7.2
\tSerial Number: Not Specified
\tAsset Tag: Not Specified
\tSKU Number: Not Specified

Handle 0x0400, DMI type 4, 42 bytes
Processor Information
\tSocket Designation: CPU 0
\tType: Central Processor
\tFamily: Other
\tManufacturer: QEMU
\tID: 11 0F A0 00 FF FB 8B 17
\tVersion: pc-i440fx-7.2
\tVoltage: Unknown
\tExternal Clock: Unknown
\tMax Speed: 2000 MHz
\tCurrent Speed: 2000 MHz
\tStatus: Populated, Enabled
\tSerial Number: Not Specified
\tAsset Tag: Not Specified
\tPart Number: Not Specified

Handle 0x0B00, DMI type 11, 5 bytes
OEM Strings
\tString 1: hello

Handle 0x1100, DMI type 17, 40 bytes
Memory Device
\tTotal Width: Unknown
\tSize: 4 GB
\tForm Factor: DIMM
\tLocator: DIMM 0
\tBank Locator: Not Specified
\tType: RAM
\tType Detail: Other
\tSpeed: Unknown
\tManufacturer: QEMU
\tSerial Number: Not Specified
\tPart Number: Not Specified

Handle 0x1101, DMI type 17, 40 bytes
Memory Device
\tSize: No Module Installed
\tForm Factor: DIMM
"""


def test_format_sysinfo() -> None:
    xml = host.format_sysinfo(DMIDECODE)
    assert xml.startswith("<sysinfo type='smbios'>\n  <bios>\n    <entry name='vendor'>SeaBIOS")
    assert xml.endswith("</sysinfo>\n")
    root = etree.fromstring(xml)
    assert [e.tag for e in root] == [
        "bios", "system", "chassis", "processor", "memory_device", "oemStrings",
    ]

    def entries(tag: str) -> dict[str, str]:
        return {e.get("name"): e.text for e in root.find(tag)}

    assert entries("bios") == {
        "vendor": "SeaBIOS", "version": "1.16.0-debian",
        "date": "04/01/2014", "release": "0.0",
    }
    assert entries("system")["product"] == "Standard PC <i440FX>"
    assert "&lt;i440FX&gt;" in xml
    assert list(entries("system")) == [
        "manufacturer", "product", "version", "serial", "uuid", "sku", "family",
    ]
    assert entries("processor")["socket_destination"] == "CPU 0"
    assert "signature" not in entries("processor")
    assert entries("memory_device")["size"] == "4 GB"
    assert [e.text for e in root.find("oemStrings")] == ["hello"]


def test_format_sysinfo_empty() -> None:
    assert host.format_sysinfo("") == "<sysinfo type='smbios'/>\n"


def test_sysinfo_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(host, "_host_sysinfo", lambda: None)
    with pytest.raises(VirError) as err:
        host.sysinfo_xml()
    assert err.value.code == ErrorCode.CONFIG_UNSUPPORTED
    assert err.value.domain == ErrorDomain.QEMU
    assert err.value.message.endswith("Host SMBIOS information is not available")


def test_real_host_is_sane() -> None:
    info = host.node_info()
    assert info.cpus > 0 and info.memory > 0 and info.nodes > 0
    assert info.nodes * info.sockets * info.cores * info.threads >= info.cpus
    assert 0 < host.free_memory() <= info.memory * 1024
    assert host.hostname()


def test_cache_banks(tmp_path: Path) -> None:
    _fake_host(tmp_path)
    for cpu in range(8):
        for index, level, kind, size in ((0, 1, "Data", "32K"), (3, 3, "Unified", "16384K")):
            base = f"/sys/devices/system/cpu/cpu{cpu}/cache/index{index}/"
            _write(tmp_path, base + "level", f"{level}\n")
            _write(tmp_path, base + "type", f"{kind}\n")
            _write(tmp_path, base + "size", f"{size}\n")
            _write(tmp_path, base + "id", f"{cpu // 4}\n")
            _write(tmp_path, base + "shared_cpu_list", "0-3\n" if cpu < 4 else "4-7\n")
    banks = host.cache_banks(str(tmp_path))
    assert banks == [
        host.CacheBank(0, 3, "both", 16 << 20, "0-3"),
        host.CacheBank(1, 3, "both", 16 << 20, "4-7"),
    ]
    assert banks[0].pretty_size() == (16, "MiB")
    assert host.CacheBank(0, 3, "both", 1536 << 10, "0").pretty_size() == (1536, "KiB")
