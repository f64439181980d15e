"""Volumes: ``<volume>`` XML to a Volume and back, as libvirtd 9.0 prints it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lxml import etree

from drivers.storage.perms import Perms, parse_perms
from drivers.storage.units import scale
from protocol.errors import ErrorCode, ErrorDomain, VirError

#: File volume formats libvirt knows (virStorageFileFormat).
FILE_FORMATS = frozenset({"raw", "dir", "bochs", "cloop", "dmg", "iso", "vpc", "vdi", "fat",
                          "vhd", "ploop", "cow", "qcow", "qcow2", "qed", "vmdk"})

#: qcow2 features in virStorageFileFeature order.
QCOW2_FEATURES = ("lazy_refcounts", "extended_l2")

#: virStorageVolType numbers for GET_INFO.
VOL_TYPES = {"file": 0, "block": 1, "dir": 2, "network": 3, "netdir": 4, "ploop": 5}


@dataclass
class Backing:
    """A volume's ``<backingStore>``; perms and timestamps are the backing file's."""

    path: str
    format: str = "raw"
    perms: Perms = field(default_factory=Perms)
    timestamps: tuple[str, str, str] | None = None


@dataclass
class Volume:
    """A volume as requested (parsed) or as found on disk (scanned)."""

    name: str
    capacity: int = 0
    allocation: int | None = None
    format: str = "raw"
    perms: Perms = field(default_factory=Perms)
    type: str = "file"
    path: str = ""
    physical: int | None = None
    timestamps: tuple[str, str, str] | None = None  # atime, mtime, ctime
    cluster_size: int | None = None
    backing: Backing | None = None
    compat: str | None = None  # qcow2 compatibility level
    #: qcow2 features by libvirt's names; () prints ``<features/>``, None nothing.
    features: tuple[str, ...] | None = None
    encryption: str | None = None  # the format of an encrypted image found on disk
    #: Where on the pool's devices the volume lies: (device path, start, end) in bytes.
    extents: list[tuple[str, int, int]] = field(default_factory=list)
    uuid: str | None = None  # a key of its own (an LVM volume's UUID) instead of the path

    @property
    def key(self) -> str:
        return self.uuid or self.path

    @property
    def lazy_refcounts(self) -> bool:
        return "lazy_refcounts" in (self.features or ())


def _xml_error(message: str, domain: ErrorDomain = ErrorDomain.STORAGE) -> VirError:
    return VirError(ErrorCode.XML_ERROR, f"XML error: {message}", domain)


def parse_vol(xml: str, need_capacity: bool = True,
              formats: tuple[str, frozenset[str]] | None = ("raw", FILE_FORMATS)) -> Volume:
    """A requested volume; allocation stays None when not given (the driver then
    allocates the whole capacity, as libvirt does). ``formats`` are the pool type's
    volume formats (default, known); None for types that have none (logical), whose
    volumes then have format "" and show no ``<format>``."""
    try:
        root = etree.fromstring(xml.encode(), etree.XMLParser(resolve_entities=False))
    except etree.XMLSyntaxError as e:
        raise VirError(ErrorCode.XML_DETAIL, f"XML error: {e}", ErrorDomain.XML) from None
    if root.tag != "volume":
        raise _xml_error(f"expecting root element of 'volume', not '{root.tag}'", ErrorDomain.XML)
    name = (root.findtext("name") or "").strip()
    if not name:
        raise _xml_error("missing volume name element")
    vol = Volume(name)
    cap = root.find("capacity")
    if cap is not None:
        vol.capacity = scale(cap.text or "", cap.get("unit"))
    elif need_capacity:
        raise _xml_error("missing capacity element")
    alloc = root.find("allocation")
    if alloc is not None:
        vol.allocation = scale(alloc.text or "", alloc.get("unit"), "allocation")
    fmt = root.find("target/format")
    if formats is None:
        vol.format = ""
    else:
        vol.format = formats[0] if fmt is None else _format(fmt, formats[1])
    vol.perms = parse_perms(root.find("target/permissions"))
    compat = root.findtext("target/compat")
    vol.compat = compat.strip() if compat else None
    size = root.find("target/clusterSize")
    if size is not None:
        vol.cluster_size = scale(size.text or "", size.get("unit"), "clusterSize") or None
    features = root.find("target/features")
    if features is not None:
        if vol.compat is None:
            vol.compat = "1.1"  # features need qcow2 v3: libvirt implies it (virt-install too)
        vol.features = _features(features)
    path = root.findtext("backingStore/path")
    if path:
        kind = root.find("backingStore/format")
        vol.backing = Backing(path.strip(), _format(kind) if kind is not None else "raw")
    return vol


def _features(node: Any) -> tuple[str, ...]:
    """The features asked for, in libvirt's order; an unknown one is refused."""
    asked = [child.tag for child in node if isinstance(child.tag, str)]
    unknown = [name for name in asked if name not in QCOW2_FEATURES]
    if unknown:
        raise VirError(ErrorCode.CONFIG_UNSUPPORTED,
                       f"unsupported configuration: unsupported feature {unknown[0]}",
                       ErrorDomain.STORAGE)
    return tuple(name for name in QCOW2_FEATURES if name in asked)


