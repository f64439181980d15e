"""``virsh domcapabilities``: what a guest may ask of one emulator, machine and accelerator.

The layout is libvirtd 9.0's. The values are what this driver really builds into
a QEMU command line, learnt from the QEMU binary where the binary decides
(machine types, CPU models and their usability, devices present) and from our
command builder where it does (graphics, video, disks, ...). Where libvirtd lists
more than we do, the element says less, never more.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from drivers import host
from drivers.qemu import capabilities, cpumodels
from drivers.qemu.capabilities import QemuCaps
from drivers.qemu.domain_xml.firmware import DESCRIPTOR_DIRS
from protocol.errors import ErrorCode, ErrorDomain, VirError

# virDomainVirtType of libvirt 9.0; "none" means "the default".
VIRT_TYPES = (
    "none qemu kqemu kvm xen lxc uml openvz test vmware hyperv vbox phyp "
    "parallels bhyve vz hvf"
).split()

# Guest architectures each emulator binary runs, by the arch it is named after.
_RUNS = {"x86_64": ("x86_64", "i686"), "i686": ("i686",)}

_X86 = ("x86_64", "i686")

# Loaders libvirtd was built to offer when no firmware descriptor fits (Debian's list).
_LEGACY_LOADERS = ("/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/OVMF/OVMF_CODE.secboot.fd")


def _invalid(message: str) -> VirError:
    return VirError(ErrorCode.INVALID_ARG, f"invalid argument: {message}", ErrorDomain.QEMU)


@dataclass(frozen=True)
class Target:
    """What one domcapabilities answer is about."""

    caps: QemuCaps
    arch: str
    machine: str
    virttype: str  # "kvm" or "qemu"


def _binary_arch(path: str) -> str:
    """The guest architecture a QEMU binary is named for (qemu-system-i386 -> i686)."""
    m = re.search(r"qemu-system-(\w+)$", path)
    name = m.group(1) if m else host.host_arch()
    return "i686" if name == "i386" else name


def _check_binary(path: str) -> None:
    try:
        os.stat(path)
    except OSError as e:
        raise VirError(ErrorCode.SYSTEM_ERROR,
                       f"Cannot check QEMU binary {path}: {e.strerror}", ErrorDomain.QEMU) from None
    if not os.access(path, os.X_OK) or os.path.isdir(path):
        raise VirError(ErrorCode.SYSTEM_ERROR,
                       f"QEMU binary {path} is not executable: Permission denied",
                       ErrorDomain.QEMU)


async def resolve(
    all_caps: dict[str, QemuCaps],
    emulatorbin: str | None,
    arch: str | None,
    machine: str | None,
    virttype: str | None,
    cache_dir: Path | None = None,
) -> Target:
    """Pick emulator, arch, machine and accelerator as libvirtd does, with its errors
    in its order. A binary we did not probe at startup is probed now (and cached)."""
    if virttype is not None and virttype not in VIRT_TYPES:
        raise _invalid(f"unknown virttype: {virttype}")
    if arch is not None and arch not in cpumodels.ARCHES:
        raise _invalid(f"unknown architecture: {arch}")
    want_arch = arch or host.host_arch()
    if emulatorbin is not None:
        _check_binary(emulatorbin)
        known = next((c for c in all_caps.values() if c.emulator == emulatorbin), None)
        if known is None:
            try:
                known = await capabilities.probe(emulatorbin, _binary_arch(emulatorbin), cache_dir)
            except Exception as e:  # QEMU refused, crashed or is no QEMU at all
                raise VirError(ErrorCode.SYSTEM_ERROR,
                               f"internal error: QEMU binary {emulatorbin} did not answer "
                               f"over QMP ({type(e).__name__})", ErrorDomain.QEMU) from None
        caps = known
        if want_arch not in _RUNS.get(caps.arch, (caps.arch,)):
            raise _invalid(f"Emulator '{emulatorbin}' does not support arch '{want_arch}'")
    else:
        found = all_caps.get(want_arch)
        if found is None:
            raise VirError(ErrorCode.CONFIG_UNSUPPORTED,
                           f"unsupported configuration: unable to find any emulator "
                           f"to serve '{want_arch}' architecture", ErrorDomain.QEMU)
        caps = found
    if machine is not None and not caps.has_machine(machine):
        raise _invalid(f"the machine '{machine}' is not supported by emulator '{caps.emulator}'")
    canonical = caps.canonical_machine(machine)
    if virttype in (None, "none"):
        virttype = "kvm" if caps.kvm_usable else "qemu"
    elif virttype not in ("qemu", "kvm") or (virttype == "kvm" and not caps.kvm_usable):
        raise _invalid(f"Emulator '{caps.emulator}' does not support virt type '{virttype}'")
    return Target(caps, want_arch, canonical, virttype)


# -- the document ---------------------------------------------------------------


def _enum(name: str, values: Iterable[str], indent: str) -> list[str]:
    values = list(values)
    if not values:
        return [f"{indent}<enum name='{name}'/>"]
    return [
        f"{indent}<enum name='{name}'>",
        *(f"{indent}  <value>{v}</value>" for v in values),
        f"{indent}</enum>",
    ]


def _element(tag: str, enums: dict[str, Iterable[str]], indent: str) -> list[str]:
    out = [f"{indent}<{tag} supported='yes'>"]
    for name, values in enums.items():
        out += _enum(name, values, indent + "  ")
    return out + [f"{indent}</{tag}>"]


def firmware_descriptors(arch: str, machine: str,
                         dirs: tuple[str, ...] = DESCRIPTOR_DIRS) -> list[dict]:
    """UEFI flash descriptors that fit ``arch``/``machine``, in the order libvirtd tries them."""
    files: dict[str, Path] = {}
    for directory in dirs:
        if Path(directory).is_dir():
            for path in sorted(Path(directory).glob("*.json")):
                files.setdefault(path.name, path)
    fitting = []
    for name in sorted(files):
        try:
            desc = json.loads(files[name].read_text())
        except (OSError, ValueError):
            continue
        if "uefi" not in desc.get("interface-types", ()):
            continue
        if desc.get("mapping", {}).get("device") != "flash":
            continue
        if any(t.get("architecture") == arch
               and any(fnmatch.fnmatch(machine, m) for m in t.get("machines", ()))
               for t in desc.get("targets", ())):
            fitting.append(desc)
    return fitting


def _os(descriptors: list[dict]) -> list[str]:
    loaders = [d["mapping"]["executable"]["filename"] for d in descriptors
               if "filename" in d["mapping"].get("executable", {})]
    if not descriptors:
        loaders = [p for p in _LEGACY_LOADERS if os.path.exists(p)]
    secure = []
    if any("secure-boot" in d.get("features", ()) for d in descriptors):
        secure.append("yes")
    secure.append("no")
    out = ["  <os supported='yes'>"]
    out += _enum("firmware", ["efi"] if descriptors else [], "    ")
    out.append("    <loader supported='yes'>")
    out += [f"      <value>{p}</value>" for p in loaders]
    out += _enum("type", ["rom", "pflash"], "      ")
    out += _enum("readonly", ["yes", "no"], "      ")
    out += _enum("secure", secure, "      ")
    return out + ["    </loader>", "  </os>"]


def _cpu(t: Target, hm: cpumodels.HostModel | None,
         map_models: tuple[tuple[str, str], ...]) -> list[str]:
    out = ["  <cpu>"]
    if t.virttype == "kvm":
        out.append("    <mode name='host-passthrough' supported='yes'>")
        out += _enum("hostPassthroughMigratable", ["on", "off"], "      ")
        out.append("    </mode>")
    else:
        out.append("    <mode name='host-passthrough' supported='no'/>")
    out.append("    <mode name='maximum' supported='yes'>")
    out += _enum("maximumMigratable", ["on", "off"], "      ")
    out.append("    </mode>")
    if hm is not None:
        out.append("    <mode name='host-model' supported='yes'>")
        out.append(f"      <model fallback='forbid'>{hm.model}</model>")
        if hm.vendor:
            out.append(f"      <vendor>{hm.vendor}</vendor>")
        out += [f"      <feature policy='require' name='{f}'/>" for f in hm.require]
        out += [f"      <feature policy='disable' name='{f}'/>" for f in hm.disable]
        out.append("    </mode>")
    else:
        out.append("    <mode name='host-model' supported='no'/>")
    blockers = t.caps.cpu_blockers.get("kvm" if t.virttype == "kvm" else "tcg", {})
    vendors = dict(map_models)
    if vendors:
        names = [n for n in t.caps.cpu_models if n in vendors]
    else:  # no CPU map installed: QEMU's own names, vendor unknown
        names = cpumodels.qemu_names(t.caps.cpu_models)
    out.append("    <mode name='custom' supported='yes'>")
    for name in names:
        flag = "yes" if blockers.get(name) == [] else "no"
        out.append(f"      <model usable='{flag}' vendor='{vendors.get(name, 'unknown')}'>"
                   f"{name}</model>")
    out += ["    </mode>", "  </cpu>"]
    return out


def _devices(caps: QemuCaps, machine: str) -> list[str]:
    """Device enums: only values our command builder turns into QEMU options."""
    buses = ["ide", "fdc", "scsi", "virtio", "usb", "sata"]
    if machine.startswith(("pc-q35", "q35")):
        buses.remove("ide")  # Q35 has no IDE controller
    out = ["  <devices>"]
    out += _element("disk", {
        "diskDevice": ["disk", "cdrom", "floppy"],
        "bus": buses,
        "model": ["virtio"],
    }, "    ")
    out += _element("graphics", {"type": ["vnc", "spice"]}, "    ")
    out += _element("video", {
        "modelType": ["vga", "cirrus", "qxl", "virtio", "none", "bochs"],
    }, "    ")
    out.append("    <hostdev supported='no'/>")
    backends = ["random", "egd"] + (["builtin"] if "rng-builtin" in caps.qom_types else [])
    out += _element("rng", {"model": ["virtio"], "backendModel": backends}, "    ")
    fs = ["path"] + (["virtiofs"] if "vhost-user-fs-pci" in caps.qom_types else [])
    out += _element("filesystem", {"driverType": fs}, "    ")
    out.append("    <tpm supported='no'/>")
    out += _element("redirdev", {"bus": ["usb"]}, "    ")
    out += _element("channel", {"type": ["pty", "unix", "spicevmc"]}, "    ")
    return out + ["  </devices>"]


def _features(caps: QemuCaps) -> list[str]:
    def flag(tag: str, yes: bool) -> str:
        return f"    <{tag} supported='{'yes' if yes else 'no'}'/>"

    return [
        "  <features>",
        flag("gic", False),
        flag("vmcoreinfo", "vmcoreinfo" in caps.qom_types),
        flag("genid", "vmgenid" in caps.qom_types),
        flag("backingStoreInput", False),
        flag("backup", False),
        flag("sev", False),
        flag("sgx", False),
        *_element("hyperv", {"features": ["spinlocks", "vendor_id"]}, "    "),
        "  </features>",
    ]


def domain_capabilities_xml(
    t: Target,
    hm: cpumodels.HostModel | None,
    map_models: tuple[tuple[str, str], ...],
    descriptors: list[dict],
) -> str:
    """The document for ``t``; ``hm`` is what host-model means for its accelerator
    (None: not offered), ``map_models`` libvirt's CPU map for the arch (empty when
    not installed), ``descriptors`` the UEFI firmware that fits."""
    caps = t.caps
    max_cpus = caps.machines[t.machine].max_cpus if t.machine in caps.machines else 1
    out = [
        "<domainCapabilities>",
        f"  <path>{caps.emulator}</path>",
        f"  <domain>{t.virttype}</domain>",
        f"  <machine>{t.machine}</machine>",
        f"  <arch>{t.arch}</arch>",
        f"  <vcpu max='{max_cpus}'/>",
        f"  <iothreads supported='{'yes' if 'iothread' in caps.qom_types else 'no'}'/>",
        *_os(descriptors),
        *_cpu(t, hm, map_models),
        "  <memoryBacking supported='yes'>",
        *_enum("sourceType", ["anonymous"], "    "),
        "  </memoryBacking>",
        *_devices(caps, t.machine),
        *_features(caps),
        "</domainCapabilities>",
    ]
    return "\n".join(out) + "\n"


async def domain_capabilities(
    all_caps: dict[str, QemuCaps],
    emulatorbin: str | None,
    arch: str | None,
    machine: str | None,
    virttype: str | None,
    cache_dir: Path | None = None,
) -> str:
    """virConnectGetDomainCapabilities for the QEMU driver."""
    t = await resolve(all_caps, emulatorbin, arch, machine, virttype, cache_dir)
    map_models = cpumodels.map_models("x86") if t.arch in _X86 else ()
    return domain_capabilities_xml(
        t, host_model(t), map_models, firmware_descriptors(t.arch, t.machine)
    )


def host_model(t: Target) -> cpumodels.HostModel | None:
    """What ``<cpu mode='host-model'>`` gives a guest of ``t``: -cpu host under KVM,
    -cpu max under TCG, named after the CPU map. None where that cannot be said."""
    accel = "kvm" if t.virttype == "kvm" else "tcg"
    props = t.caps.host_cpu_props.get(accel)
    if not props or t.arch not in _X86:
        return None
    return cpumodels.host_model(props, t.caps.cpu_blockers.get(accel, {}))
