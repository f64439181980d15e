"""daemon.dispatch and policy.acl: the steps of a call and their libvirtd errors."""

from __future__ import annotations

from typing import Any

import pytest

from daemon.dispatch import Call, Connection, Table, api_error_domain, find_handlers
from policy.acl import ReadOnly, rule_for
from protocol import packet, programs
from protocol.errors import ErrorCode, ErrorDomain, VirError

REMOTE = programs.remote()
R = REMOTE.module
PROG, VERS = REMOTE.number, REMOTE.version


class FakeClient:
    def __init__(self, conn: Connection | None = None, authenticated: bool = True) -> None:
        self.conn = conn
        self.authenticated = authenticated
        self.streams: list[Any] = []

    def add_stream(self, stream: Any) -> None:
        self.streams.append(stream)


def _pkt(proc: int, body: bytes = b"", prog: int = PROG, vers: int = VERS) -> bytes:
    return packet.packet(prog, vers, proc, packet.CALL, 1, packet.OK, body)


def _table(**handlers: Any) -> Table:
    table = Table(ReadOnly())
    table.add(REMOTE, handlers)
    return table


async def _call(table: Table, client: Any, proc: int, body: bytes = b"", *,
                prog: int = PROG, vers: int = VERS, status: int = packet.OK) -> bytes:
    return await table.call(client, prog, vers, proc, 1, status, _pkt(proc, body, prog, vers))


def _open(readonly: bool = False) -> FakeClient:
    return FakeClient(Connection(driver=object(), uri="qemu:///system", readonly=readonly))


async def _raises(coro: Any, code: ErrorCode, domain: ErrorDomain, message: str) -> None:
    with pytest.raises(VirError) as info:
        await coro
    assert (info.value.code, info.value.domain, info.value.message) == (code, domain, message)


async def test_handler_result_is_encoded() -> None:
    async def connect_get_lib_version(call: Call, args: None) -> Any:
        assert call.serial == 1 and call.procedure.name == "CONNECT_GET_LIB_VERSION"
        return R.remote_connect_get_lib_version_ret(9000000)

    body = await _call(_table(connect_get_lib_version=connect_get_lib_version), _open(), 157)
    assert body == b"\0\0\0\0\0\x89T@"


async def test_arguments_are_decoded_and_trailing_bytes_tolerated() -> None:
    seen = []

    async def connect_supports_feature(call: Call, args: Any) -> Any:
        seen.append(args.feature)
        return R.remote_connect_supports_feature_ret(1)

    table = _table(connect_supports_feature=connect_supports_feature)
    await _call(table, _open(), 60, b"\0\0\0\x0a" + b"junk")
    assert seen == [10]


async def test_unknown_program_and_version() -> None:
    t = _table()
    await _raises(_call(t, _open(), 1, prog=0x1234), ErrorCode.RPC, ErrorDomain.RPC,
                  "Cannot find program 4660 version 1")
    await _raises(_call(t, _open(), 1, vers=7), ErrorCode.RPC, ErrorDomain.RPC,
                  f"Cannot find program {PROG} version 7")


async def test_status_and_unknown_procedure() -> None:
    t = _table()
    await _raises(_call(t, _open(), 157, status=1), ErrorCode.RPC, ErrorDomain.RPC,
                  "Unexpected message status 1")
    for proc in (0, 9999, -1, 107):  # 107 is an event: clients cannot call it
        await _raises(_call(t, _open(), proc), ErrorCode.RPC, ErrorDomain.RPC,
                      f"unknown procedure: {proc}")


async def test_authentication_required() -> None:
    async def auth_list(call: Call, args: None) -> Any:
        return R.remote_auth_list_ret([0])

    t = _table(auth_list=auth_list)
    client = FakeClient(authenticated=False)
    await _raises(_call(t, client, 157), ErrorCode.RPC, ErrorDomain.RPC,
                  "authentication required")
    assert await _call(t, client, 66) == b"\0\0\0\1\0\0\0\0"


async def test_undecodable_payload() -> None:
    await _raises(_call(_table(), _open(), 60, b"\0\0"), ErrorCode.RPC, ErrorDomain.RPC,
                  "Unable to decode message payload")


async def test_connection_not_open() -> None:
    await _raises(_call(_table(), FakeClient(), 157), ErrorCode.INTERNAL_ERROR, ErrorDomain.RPC,
                  "internal error: hypervisor connection not open")


