"""Network ports: ``<networkport>`` XML to a NetworkPort and back, as libvirtd 9.0 prints it.

A port is one guest NIC's claim on a network: who owns it, its MAC, and where
it plugs in (the bridge the tap joins).
"""

from __future__ import annotations

import uuid as uuidlib
from dataclasses import dataclass

from drivers.network.network_xml import attrs, esc, parse_xml_doc
from protocol.errors import ErrorCode, ErrorDomain, VirError


@dataclass
class NetworkPort:
    uuid: bytes
    network: str
    owner_name: str
    owner_uuid: bytes
    mac: str
    plug_type: str | None = None  # "network", "bridge"; None until plugged
    bridge: str | None = None
    mac_table_manager: str | None = None
    mtu: int | None = None  # the network's, for the tap; not part of the XML

    @property
    def uuid_str(self) -> str:
        return str(uuidlib.UUID(bytes=self.uuid))

    def xml(self) -> str:
        lines = ["<networkport>",
                 f"  <uuid>{self.uuid_str}</uuid>",
                 "  <owner>",
                 f"    <name>{esc(self.owner_name)}</name>",
                 f"    <uuid>{uuidlib.UUID(bytes=self.owner_uuid)}</uuid>",
                 "  </owner>",
                 f"  <mac address='{self.mac}'/>"]
        if self.plug_type is not None:
            a = attrs(("type", self.plug_type), ("bridge", self.bridge),
                      ("macTableManager", self.mac_table_manager))
            lines.append(f"  <plug{a}/>")
        lines.append("</networkport>")
        return "\n".join(lines) + "\n"


def _internal(message: str) -> VirError:
    return VirError(ErrorCode.INTERNAL_ERROR, f"internal error: {message}", ErrorDomain.NETWORK)


def parse_port(xml: str, network: str) -> NetworkPort:
    """A port as a client asks for it, with libvirtd's errors for what is missing."""
    root = parse_xml_doc(xml, "(networkport_definition)")
    if root.tag != "networkport":
        raise VirError(ErrorCode.XML_ERROR, "XML error: expecting root element of "
                       f"'networkport', not '{root.tag}'", ErrorDomain.XML)
    text = (root.findtext("uuid") or "").strip()
    if not text:
        raise _internal("network port has no uuid")
    try:
        port_uuid = uuidlib.UUID(text).bytes
    except ValueError:
        raise _internal(f"Unable to parse UUID '{text}'") from None
    owner_name = (root.findtext("owner/name") or "").strip()
    if not owner_name:
        raise _internal("network port has no owner name")
    owner_text = (root.findtext("owner/uuid") or "").strip()
    try:
        owner_uuid = uuidlib.UUID(owner_text).bytes
    except ValueError:
        raise _internal(f"Unable to parse UUID '{owner_text}'") from None
    mac = root.find("mac")
    if mac is None or not mac.get("address"):
        raise _internal("network port has no mac")
    port = NetworkPort(port_uuid, network, owner_name, owner_uuid, mac.get("address", "").lower())
    plug = root.find("plug")
    if plug is not None:
        port.plug_type = plug.get("type")
        port.bridge = plug.get("bridge")
        port.mac_table_manager = plug.get("macTableManager")
    return port
