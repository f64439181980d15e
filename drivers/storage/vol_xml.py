"""Volumes: ``<volume>`` XML to a Volume and back, as libvirtd 9.0 prints it."""

from __future__ import annotations

from dataclasses import dataclass, field

from lxml import etree

from drivers.storage.perms import Perms, parse_perms
from drivers.storage.units import scale
from protocol.errors import ErrorCode, ErrorDomain, VirError

#: File volume formats libvirt knows (virStorageFileFormat).
FILE_FORMATS = frozenset({"raw", "dir", "bochs", "cloop", "dmg", "iso", "vpc", "vdi", "fat",
                          "vhd", "ploop", "cow", "qcow", "qcow2", "qed", "vmdk"})

#: virStorageVolType numbers for GET_INFO.
VOL_TYPES = {"file": 0, "block": 1, "dir": 2, "network": 3, "netdir": 4, "ploop": 5}


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

    @property
    def key(self) -> str:
        return self.path


def _xml_error(message: str, domain: ErrorDomain = ErrorDomain.STORAGE) -> VirError:
    return VirError(ErrorCode.XML_ERROR, f"XML error: {message}", domain)


def parse_vol(xml: str, need_capacity: bool = True) -> Volume:
    """A requested volume; allocation defaults to capacity as in libvirt."""
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
    elif cap is not None:
        vol.allocation = vol.capacity
    fmt = root.find("target/format")
    if fmt is not None:
        kind = fmt.get("type")
        if kind not in FILE_FORMATS:
            raise VirError(ErrorCode.CONFIG_UNSUPPORTED,
                           f"unsupported configuration: unknown volume format type {kind}",
                           ErrorDomain.STORAGE)
        vol.format = kind
    vol.perms = parse_perms(root.find("target/permissions"))
    return vol


def format_vol(vol: Volume) -> str:
    lines = [
        f"<volume type='{vol.type}'>",
        f"  <name>{_escape(vol.name)}</name>",
        f"  <key>{_escape(vol.key)}</key>",
        f"  <capacity unit='bytes'>{vol.capacity}</capacity>",
        f"  <allocation unit='bytes'>{vol.allocation or 0}</allocation>",
    ]
    if vol.physical is not None:
        lines.append(f"  <physical unit='bytes'>{vol.physical}</physical>")
    lines += [
        "  <target>",
        f"    <path>{_escape(vol.path)}</path>",
        f"    <format type='{vol.format}'/>",
        *vol.perms.format("    "),
    ]
    if vol.timestamps is not None:
        atime, mtime, ctime = vol.timestamps
        lines += ["    <timestamps>", f"      <atime>{atime}</atime>",
                  f"      <mtime>{mtime}</mtime>", f"      <ctime>{ctime}</ctime>",
                  "      <btime>0</btime>", "    </timestamps>"]
    if vol.cluster_size is not None:
        lines.append(f"    <clusterSize unit='B'>{vol.cluster_size}</clusterSize>")
    lines += ["  </target>", "</volume>"]
    return "\n".join(lines) + "\n"


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