def _format(node: Any, known: frozenset[str] = FILE_FORMATS) -> str:
    kind = node.get("type")
    if kind not in known:
        raise VirError(ErrorCode.CONFIG_UNSUPPORTED,
                       f"unsupported configuration: unknown volume format type {kind}",
                       ErrorDomain.STORAGE)
    return str(kind)


def format_vol(vol: Volume) -> str:
    lines = [
        f"<volume type='{vol.type}'>",
        f"  <name>{_escape(vol.name)}</name>",
        f"  <key>{_escape(vol.key)}</key>",
        *_extents(vol.extents),
        f"  <capacity unit='bytes'>{vol.capacity}</capacity>",
        f"  <allocation unit='bytes'>{vol.allocation or 0}</allocation>",
    ]
    if vol.physical:  # libvirt shows none of zero
        lines.append(f"  <physical unit='bytes'>{vol.physical}</physical>")
    lines += [
        "  <target>",
        f"    <path>{_escape(vol.path)}</path>",
        *([f"    <format type='{vol.format}'/>"] if vol.format else []),
        *vol.perms.format("    "),
    ]
    lines += _timestamps(vol.timestamps)
    if vol.encryption is not None:
        lines += [f"    <encryption format='{vol.encryption}'>", "    </encryption>"]
    if vol.compat is not None:
        lines.append(f"    <compat>{_escape(vol.compat)}</compat>")
    if vol.cluster_size is not None:
        lines.append(f"    <clusterSize unit='B'>{vol.cluster_size}</clusterSize>")
    if vol.features == ():
        lines.append("    <features/>")
    elif vol.features:
        lines += ["    <features>", *[f"      <{name}/>" for name in vol.features],
                  "    </features>"]
    lines.append("  </target>")
    if vol.backing is not None:
        back = vol.backing
        lines += ["  <backingStore>", f"    <path>{_escape(back.path)}</path>",
                  *([f"    <format type='{back.format}'/>"] if back.format else []),
                  *back.perms.format("    "),
                  *_timestamps(back.timestamps), "  </backingStore>"]
    lines.append("</volume>")
    return "\n".join(lines) + "\n"


def _extents(extents: list[tuple[str, int, int]]) -> list[str]:
    """``<source>`` with one ``<device>`` per run of extents on the same device."""
    if not extents:
        return []
    lines = ["  <source>"]
    for i, (path, start, end) in enumerate(extents):
        if i == 0 or extents[i - 1][0] != path:
            if i:
                lines.append("    </device>")
            lines.append(f"    <device path='{_escape(path)}'>")
        lines.append(f"      <extent start='{start}' end='{end}'/>")
    return lines + ["    </device>", "  </source>"]


def _timestamps(stamps: tuple[str, str, str] | None) -> list[str]:
    if stamps is None:
        return []
    atime, mtime, ctime = stamps
    return ["    <timestamps>", f"      <atime>{atime}</atime>", f"      <mtime>{mtime}</mtime>",
            f"      <ctime>{ctime}</ctime>", "      <btime>0</btime>", "    </timestamps>"]


def _escape(text: str) -> str:
    """libvirt escapes quotes in element text too."""
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace("'", "&apos;").replace('"', "&quot;"))
