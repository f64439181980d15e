"""Pool definitions: ``<pool>`` XML to a PoolDef and back, as libvirtd 9.0 prints it."""

from __future__ import annotations

import uuid as uuidlib
from dataclasses import dataclass, field

from lxml import etree

from drivers.storage.perms import Perms, parse_perms
from protocol.errors import ErrorCode, ErrorDomain, VirError

#: Pool types in the order of their list-all flag bits (the bit of each is 6 + index).
POOL_TYPES = ("dir", "fs", "netfs", "logical", "disk", "iscsi", "scsi", "mpath", "rbd",
              "sheepdog", "gluster", "zfs", "vstorage", "iscsi-direct")

#: The same in virStoragePoolType order.
POOL_TYPE_ENUM = ("dir", "fs", "netfs", "logical", "disk", "iscsi", "iscsi-direct", "scsi",
                  "mpath", "rbd", "sheepdog", "gluster", "zfs", "vstorage")


def missing_backend(kind: str) -> VirError:
    """libvirtd's answer for a pool type it knows but has no backend for."""
    return VirError(ErrorCode.INTERNAL_ERROR, f"internal error: missing backend for pool type "
                    f"{POOL_TYPE_ENUM.index(kind)} ({kind})", ErrorDomain.STORAGE)

#: Types whose definition needs no ``<source>``, only a target path.
_TARGET_ONLY = frozenset({"dir"})


@dataclass
class PoolDef:
    type: str
    name: str
    uuid: bytes
    target_path: str
    target_perms: Perms = field(default_factory=Perms)


@dataclass
class PoolSizes:
    capacity: int = 0
    allocation: int = 0
    available: int = 0


def _xml_error(message: str, domain: ErrorDomain = ErrorDomain.STORAGE) -> VirError:
    return VirError(ErrorCode.XML_ERROR, f"XML error: {message}", domain)


def parse_pool(xml: str) -> PoolDef:
    """A definition from XML, with libvirt's errors for what it rejects."""
    try:
        root = etree.fromstring(xml.encode(), etree.XMLParser(resolve_entities=False))
    except etree.XMLSyntaxError as e:
        raise VirError(ErrorCode.XML_DETAIL, f"XML error: {e}", ErrorDomain.XML) from None
    if root.tag != "pool":
        raise _xml_error(f"expecting root element of 'pool', not '{root.tag}'", ErrorDomain.XML)
    kind = root.get("type")
    if kind not in POOL_TYPES:
        raise _xml_error(
            f"Invalid value for attribute 'type' in element 'pool': '{kind}'.", ErrorDomain.XML)
    if kind not in _TARGET_ONLY:
        raise missing_backend(kind)
    name = (root.findtext("name") or "").strip()
    if not name:
        raise _xml_error("missing pool source name element")
    if "/" in name:
        raise _xml_error(f"name {name} cannot contain '/'")
    text = root.findtext("uuid")
    if text is None:
        pool_uuid = uuidlib.uuid4().bytes
    else:
        try:
            pool_uuid = uuidlib.UUID(text.strip()).bytes
        except ValueError:
            raise _xml_error("malformed uuid element") from None
    path = root.findtext("target/path")
    if path is None or not path.strip():
        raise _xml_error("missing storage pool target path")
    return PoolDef(kind, name, pool_uuid, clean_path(path.strip()),
                   parse_perms(root.find("target/permissions")))


def clean_path(path: str) -> str:
    """libvirt's tidy form of a path: repeated and trailing slashes dropped, except
    a leading ``//``, which POSIX lets mean something else than ``/``."""
    parts = [p for p in path.split("/") if p]
    lead = ""
    if path.startswith("//") and not path.startswith("///"):
        lead = "//"
    elif path.startswith("/"):
        lead = "/"
    return lead + "/".join(parts)


def format_pool(d: PoolDef, sizes: PoolSizes, perms: Perms | None = None) -> str:
    """The XML of a pool; ``perms`` are the target's live permissions (active pools)."""
    shown = perms if perms is not None else d.target_perms
    lines = [
        f"<pool type='{d.type}'>",
        f"  <name>{_escape(d.name)}</name>",
        f"  <uuid>{uuidlib.UUID(bytes=d.uuid)}</uuid>",
        f"  <capacity unit='bytes'>{sizes.capacity}</capacity>",
        f"  <allocation unit='bytes'>{sizes.allocation}</allocation>",
        f"  <available unit='bytes'>{sizes.available}</available>",
        "  <source>",
        "  </source>",
        "  <target>",
        f"    <path>{_escape(d.target_path)}</path>",
        *shown.format("    "),
        "  </target>",
        "</pool>",
    ]
    return "\n".join(lines) + "\n"


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
