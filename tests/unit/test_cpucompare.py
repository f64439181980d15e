"""CPU comparison as libvirt 9.0 does it, against a small made-up CPU map."""

from __future__ import annotations

from pathlib import Path

import pytest

from drivers.qemu import cpucompare
from drivers.qemu.cpucompare import IDENTICAL, INCOMPATIBLE, SUPERSET, HostCPU, compare, parse_cpu
from protocol.errors import ErrorCode, VirError


@pytest.fixture
def cpu_map(tmp_path: Path) -> str:
    (tmp_path / "index.xml").write_text(
        "<cpus><arch name='x86'><include filename='x86_features.xml'/>"
        "<include filename='x86_models.xml'/></arch></cpus>")
    (tmp_path / "x86_features.xml").write_text(
        "<cpus>" + "".join(f"<feature name='{f}'/>" for f in ("fpu", "vme", "pni", "avx", "svm"))
        + "</cpus>")
    (tmp_path / "x86_models.xml").write_text(
        "<cpus><model name='small'><feature name='fpu'/></model>"
        "<model name='big'><feature name='fpu'/><feature name='pni'/><feature name='svm'/>"
        "</model></cpus>")
    return str(tmp_path)


HOST = HostCPU("x86_64", "AMD", frozenset({"fpu", "vme", "avx"}))


def _cmp(xml: str, cpu_map: str, fail: bool = False) -> int:
    return compare(parse_cpu(xml), HOST, fail, cpu_map)


@pytest.mark.parametrize("xml, result", [
    ("<cpu match='exact'><model>small</model></cpu>", SUPERSET),
    ("<cpu match='exact'><model>small</model><feature name='vme'/><feature name='avx'/></cpu>",
     IDENTICAL),
    ("<cpu match='strict'><model>small</model></cpu>", INCOMPATIBLE),
    ("<cpu match='exact'><model>big</model></cpu>", INCOMPATIBLE),
    ("<cpu match='exact'><model>big</model><feature policy='disable' name='pni'/>"
     "<feature policy='force' name='svm'/></cpu>", SUPERSET),
    ("<cpu><model>small</model><feature policy='forbid' name='vme'/></cpu>", INCOMPATIBLE),
    ("<cpu mode='host-passthrough'/>", SUPERSET),
    ("<cpu/>", SUPERSET),
])
def test_results(cpu_map: str, xml: str, result: int) -> None:
    assert _cmp(xml, cpu_map) == result


@pytest.mark.parametrize("xml, message", [
    ("<cpu match='exact'><model>big</model></cpu>",
     "Host CPU does not provide required features: pni, svm"),
    ("<cpu match='strict'><model>small</model></cpu>",
     "Host CPU does not strictly match guest CPU: Extra features: vme, avx"),
    ("<cpu><model>small</model><feature policy='forbid' name='vme'/></cpu>",
     "Host CPU provides forbidden features: vme"),
    ("<cpu><model>small</model><vendor>Intel</vendor></cpu>",
     "host CPU vendor does not match required CPU vendor Intel"),
    ("<cpu><arch>ppc64</arch><model>POWER9</model></cpu>",
     "CPU arch ppc64 does not match host arch"),
])
def test_incompatible_reasons(cpu_map: str, xml: str, message: str) -> None:
    with pytest.raises(VirError) as e:
        _cmp(xml, cpu_map, fail=True)
    assert e.value.code == ErrorCode.CPU_INCOMPATIBLE
    assert e.value.message == f"the CPU is incompatible with host CPU: {message}"


@pytest.mark.parametrize("xml, code, message", [
    ("<cpu><model>foo</model></cpu>", ErrorCode.INTERNAL_ERROR,
     "internal error: Unknown CPU model foo"),
    ("<cpu><model>small</model><feature name='foo'/></cpu>", ErrorCode.INTERNAL_ERROR,
     "internal error: Unknown CPU feature foo"),
    ("<cpu><feature name='vme'/></cpu>", ErrorCode.XML_ERROR,
     "XML error: Non-empty feature list specified without CPU model"),
    ("<domain/>", ErrorCode.XML_ERROR,
     "XML error: XML does not contain expected 'cpu' element"),
    ("<cpu", ErrorCode.XML_DETAIL,
     "(CPU_definition):1: Couldn't find end of Start Tag cpu line 1\n<cpu\n----^"),
])
def test_errors(cpu_map: str, xml: str, code: int, message: str) -> None:
    with pytest.raises(VirError) as e:
        _cmp(xml, cpu_map)
    assert (e.value.code, e.value.message) == (code, message)


def test_hypervisor_cpu_is_host_model_spelled_out(cpu_map: str) -> None:
    from drivers.qemu.cpumodels import HostModel

    hv = cpucompare.hypervisor_cpu("x86_64", HostModel("big", "AMD", ("avx",), ("pni",)), cpu_map)
    assert hv == HostCPU("x86_64", "AMD", frozenset({"fpu", "svm", "avx"}))
