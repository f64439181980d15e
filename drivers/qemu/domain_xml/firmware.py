"""Firmware autoselection for ``<os firmware='efi'>``, from QEMU's firmware descriptors.

libvirtd 9.0 picks the firmware when the guest starts, not when it is defined: the
live definition then names the loader and NVRAM and drops the ``firmware`` attribute.
The driver calls ``select_firmware`` on its live copy before ``build_argv``.
"""

from __future__ import annotations

import fnmatch
import json
import shutil
from pathlib import Path

from protocol.errors import ErrorCode, ErrorDomain, VirError

from .defaults import FEATURE_ORDER
from .model import DomainDef, Feature

DESCRIPTOR_DIRS = ("/etc/qemu/firmware", "/usr/share/qemu/firmware")
_INTERFACE = {"efi": "uefi", "bios": "bios"}


def _descriptors(dirs: tuple[str, ...]) -> list[dict]:
    """Descriptors in name order; a name in an earlier directory hides the later ones."""
    found: dict[str, Path] = {}
    for directory in dirs:
        for path in sorted(Path(directory).glob("*.json")) if Path(directory).is_dir() else ():
            found.setdefault(path.name, path)
    result = []
    for name in sorted(found):
        try:
            result.append(json.loads(found[name].read_text()))
        except (OSError, ValueError):
            continue
    return result


def _matches(desc: dict, d: DomainDef, interface: str) -> bool:
    if interface not in desc.get("interface-types", ()):
        return False
    if desc.get("mapping", {}).get("device") != "flash":
        return False
    if not any(
        t.get("architecture") == d.os.arch
        and any(fnmatch.fnmatch(d.os.machine or "", m) for m in t.get("machines", ()))
        for t in desc.get("targets", ())
    ):
        return False
    features = set(desc.get("features", ()))
    for enabled, name in d.os.firmware_features:
        if (enabled == "yes") != (name in features):
            return False
    return True


def select_firmware(d: DomainDef, nvram_dir: str, dirs: tuple[str, ...] = DESCRIPTOR_DIRS) -> None:
    """Fill loader, NVRAM and SMM for ``firmware='efi'`` as libvirtd does at start."""
    interface = _INTERFACE.get(d.os.firmware or "")
    if interface != "uefi" or d.os.loader:
        return
    for desc in _descriptors(dirs):
        if _matches(desc, d, interface):
            break
    else:
        raise VirError(
            ErrorCode.OPERATION_FAILED,
            f"operation failed: Unable to find any firmware to satisfy '{d.os.firmware}'",
            ErrorDomain.QEMU,
        )
    mapping = desc["mapping"]
    features = set(desc.get("features", ()))
    smm = "requires-smm" in features
    d.os.firmware = None
    d.os.loader = mapping["executable"]["filename"]
    d.os.loader_attrs = {"readonly": "yes", **({"secure": "yes"} if smm else {}), "type": "pflash"}
    template = mapping.get("nvram-template", {}).get("filename")
    d.os.nvram = f"{nvram_dir}/{d.name}_VARS.fd"
    d.os.nvram_attrs = {"template": template} if template else {}
    if smm and "smm" not in d.features:
        d.features["smm"] = Feature({"state": "on"})
        rank = {n: i for i, n in enumerate(FEATURE_ORDER)}
        d.features = dict(sorted(d.features.items(), key=lambda kv: rank.get(kv[0], 99)))


def ensure_nvram(d: DomainDef) -> None:
    """Create the guest's NVRAM from its template the first time it starts."""
    if d.os.nvram and d.os.nvram_attrs.get("template") and not Path(d.os.nvram).exists():
        Path(d.os.nvram).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(d.os.nvram_attrs["template"], d.os.nvram)
