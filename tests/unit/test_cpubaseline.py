"""CPU baselines as libvirt 9.0 computes them, against a small made-up CPU map."""

from __future__ import annotations

from pathlib import Path

import pytest

from drivers.qemu.cpubaseline import EXPAND_FEATURES, MIGRATABLE, baseline
from protocol.errors import ErrorCode, VirError


@pytest.fixture
def cpu_map(tmp_path: Path) -> str:
    (tmp_path / "index.xml").write_text(
        "<cpus><arch name='x86'><include filename='x86_features.xml'/>"
        "<include filename='x86_models.xml'/></arch></cpus>")
    (tmp_path / "x86_features.xml").write_text(
        "<cpus><feature name='fpu'/><feature name='vme'/><feature name='pni'/>"
        "<feature name='avx'/><feature name='invtsc' migratable='no'/></cpus>")
    (tmp_path / "x86_models.xml").write_text(
        "<cpus><model name='small'><feature name='fpu'/></model>"
        "<model name='mid'><vendor name='Intel'/><feature name='fpu'/><feature name='pni'/>"
        "</model><model name='big'><vendor name='Intel'/><feature name='fpu'/>"
        "<feature name='pni'/><feature name='avx'/></model></cpus>")
    return str(tmp_path)


def _host(model: str, *features: str, vendor: str = "Intel") -> str:
    return (f"<cpu><arch>x86_64</arch><model>{model}</model><vendor>{vendor}</vendor>"
            + "".join(f"<feature name='{f}'/>" for f in features) + "</cpu>")


def test_one_cpu_keeps_its_model(cpu_map: str) -> None:
    assert baseline([_host("mid", "vme")], 0, None, cpu_map) == (
        "<cpu mode='custom' match='exact'>\n"
        "  <model fallback='forbid'>mid</model>\n"
        "  <vendor>Intel</vendor>\n"
        "  <feature policy='require' name='vme'/>\n"
        "</cpu>\n")


def test_common_features_named_by_the_closest_model(cpu_map: str) -> None:
    out = baseline([_host("big", "vme"), _host("mid", "vme", "avx", "invtsc")], 0, None, cpu_map)
    assert "<model fallback='allow'>big</model>" in out
    assert "name='vme'" in out and "invtsc" not in out


def test_expand_and_migratable(cpu_map: str) -> None:
    out = baseline([_host("small", "invtsc", "vme")], EXPAND_FEATURES | MIGRATABLE, None,
                   cpu_map)
    assert [line.strip() for line in out.splitlines()[3:-1]] == [
        "<feature policy='require' name='fpu'/>", "<feature policy='require' name='vme'/>"]


def test_hypervisor_disables_what_qemu_lacks(cpu_map: str) -> None:
    guest = "<cpu mode='custom' match='exact'><model>mid</model></cpu>"
    out = baseline([guest], 0, {"small": [], "mid": ["pni"]}, cpu_map)
    assert out == (
        "<cpu mode='custom' match='exact'>\n"
        "  <model fallback='forbid'>mid</model>\n"
        "  <feature policy='disable' name='pni'/>\n"
        "</cpu>\n")


@pytest.mark.parametrize("xmls, hypervisor, code, message", [
    (["<cpu mode='custom'><model>small</model></cpu>"], False, ErrorCode.CONFIG_UNSUPPORTED,
     "unsupported configuration: Attribute mode is only allowed for guest CPU"),
    (["<cpu><model>small</model></cpu>"], False, ErrorCode.XML_ERROR,
     "XML error: Missing CPU architecture"),
    (["<cpu/>"], True, ErrorCode.INVALID_ARG,
     "invalid argument: no CPU model specified at index 0"),
    ([_host("mid"), _host("small", vendor="AMD")], False, ErrorCode.OPERATION_FAILED,
     "operation failed: CPU vendors do not match"),
    (["<cpu><model>nope</model></cpu>"], True, ErrorCode.INTERNAL_ERROR,
     "internal error: Unknown CPU model nope"),
])
def test_errors(cpu_map: str, xmls, hypervisor: bool, code: int, message: str) -> None:
    with pytest.raises(VirError) as e:
        baseline(xmls, 0, {"small": [], "mid": []} if hypervisor else None, cpu_map)
    assert (e.value.code, e.value.message) == (code, message)
