"""Pool definitions: ``<pool>`` XML to a PoolDef and back, as libvirtd 9.0 prints it."""

from __future__ import annotations

import dataclasses
import re
import uuid as uuidlib
from dataclasses import dataclass, field

from lxml import etree

from drivers.storage.capabilities import SOURCE_FORMATS
from drivers.storage.perms import Perms, parse_perms
from protocol.errors import ErrorCode, ErrorDomain, VirError

#: Pool types in the order of their list-all flag bits (the bit of each is 6 + index).
POOL_TYPES = ("dir", "fs", "netfs", "logical", "disk", "iscsi", "scsi", "mpath", "rbd",
              "sheepdog", "gluster", "zfs", "vstorage", "iscsi-direct")

#: The same in virStoragePoolType order.
POOL_TYPE_ENUM = ("dir", "fs", "netfs", "logical", "disk", "iscsi", "iscsi-direct", "scsi",
                  "mpath", "rbd", "sheepdog", "gluster", "zfs", "vstorage")

#: Namespace of the extra mount options of fs and netfs pools.
FS_NS = "http://libvirt.org/schemas/storagepool/fs/1.0"


def missing_backend(kind: str) -> VirError:
    """libvirtd's answer for a pool type it knows but has no backend for."""
    return VirError(ErrorCode.INTERNAL_ERROR, f"internal error: missing backend for pool type "
                    f"{POOL_TYPE_ENUM.index(kind)} ({kind})", ErrorDomain.STORAGE)


# What a type's <source> holds (libvirt's pool options): shown only when flagged,
# some of them required.
HOST, DEVICE, DIR, ADAPTER, NAME, INITIATOR, NETWORK = (1 << i for i in range(7))
_SOURCE_PARTS = {
    "dir": 0, "fs": DEVICE, "netfs": HOST | DIR, "logical": NAME | DEVICE, "disk": DEVICE,
    "iscsi": HOST | DEVICE | INITIATOR, "iscsi-direct": HOST | DEVICE | NETWORK | INITIATOR,
    "scsi": ADAPTER, "mpath": 0, "rbd": HOST | NETWORK | NAME,
    "sheepdog": HOST | NETWORK | NAME, "gluster": HOST | NETWORK | NAME | DIR,
    "zfs": NAME | DEVICE, "vstorage": NAME,
}
_AUTH_TYPES = ("none", "chap", "ceph")
_INT = re.compile(r"\s*[+-]?\d+")


@dataclass
class Host:
    name: str
    port: int = 0


@dataclass
class Device:
    path: str
    part_separator: bool | None = None
    free_extents: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class Auth:
    type: str  # chap or ceph
    username: str
    secret_uuid: str | None = None
    secret_usage: str | None = None
    secret_type: str | None = None


@dataclass
class PoolSource:
    hosts: list[Host] = field(default_factory=list)
    devices: list[Device] = field(default_factory=list)
    dir: str | None = None
    name: str | None = None
    initiator: str | None = None  # the initiator's IQN
    format: str | None = None  # for the types that have source formats
    auth: Auth | None = None
    protocol: str | None = None  # NFS version
    vendor: str | None = None
    product: str | None = None


@dataclass
class PoolDef:
    type: str
    name: str
    uuid: bytes
    target_path: str  # empty for network pools, which have no target
    target_perms: Perms = field(default_factory=Perms)
    source: PoolSource = field(default_factory=PoolSource)
    mount_opts: list[str] | None = None  # <fs:mount_opts>, fs and netfs pools


@dataclass
class PoolSizes:
    capacity: int = 0
    allocation: int = 0
    available: int = 0


def _xml_error(message: str, domain: ErrorDomain = ErrorDomain.STORAGE) -> VirError:
    return VirError(ErrorCode.XML_ERROR, f"XML error: {message}", domain)


def _unsupported(message: str) -> VirError:
    return VirError(ErrorCode.CONFIG_UNSUPPORTED, f"unsupported configuration: {message}",
                    ErrorDomain.STORAGE)


def _text(node: etree._Element, path: str) -> str | None:
    """An XPath string() value: None when absent or empty, as libvirt reads it."""
    return str(node.xpath(f"string({path})")) or None


