"""Domain XML: our parse + format against what libvirtd 9.0 printed for the same input.

tests/data/domain/NAME.xml is an input; NAME.out.xml is ``virsh dumpxml --inactive``
of it from the reference libvirtd.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from drivers.qemu.capabilities import MachineInfo, QemuCaps
from drivers.qemu.domain_xml import LiveState, format, parse
from drivers.qemu.domain_xml.aliases import assign_aliases
from protocol.errors import VirError

DATA = Path(__file__).parent.parent / "data" / "domain"
CORPUS = sorted(p.name[: -len(".out.xml")] for p in DATA.glob("*.out.xml"))
GENERATED = {"nouuid"}  # uuid and MAC are random: compared with those masked


def make_caps() -> QemuCaps:
    machines = {
        "pc-i440fx-7.2": MachineInfo("pc-i440fx-7.2", alias="pc", max_cpus=255, is_default=True),
        "pc-q35-7.2": MachineInfo("pc-q35-7.2", alias="q35", max_cpus=288),
        "pc-i440fx-6.2": MachineInfo("pc-i440fx-6.2", max_cpus=255),
    }
    return QemuCaps("/usr/bin/qemu-system-x86_64", "x86_64", 7002022, True, machines)


CAPS = make_caps()


def _mask(xml: str) -> str:
    xml = re.sub(r"<(uuid|genid)>[0-9a-f-]{36}</", r"<\1>UUID</", xml)
    return re.sub(r"52:54:00(:[0-9a-f]{2}){3}", "MAC", xml)


@pytest.mark.parametrize("name", CORPUS)
def test_format_matches_libvirtd(name: str) -> None:
    expected = (DATA / f"{name}.out.xml").read_text()
    got = format(parse((DATA / f"{name}.xml").read_text(), CAPS))
    if name in GENERATED:
        assert _mask(got) == _mask(expected)
    else:
        assert got == expected


@pytest.mark.parametrize("name", CORPUS)
def test_format_is_stable(name: str) -> None:
    """Re-defining our output changes nothing more after one round.

    One round may reorder: libvirtd's parser sorts controllers that its post-parse
    step appended (q35-redefine shows libvirtd doing the same).
    """
    once = format(parse((DATA / f"{name}.xml").read_text(), CAPS))
    twice = format(parse(once, CAPS))
    assert format(parse(twice, CAPS)) == twice


@pytest.mark.skipif(not shutil.which("virt-xml-validate"), reason="virt-xml-validate missing")
def test_output_validates_against_libvirt_schema(tmp_path: Path) -> None:
    for name in CORPUS:
        path = tmp_path / f"{name}.xml"
        path.write_text(format(parse((DATA / f"{name}.xml").read_text(), CAPS)))
        run = subprocess.run(
            ["virt-xml-validate", str(path), "domain"], capture_output=True, text=True
        )
        assert run.returncode == 0, (name, run.stderr)


def test_generated_uuid_and_mac() -> None:
    d = parse((DATA / "nouuid.xml").read_text(), CAPS)
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}", d.uuid)
    assert re.fullmatch(r"52:54:00(:[0-9a-f]{2}){3}", d.devices.interfaces[0].mac)


def test_units_and_current_memory_clamp() -> None:
    d = parse(
        "<domain type='kvm'><name>m</name><memory unit='GB'>1</memory>"
        "<currentMemory unit='bytes'>2000000000</currentMemory><os><type>hvm</type></os></domain>",
        CAPS,
    )
    assert d.memory == 976563  # 10^9 bytes rounded up to KiB
    assert d.current_memory == d.memory


# Bad definitions with the code, error domain and message the reference libvirtd gave.
BAD = json.loads((DATA / "errors.json").read_text())


@pytest.mark.parametrize("case", BAD, ids=lambda case: case["message"][:50])
def test_errors_match_libvirtd(case: dict) -> None:
    with pytest.raises(VirError) as info:
        parse(case["xml"], CAPS)
    error = info.value
    assert (error.code.name, error.domain.name, error.message) == (
        case["code"],
        case["domain"],
        case["message"],
    )


def test_secure_shows_passwords() -> None:
    d = parse((DATA / "q35-mixed.xml").read_text(), CAPS)
    assert format(d, secure=True) == (DATA / "q35-mixed.secure-out.xml").read_text()
    assert "passwd" not in format(d)


def test_firmware_autoselection(tmp_path: Path) -> None:
    """As libvirtd 9.0 starts an efi guest: the live XML names loader and NVRAM."""
    from drivers.qemu.domain_xml.firmware import select_firmware

    fw = tmp_path / "fw"
    fw.mkdir()
    for n, (features, code) in enumerate(
        ((["requires-smm", "secure-boot"], "SB.fd"), ([], "CODE.fd"))
    ):
        desc = {
            "interface-types": ["uefi"],
            "features": features,
            "mapping": {
                "device": "flash",
                "executable": {"filename": f"/ovmf/{code}"},
                "nvram-template": {"filename": "/ovmf/VARS.fd"},
            },
            "targets": [{"architecture": "x86_64", "machines": ["pc-q35-*"]}],
        }
        (fw / f"{n}0-edk2.json").write_text(json.dumps(desc))
    xml = (
        "<domain type='kvm'><name>efi</name><uuid>11111111-2222-3333-4444-0000000000e1</uuid>"
        "<memory>131072</memory><os firmware='efi'><type machine='q35'>hvm</type>"
        "<firmware><feature enabled='no' name='secure-boot'/></firmware></os>"
        "<features><acpi/></features></domain>"
    )
    d = parse(xml, CAPS)
    select_firmware(d, "/nv", dirs=(str(fw),))
    got = format(d, inactive=False, live=LiveState(id=1))
    assert (
        "  <os>\n"
        "    <type arch='x86_64' machine='pc-q35-7.2'>hvm</type>\n"
        "    <firmware>\n"
        "      <feature enabled='no' name='secure-boot'/>\n"
        "    </firmware>\n"
        "    <loader readonly='yes' type='pflash'>/ovmf/CODE.fd</loader>\n"
        "    <nvram template='/ovmf/VARS.fd'>/nv/efi_VARS.fd</nvram>\n"
        "    <boot dev='hd'/>\n"
        "  </os>\n"
    ) in got
    d = parse(
        xml.replace("<firmware><feature enabled='no' name='secure-boot'/></firmware>", ""), CAPS
    )
    select_firmware(d, "/nv", dirs=(str(fw),))
    assert d.os.loader == "/ovmf/SB.fd" and d.os.loader_attrs["secure"] == "yes"
    assert list(d.features) == ["acpi", "smm"]


def test_unknown_elements_are_dropped() -> None:
    got = format(parse((DATA / "unknown.xml").read_text(), CAPS))
    assert "bogus" not in got and "gizmo" not in got and "sparkle" not in got


def test_live_xml() -> None:
    d = parse((DATA / "serial.xml").read_text(), CAPS)
    assign_aliases(d)
    live = LiveState(id=7, pty_paths={"serial0": "/dev/pts/4"})
    got = format(d, inactive=False, live=live)
    assert got.startswith("<domain type='kvm' id='7'>\n")
    assert "  <resource>\n    <partition>/machine</partition>\n  </resource>\n" in got
    assert (
        "    <console type='pty' tty='/dev/pts/4'>\n"
        "      <source path='/dev/pts/4'/>\n"
        "      <target type='serial' port='0'/>\n"
        "      <alias name='serial0'/>\n"
        "    </console>\n"
    ) in got
    assert (
        "    <controller type='pci' index='0' model='pci-root'>\n      <alias name='pci.0'/>\n"
        in got
    )
    assert "<target type='virtio' name='org.qemu.guest_agent.0' state='disconnected'/>" in got
    assert "<alias name='input1'/>" in got and "<alias name='balloon0'/>" in got
    # the inactive form of the same definition shows none of it
    assert format(d) == (DATA / "serial.out.xml").read_text()


def test_live_xml_matches_a_libvirtd_guest() -> None:
    """live-q35.live-out.xml is libvirtd's XML of live-q35.xml running as id 21.

    Compared without <cpu> (libvirtd expands it from the host CPU) and <seclabel>
    (its DAC labels): we have neither machinery.
    """
    from drivers.qemu.command import build_argv

    expected = (DATA / "live-q35.live-out.xml").read_text()
    d = parse((DATA / "live-q35.xml").read_text(), CAPS)
    channels = "/var/lib/libvirt/qemu/channel/target/domain-21-h5a-live2"
    build_argv(d, CAPS, monitor_path="/m", channel_dir=channels, spice_port=5900)
    live = LiveState(
        id=21, pty_paths={"serial0": "/dev/pts/0", "console1": "/dev/pts/1"}, spice_port=5900
    )
    got = format(d, inactive=False, live=live)

    def strip(xml: str) -> str:
        xml = re.sub(r"  <cpu .*?</cpu>\n", "", xml, flags=re.S)
        return re.sub(r"  <seclabel .*?</seclabel>\n", "", xml, flags=re.S)

    assert strip(got) == strip(expected)


# Random mixes of devices (h5a-gen-*) and of domain-level settings (h5a-g2-*) defined on
# the reference libvirtd, with its answers.
MIXES = json.loads((DATA / "generated.json").read_text())


@pytest.mark.parametrize("case", MIXES, ids=lambda case: re.search(r"h5a-g[\w-]+", case["xml"])[0])
def test_generated_mixes_match_libvirtd(case: dict) -> None:
    if "error" in case:
        with pytest.raises(VirError) as info:
            parse(case["xml"], CAPS)
        assert info.value.message == case["error"]
    else:
        assert _mask(format(parse(case["xml"], CAPS))) == _mask(case["out"])


@pytest.mark.parametrize(
    "name", sorted(p.name.split(".")[0] for p in DATA.glob("*.migratable-out.xml"))
)
def test_migratable_xml(name: str) -> None:
    """virsh dumpxml --migratable: the implicit devices old libvirtd added itself are left out."""
    expected = (DATA / f"{name}.migratable-out.xml").read_text()
    assert format(parse((DATA / f"{name}.xml").read_text(), CAPS), migratable=True) == expected
