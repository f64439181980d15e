"""QEMU capabilities: machine bookkeeping, the on-disk cache and the XML."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from drivers import host
from drivers.qemu import capabilities
from drivers.qemu.capabilities import MachineInfo, QemuCaps, capabilities_xml

QMP_MACHINES = [
    {"name": "pc-q35-7.2", "alias": "q35", "cpu-max": 288, "deprecated": False},
    {"name": "none", "cpu-max": 1},
    {"name": "pc-i440fx-1.4", "cpu-max": 255, "deprecated": True},
    {"name": "pc-i440fx-7.2", "alias": "pc", "is-default": True, "cpu-max": 255},
]


def make_caps(arch: str = "x86_64", kvm: bool = True) -> QemuCaps:
    return QemuCaps(
        emulator=f"/usr/bin/qemu-system-{'i386' if arch == 'i686' else arch}",
        arch=arch,
        version=7002022,
        kvm_usable=kvm,
        machines=capabilities._machines(QMP_MACHINES),
        cpu_models=["qemu64", "max"],
    )


def test_machines_default_first_and_none_dropped() -> None:
    caps = make_caps()
    assert list(caps.machines) == ["pc-i440fx-7.2", "pc-q35-7.2", "pc-i440fx-1.4"]
    assert caps.machines["pc-i440fx-1.4"].deprecated
    assert caps.machines["pc-q35-7.2"] == MachineInfo("pc-q35-7.2", "q35", 288, False, False)


def test_canonical_machine() -> None:
    caps = make_caps()
    assert caps.canonical_machine("pc") == "pc-i440fx-7.2"
    assert caps.canonical_machine("q35") == "pc-q35-7.2"
    assert caps.canonical_machine(None) == "pc-i440fx-7.2"
    assert caps.canonical_machine("pc-q35-7.2") == "pc-q35-7.2"
    assert caps.canonical_machine("bogus") == "bogus"
    assert caps.has_machine("q35") and not caps.has_machine("bogus")


def test_json_round_trip() -> None:
    caps = make_caps()
    assert QemuCaps.from_json(caps.to_json()) == caps
    with pytest.raises(ValueError):
        QemuCaps.from_json({**caps.to_json(), "format": -1})


def test_version_number() -> None:
    assert capabilities._version_number({"major": 7, "minor": 2, "micro": 22}) == 7002022


async def test_probe_uses_cache_until_binary_changes(tmp_path: Path, monkeypatch) -> None:
    fake = tmp_path / "qemu-system-x86_64"
    fake.write_text("#!/bin/sh\n")
    calls = []

    async def query(emulator: str, arch: str) -> QemuCaps:
        calls.append(emulator)
        return make_caps()

    monkeypatch.setattr(capabilities, "_query", query)
    first = await capabilities.probe(str(fake), "x86_64", tmp_path / "cache")
    second = await capabilities.probe(str(fake), "x86_64", tmp_path / "cache")
    assert first == second and len(calls) == 1
    fake.write_text("#!/bin/sh\n# upgraded\n")
    await capabilities.probe(str(fake), "x86_64", tmp_path / "cache")
    assert len(calls) == 2


@pytest.mark.slow
@pytest.mark.skipif(not Path("/usr/bin/qemu-system-x86_64").exists(), reason="no QEMU")
async def test_probe_real_qemu(tmp_path: Path) -> None:
    caps = await capabilities.probe("/usr/bin/qemu-system-x86_64", "x86_64", tmp_path)
    assert caps.version >= 2_000_000
    assert caps.canonical_machine("pc").startswith("pc-i440fx-")
    assert "qemu64" in caps.cpu_models


HOST_CPU = host.HostCPU(
    arch="x86_64", vendor="AMD", model="EPYC", microcode=1, family=25, model_number=17,
    stepping=1, tsc_frequency=2596144000, sockets=1, dies=1, cores=2, threads=1,
    phys_bits=48, features=("vme", "ht", "x2apic"), page_sizes=(4, 2048),
)
CELLS = [
    host.NumaCell(
        id=0, memory=4096, pages={4: 1024, 2048: 0}, distances=[(0, 10)],
        cpus=[host.CellCPU(0, 0, 0, 0, "0"), host.CellCPU(1, 0, 0, 1, "1")],
    )
]


BANKS = [host.CacheBank(id=0, level=3, type="both", size=32 << 20, cpus="0-1")]


def test_capabilities_xml_content() -> None:
    xml = capabilities_xml(
        {"x86_64": make_caps(), "i686": make_caps("i686", kvm=False)}, HOST_CPU, CELLS, BANKS,
        host_uuid="3d1219c7-c4c5-404a-aa1f-6d2a48adfda4",
    )
    assert "<bank id='0' level='3' type='both' size='32' unit='MiB' cpus='0-1'/>" in xml
    assert xml.index("<arch name='i686'>") < xml.index("<arch name='x86_64'>")
    assert "<machine canonical='pc-i440fx-7.2' maxCpus='255'>pc</machine>" in xml
    assert "<machine maxCpus='255' deprecated='yes'>pc-i440fx-1.4</machine>" in xml
    x86 = xml[xml.index("<arch name='x86_64'>"):]
    assert "<domain type='kvm'/>" in x86
    i686 = xml[xml.index("<arch name='i686'>"):xml.index("<arch name='x86_64'>")]
    assert "<domain type='kvm'/>" not in i686 and "<pae/>" in i686
    assert "<model>none</model>" in xml


@pytest.mark.skipif(not shutil.which("virt-xml-validate"), reason="no virt-xml-validate")
def test_capabilities_xml_validates(tmp_path: Path) -> None:
    path = tmp_path / "caps.xml"
    path.write_text(capabilities_xml({"x86_64": make_caps()}, HOST_CPU, CELLS, BANKS))
    result = subprocess.run(
        ["virt-xml-validate", str(path), "capability"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
