"""domcapabilities, cpu-models and domxml-to-native through stock virsh and libvirt-python."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest
from lxml import etree

pytestmark = pytest.mark.slow

GUEST_XML = """<domain type='qemu'>
  <name>hostfacts</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
</domain>
"""


def _validate(tmp_path: Path, xml: str, kind: str) -> None:
    path = tmp_path / f"{kind}.xml"
    path.write_text(xml)
    res = subprocess.run(["virt-xml-validate", str(path), kind], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr + res.stdout


def test_domcapabilities_validates_and_matches_capabilities(module_daemon, tmp_path: Path) -> None:
    out = module_daemon.virsh("domcapabilities").stdout
    _validate(tmp_path, out, "domaincaps")
    doc = etree.fromstring(out.encode())
    caps = etree.fromstring(module_daemon.virsh("capabilities").stdout.encode())
    guest = caps.find(f"guest/arch[@name='{doc.findtext('arch')}']")
    assert guest is not None
    assert guest.findtext("emulator") == doc.findtext("path")
    assert doc.findtext("machine") in [m.text for m in guest.findall("machine")]
    assert doc.findtext("domain") in [d.get("type") for d in guest.findall("domain")]
    models = doc.findall("cpu/mode[@name='custom']/model")
    assert "qemu64" in [m.text for m in models]


@pytest.mark.parametrize("args", [
    ("--virttype", "qemu"),
    ("--machine", "q35"),
    ("--arch", "i686"),
    ("--emulatorbin", "/usr/bin/qemu-system-x86_64", "--arch", "i686"),
])
def test_domcapabilities_variants_validate(module_daemon, tmp_path: Path, args) -> None:
    out = module_daemon.virsh("domcapabilities", *args).stdout
    _validate(tmp_path, out, "domaincaps")
    doc = etree.fromstring(out.encode())
    if "--machine" in args:
        assert doc.findtext("machine").startswith("pc-q35-")
    if "--virttype" in args:
        assert doc.findtext("domain") == "qemu"
        assert doc.find("cpu/mode[@name='host-passthrough']").get("supported") == "no"


@pytest.mark.parametrize("args, message", [
    (("--virttype", "foo"), "invalid argument: unknown virttype: foo"),
    (("--virttype", "xen"),
     "invalid argument: Emulator '/usr/bin/qemu-system-x86_64' does not support virt type 'xen'"),
    (("--arch", "bogus"), "invalid argument: unknown architecture: bogus"),
    (("--arch", "armv7l"), "unsupported configuration: unable to find any emulator to serve "
                           "'armv7l' architecture"),
    (("--machine", "bogus"), "invalid argument: the machine 'bogus' is not supported by "
                             "emulator '/usr/bin/qemu-system-x86_64'"),
    (("--emulatorbin", "/nonexist"),
     "Cannot check QEMU binary /nonexist: No such file or directory"),
    (("--emulatorbin", "/usr/bin/qemu-system-i386", "--arch", "x86_64"),
     "invalid argument: Emulator '/usr/bin/qemu-system-i386' does not support arch 'x86_64'"),
])
def test_domcapabilities_errors_as_libvirtd(module_daemon, args, message) -> None:
    if "qemu-system-i386" in " ".join(args) and not Path("/usr/bin/qemu-system-i386").exists():
        pytest.skip("no qemu-system-i386")
    res = module_daemon.virsh("domcapabilities", *args, check=False)
    assert res.returncode != 0
    assert f"error: {message}" in res.stderr


def test_cpu_models(module_daemon) -> None:
    names = module_daemon.virsh("cpu-models", "x86_64").stdout.split()
    assert {"qemu64", "qemu32", "kvm64", "486"} <= set(names)
    assert module_daemon.virsh("cpu-models", "aarch64").stdout.strip() == (
        "all CPU models are accepted")
    res = module_daemon.virsh("cpu-models", "foo", check=False)
    assert "error: invalid argument: cannot find architecture foo" in res.stderr
    res = module_daemon.virsh("cpu-models", "mips", check=False)
    assert ("error: this function is not supported by the connection driver: "
            "'mips' architecture is not supported by CPU driver") in res.stderr


def test_domxml_to_native(module_daemon, tmp_path: Path) -> None:
    xml = tmp_path / "guest.xml"
    xml.write_text(GUEST_XML)
    out = module_daemon.virsh("domxml-to-native", "qemu-argv", str(xml)).stdout
    words = shlex.split(out)
    first = next(i for i, w in enumerate(words) if "=" not in w)
    assert words[0].startswith("LC_ALL=")
    assert words[first] == "/usr/bin/qemu-system-x86_64"
    assert words[first + 1 : first + 3] == ["-name", "guest=hostfacts,debug-threads=on"]
    assert "tcg" in words and "pc-i440fx" in out
    # Nothing is defined by asking.
    assert "hostfacts" not in module_daemon.virsh("list", "--all", "--name").stdout


def test_native_format_errors(module_daemon, tmp_path: Path) -> None:
    import libvirt

    conn = module_daemon.conn()
    with pytest.raises(libvirt.libvirtError) as e:
        conn.domainXMLToNative("xen-xm", GUEST_XML, 0)
    assert e.value.get_error_code() == libvirt.VIR_ERR_INVALID_ARG
    assert e.value.get_error_message() == "invalid argument: unsupported config type xen-xm"
    with pytest.raises(libvirt.libvirtError) as e:
        conn.domainXMLFromNative("qemu-argv", "/usr/bin/qemu-system-x86_64 -m 64", 0)
    assert e.value.get_error_code() == libvirt.VIR_ERR_NO_SUPPORT


def test_domcapabilities_of_no_qemu(module_daemon) -> None:
    """libvirtd fails reading the pid file of the probe it started; we fail over QMP."""
    import libvirt

    with pytest.raises(libvirt.libvirtError) as e:
        module_daemon.conn().getDomainCapabilities("/usr/bin/true", None, None, None, 0)
    assert e.value.get_error_code() == libvirt.VIR_ERR_SYSTEM_ERROR


def test_cpu_compare(module_daemon, tmp_path: Path) -> None:
    """Results and messages as libvirtd 9.0 gives them on the same host."""
    any_cpu = tmp_path / "any.xml"
    any_cpu.write_text("<cpu mode='host-passthrough'/>")
    for command in ("cpu-compare", "hypervisor-cpu-compare"):
        out = module_daemon.virsh(command, str(any_cpu)).stdout
        assert "superset" in out
    unknown = tmp_path / "unknown.xml"
    unknown.write_text("<cpu match='exact'><model>no-such-model</model></cpu>")
    res = module_daemon.virsh("cpu-compare", str(unknown), check=False)
    assert "error: internal error: Unknown CPU model no-such-model" in res.stderr
    other_arch = tmp_path / "ppc.xml"
    other_arch.write_text("<cpu><arch>ppc64</arch><model>POWER9</model></cpu>")
    res = module_daemon.virsh("hypervisor-cpu-compare", "--error", str(other_arch), check=False)
    assert ("error: the CPU is incompatible with host CPU: CPU arch ppc64 does not match "
            "host arch") in res.stderr
    res = module_daemon.virsh("hypervisor-cpu-compare", "--virttype", "xen", str(any_cpu),
                              check=False)
    assert "does not support virt type 'xen'" in res.stderr


def test_cpu_baseline(module_daemon, tmp_path: Path) -> None:
    cpus = tmp_path / "cpus.xml"
    cpus.write_text("<cpu><arch>x86_64</arch><model>kvm64</model><vendor>AMD</vendor>"
                    "<feature name='vme'/></cpu>")
    out = module_daemon.virsh("cpu-baseline", str(cpus)).stdout
    assert "<model fallback='forbid'>kvm64</model>" in out
    assert "<feature policy='require' name='vme'/>" in out
    _validate(tmp_path, f"<domain type='kvm'><name>b</name><memory>1024</memory><os><type>hvm"
                        f"</type></os>{out}</domain>", "domain")
    out = module_daemon.virsh("hypervisor-cpu-baseline", str(cpus)).stdout
    assert "<model fallback='forbid'>kvm64</model>" in out


def test_read_only_connection(module_daemon, tmp_path: Path) -> None:
    """As on libvirtd: CPU models may be read, domcapabilities and argv need write access."""
    ro = module_daemon.ro_uri
    assert "qemu64" in module_daemon.virsh("cpu-models", "x86_64", uri=ro).stdout
    res = module_daemon.virsh("domcapabilities", uri=ro, check=False)
    assert ("error: operation forbidden: read only access prevents "
            "virConnectGetDomainCapabilities") in res.stderr
    xml = tmp_path / "guest.xml"
    xml.write_text(GUEST_XML)
    res = module_daemon.virsh("domxml-to-native", "qemu-argv", str(xml), uri=ro, check=False)
    assert ("error: operation forbidden: read only access prevents "
            "virConnectDomainXMLToNative") in res.stderr