def _parse_root(xml: str, tag: str) -> etree._Element:
    try:
        root = etree.fromstring(xml.encode(), etree.XMLParser(resolve_entities=False))
    except etree.XMLSyntaxError as e:
        raise VirError(ErrorCode.XML_DETAIL, f"XML error: {e}", ErrorDomain.XML) from None
    if root.tag != tag:
        raise _xml_error(f"expecting root element of '{tag}', not '{root.tag}'", ErrorDomain.XML)
    return root


def parse_source_spec(xml: str, kind: str) -> PoolSource:
    """The ``<source>`` a find-storage-pool-sources call narrows the search with."""
    return parse_source(_parse_root(xml, "source"), kind)


def format_sources(sources: list[PoolSource], kind: str) -> str:
    """What find-storage-pool-sources answers."""
    lines = ["<sources>"]
    for src in sources:
        lines += format_source(src, kind, "  ")
    return "\n".join([*lines, "</sources>"]) + "\n"


def parse_pool(xml: str) -> PoolDef:
    """A definition from XML, with libvirt's errors for what it rejects."""
    root = _parse_root(xml, "pool")
    kind = root.get("type")
    if kind not in POOL_TYPES:
        raise _xml_error(
            f"Invalid value for attribute 'type' in element 'pool': '{kind}'.", ErrorDomain.XML)
    parts = _SOURCE_PARTS[kind]
    source = parse_source(root.find("source"), kind)
    name = (root.findtext("name") or "").strip() or (source.name if parts & NAME else "")
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
    if parts & HOST and not source.hosts:
        raise _xml_error("missing storage pool source host name")
    if parts & DIR and source.dir is None:
        raise _xml_error("missing storage pool source path")
    if parts & NAME and source.name is None:
        source.name = name
    if parts == DEVICE and not source.devices:
        raise _xml_error("missing storage pool source device name")
    path, perms = "", Perms()
    if not parts & NETWORK:
        if kind == "logical":
            path = f"/dev/{source.name}"
        elif kind == "zfs":
            path = f"/dev/zvol/{source.name}"
        else:
            path = root.findtext("target/path") or ""
            if not path.strip():
                raise _xml_error("missing storage pool target path")
        path = clean_path(path.strip())
        perms = parse_perms(root.find("target/permissions"))
    if kind == "iscsi-direct" and source.initiator is None:
        raise _unsupported("missing initiator IQN")
    d = PoolDef(kind, name, pool_uuid, path, perms, source)
    if kind in ("fs", "netfs"):
        d.mount_opts = _parse_mount_opts(root)
    return d


def parse_source(node: etree._Element | None, kind: str) -> PoolSource:
    """A ``<source>`` element (of a pool, or a find-storage-pool-sources spec)."""
    formats = SOURCE_FORMATS.get(kind)
    src = PoolSource()
    if node is None:
        src.format = formats[0] if formats else None
        return src
    src.name = _text(node, "name")
    if kind == "rbd" and src.name is None:
        raise _xml_error("element 'name' is mandatory for RBD pool")
    if formats is not None:
        src.format = _text(node, "format/@type")
        if src.format is None:
            src.format = formats[0]
        elif src.format not in formats[1]:
            raise _unsupported(f"unknown pool format type {src.format}")
    for host in node.findall("host"):
        name = host.get("name")
        if name is None:
            raise _xml_error("missing storage pool host name")
        src.hosts.append(Host(name, _int_attr(host, "port")))
    src.initiator = _text(node, "initiator/iqn/@name")
    for dev in node.findall("device"):
        path = dev.get("path")
        if path is None:
            raise _xml_error("missing storage pool source device path")
        src.devices.append(Device(path, _bool_attr(dev, "part_separator")))
    directory = _text(node, "dir/@path")
    if directory is not None:
        src.dir = clean_path(directory)
    if src.dir is None and kind == "gluster":
        src.dir = "/"
    auth = node.find("auth")
    if auth is not None:
        src.auth = _parse_auth(auth)
    src.protocol = _text(node, "protocol/@ver")
    if src.protocol is not None:
        _check_protocol(src.protocol, kind, src.format)
    src.vendor = _text(node, "vendor/@name")
    src.product = _text(node, "product/@name")
    return src