async def test_no_handler_is_no_support_in_the_apis_domain() -> None:
    await _raises(_call(_table(), _open(), 157), ErrorCode.NO_SUPPORT, ErrorDomain.NONE,
                  "this function is not supported by the connection driver: "
                  "virConnectGetLibVersion")
    name = R.remote_domain_lookup_by_name_args_codec.encode(
        R.remote_domain_lookup_by_name_args("x"))
    await _raises(_call(_table(), _open(), 23, name), ErrorCode.NO_SUPPORT, ErrorDomain.DOMAIN,
                  "this function is not supported by the connection driver: "
                  "virDomainLookupByName")


async def test_readonly_denies_writes_before_no_support() -> None:
    xml = R.remote_domain_create_xml_args_codec.encode(R.remote_domain_create_xml_args("<d/>", 0))
    await _raises(_call(_table(), _open(readonly=True), 10, xml), ErrorCode.OPERATION_DENIED,
                  ErrorDomain.DOMAIN,
                  "operation forbidden: read only access prevents virDomainCreateXML")


async def test_readonly_secure_flag() -> None:
    async def domain_get_xml_desc(call: Call, args: Any) -> Any:
        return R.remote_domain_get_xml_desc_ret("<domain/>")

    t = _table(domain_get_xml_desc=domain_get_xml_desc)
    dom = R.remote_nonnull_domain("x", b"\1" * 16, -1)
    for flags, denied in ((0, False), (1, True), (8, True), (2, False)):
        body = R.remote_domain_get_xml_desc_args_codec.encode(
            R.remote_domain_get_xml_desc_args(dom, flags))
        if denied:
            await _raises(_call(t, _open(readonly=True), 14, body), ErrorCode.OPERATION_DENIED,
                          ErrorDomain.DOMAIN,
                          "operation forbidden: virDomainGetXMLDesc with secure flag")
        else:
            await _call(t, _open(readonly=True), 14, body)
        await _call(t, _open(readonly=False), 14, body)


def test_every_readonly_rule_resolves() -> None:
    for program in (programs.remote(), programs.qemu()):
        for proc in program.procedures.values():
            rule_for(proc)


def test_api_error_domains() -> None:
    assert api_error_domain("virConnectGetLibVersion") == ErrorDomain.NONE
    assert api_error_domain("virNodeGetInfo") == ErrorDomain.NONE
    assert api_error_domain("virDomainCreateXML") == ErrorDomain.DOMAIN
    assert api_error_domain("virConnectListAllDomains") == ErrorDomain.DOMAIN
    assert api_error_domain("virDomainInterfaceStats") == ErrorDomain.DOMAIN
    assert api_error_domain("virDomainSnapshotCreateXML") == ErrorDomain.DOMAIN_SNAPSHOT
    assert api_error_domain("virDomainQemuMonitorCommand") == ErrorDomain.DOM
    assert api_error_domain("virNetworkCreate") == ErrorDomain.NETWORK
    assert api_error_domain("virNWFilterUndefine") == ErrorDomain.NWFILTER
    assert api_error_domain("virConnectListAllNodeDevices") == ErrorDomain.NODEDEV
    assert api_error_domain("virStorageVolUpload") == ErrorDomain.STORAGE
    assert api_error_domain("virAdmConnectOpen") == ErrorDomain.ADMIN


def test_find_handlers_follows_the_naming_convention() -> None:
    handlers = find_handlers()
    assert "connect_open" in handlers and "connect_get_lib_version" in handlers
    assert all(not name.startswith("_") for name in handlers)
    known = {p.name.lower() for p in programs.remote().procedures.values()}
    qemu = {"qemu_" + p.name.lower() for p in programs.qemu().procedures.values()}
    admin = {"admin_" + p.name.lower() for p in programs.admin().procedures.values()}
    strays = set(handlers) - known - qemu - admin
    assert not strays, f"coroutines in daemon/remote that match no procedure: {strays}"


async def test_stream_procedure_gets_a_stream() -> None:
    seen = []

    async def storage_vol_download(call: Call, args: Any) -> None:
        seen.append(call.stream)

    client = _open()
    vol = R.remote_nonnull_storage_vol("p", "v", "k")
    body = R.remote_storage_vol_download_args_codec.encode(
        R.remote_storage_vol_download_args(vol, 0, 0, 0))
    await _call(_table(storage_vol_download=storage_vol_download), client, 209, body)
    assert seen[0] is not None and client.streams == seen
