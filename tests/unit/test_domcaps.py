"""domcapabilities, cpu-models and the CPU map reader, with made-up QEMU facts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from lxml import etree

from drivers.qemu import capabilities, cpumodels, domcaps
from drivers.qemu.capabilities import QemuCaps
from drivers.qemu.domcaps import Target, domain_capabilities_xml, resolve
from protocol.errors import ErrorCode, VirError

SCHEMA = Path("/usr/share/libvirt/schemas/domaincaps.rng")
MACHINES = capabilities._machines([
    {"name": "pc-q35-7.2", "alias": "q35", "cpu-max": 288},
    {"name": "pc-i440fx-7.2", "alias": "pc", "is-default": True, "cpu-max": 255},
])
HOST_MODEL = cpumodels.HostModel("EPYC", "AMD", ("vme", "x2apic"), ("pni",))
MAP = (("qemu64", "unknown"), ("486", "unknown"), ("EPYC", "AMD"))


def make_caps(arch: str = "x86_64", kvm: bool = True) -> QemuCaps:
    return QemuCaps(
        emulator=f"/usr/bin/qemu-system-{'i386' if arch == 'i686' else arch}",
        arch=arch, version=7002022, kvm_usable=kvm, machines=dict(MACHINES),
        cpu_models=["max", "host", "qemu64-v1", "qemu64", "EPYC-v1", "EPYC", "KnightsMill",
                    "486"],
        cpu_blockers={"kvm": {"qemu64": ["pni"], "EPYC": ["pni"], "486": []},
                      "tcg": {"qemu64": [], "EPYC": ["sha-ni"], "486": []}},
        qom_types=frozenset({"iothread", "vmgenid", "vmcoreinfo", "rng-builtin"}),
    )


ALL = {"x86_64": make_caps(), "i686": make_caps("i686")}


async def _error(*args) -> VirError:
    with pytest.raises(VirError) as e:
        await resolve(ALL, *args)
    return e.value


async def test_defaults_are_host_arch_default_machine_and_kvm() -> None:
    t = await resolve(ALL, None, None, None, None)
    assert (t.arch, t.machine, t.virttype, t.caps) == ("x86_64", "pc-i440fx-7.2", "kvm",
                                                       ALL["x86_64"])
    t = await resolve(ALL, None, None, "q35", "none")
    assert (t.machine, t.virttype) == ("pc-q35-7.2", "kvm")
    no_kvm = {"x86_64": make_caps(kvm=False)}
    assert (await resolve(no_kvm, None, None, None, None)).virttype == "qemu"


async def test_x86_64_binary_runs_i686() -> None:
    t = await resolve(ALL, "/usr/bin/qemu-system-x86_64", "i686", None, None)
    assert (t.arch, t.caps.emulator) == ("i686", "/usr/bin/qemu-system-x86_64")


@pytest.mark.parametrize("args, code, message", [
    ((None, None, None, "foo"), ErrorCode.INVALID_ARG, "invalid argument: unknown virttype: foo"),
    ((None, "bogus", None, "foo"), ErrorCode.INVALID_ARG,
     "invalid argument: unknown virttype: foo"),
    ((None, "bogus", None, None), ErrorCode.INVALID_ARG,
     "invalid argument: unknown architecture: bogus"),
    ((None, "armv7l", None, None), ErrorCode.CONFIG_UNSUPPORTED,
     "unsupported configuration: unable to find any emulator to serve 'armv7l' architecture"),
    ((None, None, "bogus", "xen"), ErrorCode.INVALID_ARG,
     "invalid argument: the machine 'bogus' is not supported by emulator "
     "'/usr/bin/qemu-system-x86_64'"),
    ((None, None, None, "xen"), ErrorCode.INVALID_ARG,
     "invalid argument: Emulator '/usr/bin/qemu-system-x86_64' does not support virt type 'xen'"),
    (("/nonexistent/qemu", None, None, None), ErrorCode.SYSTEM_ERROR,
     "Cannot check QEMU binary /nonexistent/qemu: No such file or directory"),
])
async def test_errors_in_libvirtds_order(args, code, message) -> None:
    e = await _error(*args)
    assert (e.code, e.message) == (code, message)


async def test_kvm_refused_when_not_usable() -> None:
    with pytest.raises(VirError) as e:
        await resolve({"x86_64": make_caps(kvm=False)}, None, None, None, "kvm")
    assert "does not support virt type 'kvm'" in e.value.message


async def test_binary_for_another_arch(tmp_path: Path) -> None:
    i386 = make_caps("i686")
    fake = tmp_path / "qemu-system-i386"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    i386.emulator = str(fake)
    with pytest.raises(VirError) as e:
        await resolve({"i686": i386}, str(fake), None, None, None)
    assert e.value.message == (
        f"invalid argument: Emulator '{fake}' does not support arch 'x86_64'"
    )
    fake.chmod(0o644)
    with pytest.raises(VirError) as e:
        await resolve({"i686": i386}, str(fake), None, None, None)
    assert e.value.message == f"QEMU binary {fake} is not executable: Permission denied"


def _doc(t: Target, descriptors: list[dict] = (), map_models=MAP) -> etree._Element:
    xml = domain_capabilities_xml(t, HOST_MODEL, map_models, list(descriptors))
    doc = etree.fromstring(xml.encode())
    if SCHEMA.exists():
        schema = etree.RelaxNG(etree.parse(str(SCHEMA)))
        assert schema.validate(doc), schema.error_log
    return doc


def test_document_kvm() -> None:
    doc = _doc(Target(ALL["x86_64"], "x86_64", "pc-i440fx-7.2", "kvm"))
    assert doc.find("vcpu").get("max") == "255"
    custom = doc.findall("cpu/mode[@name='custom']/model")
    # QEMU's order, only models the CPU map knows, usability under KVM, vendor from the map.
    assert [(m.text, m.get("usable"), m.get("vendor")) for m in custom] == [
        ("qemu64", "no", "unknown"), ("EPYC", "no", "AMD"), ("486", "yes", "unknown"),
    ]
    host_model = doc.find("cpu/mode[@name='host-model']")
    assert host_model.findtext("model") == "EPYC"
    assert [(f.get("policy"), f.get("name")) for f in host_model.findall("feature")] == [
        ("require", "vme"), ("require", "x2apic"), ("disable", "pni")]
    assert doc.find("cpu/mode[@name='host-passthrough']").get("supported") == "yes"
    assert doc.find("features/genid").get("supported") == "yes"
    assert doc.find("devices/tpm").get("supported") == "no"
    assert [v.text for v in doc.findall("devices/rng/enum[@name='backendModel']/value")] == [
        "random", "egd", "builtin"]
    assert doc.find("os/enum[@name='firmware']").findall("value") == []


def test_document_tcg_uses_tcg_usability() -> None:
    doc = _doc(Target(ALL["x86_64"], "x86_64", "pc-i440fx-7.2", "qemu"))
    assert doc.findtext("domain") == "qemu"
    usable = {m.text: m.get("usable") for m in doc.findall("cpu/mode[@name='custom']/model")}
    assert usable["qemu64"] == "yes"
    assert doc.find("cpu/mode[@name='host-passthrough']").get("supported") == "no"


def test_document_without_cpu_map_lists_qemu_names() -> None:
    doc = _doc(Target(ALL["x86_64"], "x86_64", "pc-i440fx-7.2", "kvm"), map_models=())
    names = [m.text for m in doc.findall("cpu/mode[@name='custom']/model")]
    assert names == ["qemu64", "EPYC", "KnightsMill", "486"]


def _descriptor(path: Path, name: str, machines: list[str], features: list[str]) -> None:
    path.mkdir(exist_ok=True)
    (path / name).write_text(json.dumps({
        "interface-types": ["uefi"],
        "mapping": {"device": "flash", "executable": {"filename": f"/fw/{name}.fd"}},
        "targets": [{"architecture": "x86_64", "machines": machines}],
        "features": features,
    }))


def test_firmware_from_descriptors(tmp_path: Path) -> None:
    _descriptor(tmp_path, "50-secure.json", ["pc-q35-*"], ["requires-smm", "secure-boot"])
    _descriptor(tmp_path, "60-plain.json", ["pc-i440fx-*", "pc-q35-*"], [])
    dirs = (str(tmp_path),)
    q35 = domcaps.firmware_descriptors("x86_64", "pc-q35-7.2", dirs)
    pc = domcaps.firmware_descriptors("x86_64", "pc-i440fx-7.2", dirs)
    doc = _doc(Target(ALL["x86_64"], "x86_64", "pc-q35-7.2", "kvm"), q35)
    assert [v.text for v in doc.findall("os/loader/value")] == [
        "/fw/50-secure.json.fd", "/fw/60-plain.json.fd"]
    assert [v.text for v in doc.findall("os/loader/enum[@name='secure']/value")] == ["yes", "no"]
    assert "ide" not in [v.text for v in doc.findall("devices/disk/enum[@name='bus']/value")]
    assert [v.text for v in doc.findall("os/enum[@name='firmware']/value")] == ["efi"]
    doc = _doc(Target(ALL["x86_64"], "x86_64", "pc-i440fx-7.2", "kvm"), pc)
    assert [v.text for v in doc.findall("os/loader/enum[@name='secure']/value")] == ["no"]


def _cpu_map(tmp_path: Path) -> str:
    (tmp_path / "index.xml").write_text(
        "<cpus><arch name='x86'><include filename='x86_vendors.xml'/>"
        "<include filename='x86_a.xml'/><include filename='x86_b.xml'/></arch>"
        "<arch name='ppc64'><include filename='ppc64_p.xml'/></arch></cpus>")
    (tmp_path / "x86_vendors.xml").write_text("<cpus><vendor name='AMD' string='x'/></cpus>")
    (tmp_path / "x86_a.xml").write_text("<cpus><model name='486'/></cpus>")
    (tmp_path / "x86_b.xml").write_text(
        "<cpus><model name='EPYC'><vendor name='AMD'/></model></cpus>")
    (tmp_path / "ppc64_p.xml").write_text("<cpus><model name='POWER9'/></cpus>")
    return str(tmp_path)


def test_cpu_model_names(tmp_path: Path) -> None:
    d = _cpu_map(tmp_path)
    assert cpumodels.model_names("x86_64", directory=d) == ["486", "EPYC"]
    assert cpumodels.model_names("i686", directory=d) == ["486", "EPYC"]
    assert cpumodels.model_names("ppc64le", directory=d) == ["POWER9"]
    assert cpumodels.model_names("aarch64", directory=d) == []
    assert cpumodels.map_models("x86", d) == (("486", "unknown"), ("EPYC", "AMD"))


def test_cpu_model_names_without_map(tmp_path: Path) -> None:
    qemu = ["max", "host", "base", "qemu64-v1", "qemu64", "Haswell-v4", "Haswell"]
    assert cpumodels.model_names("x86_64", qemu, str(tmp_path)) == ["qemu64", "Haswell"]


@pytest.mark.parametrize("arch, code, message", [
    ("foo", ErrorCode.INVALID_ARG, "invalid argument: cannot find architecture foo"),
    ("x86", ErrorCode.INVALID_ARG, "invalid argument: cannot find architecture x86"),
    ("mips", ErrorCode.NO_SUPPORT, "this function is not supported by the connection driver: "
                                   "'mips' architecture is not supported by CPU driver"),
])
def test_cpu_model_names_errors(arch: str, code: int, message: str) -> None:
    with pytest.raises(VirError) as e:
        cpumodels.model_names(arch)
    assert (e.value.code, e.value.message) == (code, message)


def _x86_map(tmp_path: Path) -> str:
    (tmp_path / "index.xml").write_text(
        "<cpus><arch name='x86'><include filename='x86_features.xml'/>"
        "<include filename='x86_old.xml'/><include filename='x86_new.xml'/>"
        "<include filename='x86_sig.xml'/></arch></cpus>")
    (tmp_path / "x86_features.xml").write_text(
        "<cpus><feature name='fpu'/><feature name='pni'><alias name='sse3' source='qemu'/>"
        "</feature><feature name='lahf_lm'><alias name='lahf-lm' source='qemu'/></feature>"
        "<feature name='avx'/><feature name='monitor'/></cpus>")
    (tmp_path / "x86_old.xml").write_text(
        "<cpus><model name='old'><feature name='fpu'/><feature name='pni'/></model></cpus>")
    (tmp_path / "x86_new.xml").write_text(
        "<cpus><model name='new'><vendor name='AMD'/><feature name='fpu'/>"
        "<feature name='avx'/><feature name='monitor' removed='yes'/></model></cpus>")
    (tmp_path / "x86_sig.xml").write_text(
        "<cpus><model name='sig'><signature family='6' model='1'/><feature name='fpu'/>"
        "<feature name='pni'/><feature name='avx'/></model></cpus>")
    return str(tmp_path)


def test_host_model_fewest_changes_then_signature(tmp_path: Path) -> None:
    d = _x86_map(tmp_path)
    props = {"fpu": True, "sse3": False, "lahf-lm": True, "avx": True, "monitor": True,
             "vendor": "AuthenticAMD", "family": 25, "model": 1}
    blockers = {"old": [], "new": [], "sig": ["sse3"]}
    # old: +lahf_lm +avx +monitor -pni (4); new: +lahf_lm +monitor (2);
    # sig: +lahf_lm +monitor -pni (3, its blocker sse3 is pni)
    hm = cpumodels.host_model(props, blockers, d)
    assert hm == cpumodels.HostModel("new", "AMD", ("lahf_lm", "monitor"), ())
    # A model QEMU lacks is never picked; its blockers show up disabled.
    hm = cpumodels.host_model(props, {"old": ["sse3"], "sig": []}, d)
    assert hm == cpumodels.HostModel("sig", "AMD", ("lahf_lm", "monitor"), ("pni",))
    # A matching signature beats fewer changes.
    hm = cpumodels.host_model({**props, "family": 6}, blockers, d)
    assert hm is not None and hm.model == "sig"
    assert cpumodels.host_model(props, blockers, str(tmp_path / "none")) is None