def _int_attr(node: etree._Element, attr: str) -> int:
    value = node.get(attr)
    if value is None:
        return 0
    if not _INT.fullmatch(value) or not -2**31 <= int(value) < 2**31:
        raise _xml_error(f"Invalid value for attribute '{attr}' in element '{node.tag}': "
                         f"'{value}'. Expected integer value", ErrorDomain.XML)
    return int(value)


def _bool_attr(node: etree._Element, attr: str) -> bool | None:
    value = node.get(attr)
    if value is None:
        return None
    if value not in ("yes", "no"):
        raise _xml_error(f"Invalid value for attribute '{attr}' in element '{node.tag}': "
                         f"'{value}'.", ErrorDomain.XML)
    return value == "yes"


def _parse_auth(node: etree._Element) -> Auth:
    username = node.get("username")
    if not username:
        raise _xml_error("missing username for auth")
    kind = node.get("type") or "none"
    if kind not in _AUTH_TYPES:
        raise _unsupported(f"unknown auth type '{kind}'")
    secret = node.find("secret")
    if secret is None:
        raise _xml_error("Missing <secret> element in auth")
    auth = Auth(kind, username, secret.get("uuid"), secret.get("usage"), secret.get("type"))
    if auth.secret_uuid is not None:
        try:
            auth.secret_uuid = str(uuidlib.UUID(auth.secret_uuid))
        except ValueError:
            raise VirError(ErrorCode.XML_ERROR,
                           f"XML error: invalid secret uuid '{auth.secret_uuid}'") from None
        auth.secret_usage = None
    elif auth.secret_usage is None:
        raise VirError(ErrorCode.XML_ERROR, "XML error: missing secret uuid or usage attribute")
    if kind == "none":
        raise _unsupported("storage pool missing auth type")
    return auth


def _check_protocol(version: str, kind: str, fmt: str | None) -> None:
    """libvirt compares the format's number with netfs's nfs and auto whatever
    the pool type, so an fs pool of ext2 passes; we answer alike."""
    formats = SOURCE_FORMATS.get(kind)
    index = formats[1].index(fmt) if formats is not None and fmt is not None else 0
    if index > 1:
        netfs = SOURCE_FORMATS["netfs"][1]
        raise _unsupported(f"storage pool protocol ver unsupported for pool type "
                           f"'{netfs[index] if index < len(netfs) else '(null)'}'")
    if "," in version:
        raise VirError(ErrorCode.XML_DETAIL,
                       f"XML error: storage pool protocol ver '{version}' must not contain ','",
                       ErrorDomain.STORAGE)


def _parse_mount_opts(root: etree._Element) -> list[str] | None:
    options = root.findall(f"{{{FS_NS}}}mount_opts/{{{FS_NS}}}option")
    if not options:
        return None
    names = []
    for opt in options:
        name = opt.get("name")
        if not name:
            raise VirError(ErrorCode.XML_ERROR, "XML error: no fs mount option name specified",
                           ErrorDomain.STORAGE)
        names.append(name)
    return names


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


def same_source(old: PoolDef, new: PoolDef) -> bool:
    """Whether ``new`` (another pool) would use what ``old`` uses (libvirt's
    "Storage source conflict" rules)."""
    kind = old.type
    if kind in ("dir", "netfs", "gluster"):
        if new.type != kind:
            return False
        if kind == "dir":
            return old.target_path == new.target_path
        same_name = kind == "netfs" or old.source.name == new.source.name
        return same_name and old.source.dir == new.source.dir and _same_host(old, new)
    device_types = ("iscsi", "fs", "logical", "disk", "zfs")
    if kind in device_types:
        if new.type not in device_types or (kind == "iscsi") != (new.type == "iscsi"):
            return False
        paths = {d.path for d in old.source.devices}
        if not any(d.path in paths for d in new.source.devices):
            return False
        return kind != "iscsi" or old.source.initiator == new.source.initiator
    if kind == "sheepdog":
        return new.type == kind and _same_host(old, new)
    if kind == "mpath":
        return new.type == kind
    if kind == "vstorage":
        return new.type == kind and old.source.name == new.source.name
    return False


def _same_host(old: PoolDef, new: PoolDef) -> bool:
    a, b = old.source.hosts, new.source.hosts
    if not a or not b:
        return False
    if b[0].port and a[0].port != b[0].port:
        return False
    return a[0].name == b[0].name


def format_pool(d: PoolDef, sizes: PoolSizes, perms: Perms | None = None,
                free: list[tuple[int, int]] | None = None) -> str:
    """The XML of a pool; ``perms`` are the target's live permissions and ``free``
    the free extents (start, end) of its source device (active pools)."""
    shown = perms if perms is not None else d.target_perms
    source = d.source
    if free and source.devices:
        first = dataclasses.replace(source.devices[0], free_extents=free)
        source = dataclasses.replace(source, devices=[first, *source.devices[1:]])
    ns = f" xmlns:fs='{FS_NS}'" if d.mount_opts else ""
    lines = [
        f"<pool type='{d.type}'{ns}>",
        f"  <name>{_escape(d.name)}</name>",
        f"  <uuid>{uuidlib.UUID(bytes=d.uuid)}</uuid>",
        f"  <capacity unit='bytes'>{sizes.capacity}</capacity>",
        f"  <allocation unit='bytes'>{sizes.allocation}</allocation>",
        f"  <available unit='bytes'>{sizes.available}</available>",
        *format_source(source, d.type, "  "),
    ]
    if d.type not in ("rbd", "sheepdog", "gluster", "iscsi-direct"):
        lines += ["  <target>", f"    <path>{_escape(d.target_path)}</path>",
                  *shown.format("    "), "  </target>"]
    if d.mount_opts:
        lines.append("  <fs:mount_opts>")
        lines += [f"    <fs:option name='{_escape(o)}'/>" for o in d.mount_opts]
        lines.append("  </fs:mount_opts>")
    lines.append("</pool>")
    return "\n".join(lines) + "\n"


def format_source(src: PoolSource, kind: str, indent: str) -> list[str]:
    """``<source>`` as libvirt prints it for a pool of type ``kind``."""
    parts = _SOURCE_PARTS[kind]
    inner = indent + "  "
    lines = [f"{indent}<source>"]
    if parts & HOST:
        lines += [f"{inner}<host name='{_escape(h.name)}'"
                  + (f" port='{h.port}'" if h.port else "") + "/>" for h in src.hosts]
    if parts & DEVICE:
        for dev in src.devices:
            head = f"{inner}<device path='{_escape(dev.path)}'"
            if dev.part_separator is not None:
                head += f" part_separator='{'yes' if dev.part_separator else 'no'}'"
            if not dev.free_extents:
                lines.append(head + "/>")
                continue
            lines.append(head + ">")
            lines += [f"{inner}  <freeExtent start='{start}' end='{end}'/>"
                      for start, end in dev.free_extents]
            lines.append(f"{inner}</device>")
    if parts & DIR and src.dir is not None:
        lines.append(f"{inner}<dir path='{_escape(src.dir)}'/>")
    if parts & NAME and src.name is not None:
        lines.append(f"{inner}<name>{_escape(src.name)}</name>")
    if parts & INITIATOR and src.initiator is not None:
        lines += [f"{inner}<initiator>", f"{inner}  <iqn name='{_escape(src.initiator)}'/>",
                  f"{inner}</initiator>"]
    if kind in SOURCE_FORMATS and src.format is not None:
        lines.append(f"{inner}<format type='{src.format}'/>")
    if src.auth is not None:
        lines += _format_auth(src.auth, inner)
    if src.protocol is not None:
        lines.append(f"{inner}<protocol ver='{_escape(src.protocol)}'/>")
    if src.vendor is not None:
        lines.append(f"{inner}<vendor name='{_escape(src.vendor)}'/>")
    if src.product is not None:
        lines.append(f"{inner}<product name='{_escape(src.product)}'/>")
    lines.append(f"{indent}</source>")
    return lines


def _format_auth(auth: Auth, indent: str) -> list[str]:
    secret = f"{indent}  <secret"
    if auth.secret_type is not None:
        secret += f" type='{_escape(auth.secret_type)}'"
    if auth.secret_uuid is not None:
        secret += f" uuid='{auth.secret_uuid}'/>"
    else:
        secret += f" usage='{_escape(auth.secret_usage or '')}'/>"
    return [f"{indent}<auth type='{auth.type}' username='{_escape(auth.username)}'>", secret,
            f"{indent}</auth>"]


def _escape(text: str) -> str:
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace("'", "&apos;").replace('"', "&quot;"))
