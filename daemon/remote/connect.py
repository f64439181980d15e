"""Connection-level calls: authentication list, open/close, features, host facts.

Host facts come from ``drivers.host``; hypervisor facts from the driver the
connection was opened with.
"""

from __future__ import annotations

import fcntl
import os
from typing import Any
from urllib.parse import urlsplit

from daemon.dispatch import Call, Connection
from daemon.remote._common import check_flags, rpc_limit
from drivers import host
from protocol.errors import ErrorCode, ErrorDomain, VirError
from protocol.programs import remote

R = remote().module

#: virConnectGetLibVersion: the libvirt release we speak for.
LIB_VERSION = 9000000

VIR_CONNECT_RO = 1

# VIR_DRV_FEATURE_* (libvirt_internal.h) we honestly support.
FEATURE_FD_PASSING = 8
FEATURE_TYPED_PARAM_STRING = 9
FEATURE_PROGRAM_KEEPALIVE = 10
FEATURE_REMOTE_EVENT_CALLBACK = 14
FEATURE_REMOTE_CLOSE_CALLBACK = 15
FEATURE_NETWORK_UPDATE_HAS_CORRECT_ORDER = 16
_FEATURES = frozenset({FEATURE_FD_PASSING, FEATURE_TYPED_PARAM_STRING,
                       FEATURE_PROGRAM_KEEPALIVE, FEATURE_REMOTE_EVENT_CALLBACK, FEATURE_REMOTE_CLOSE_CALLBACK,
                       FEATURE_NETWORK_UPDATE_HAS_CORRECT_ORDER})


async def auth_list(call: Call, args: None) -> Any:
    return R.remote_auth_list_ret([call.client.server.auth_for(call.client).wire_type])


async def connect_open(call: Call, args: Any) -> None:
    client = call.client
    if client.conn is not None:
        raise VirError(ErrorCode.INTERNAL_ERROR, "internal error: connection already open",
                       ErrorDomain.RPC)
    uri = _qemu_uri(args.name)
    driver = client.server.driver("qemu")
    if driver is None:
        raise VirError(ErrorCode.NO_CONNECT, f"no connection driver available for {uri}")
    readonly = client.identity.readonly or bool(args.flags & VIR_CONNECT_RO)
    client.conn = Connection(driver, uri, readonly, args.flags)


def _qemu_uri(name: str | None) -> str:
    """The canonical form of a URI the QEMU driver accepts, or libvirt's error."""
    if not name:
        return "qemu:///system"
    parts = urlsplit(name)
    if parts.scheme != "qemu" or parts.netloc:
        raise VirError(ErrorCode.NO_CONNECT, f"no connection driver available for {name}")
    if parts.path not in ("/system", "/session"):
        raise VirError(ErrorCode.INTERNAL_ERROR,
                       f"internal error: unexpected qemu URI path '{parts.path}', "
                       f"try qemu:///system")
    uri = f"qemu://{parts.path}"
    if parts.query:
        uri += "?" + parts.query
    return uri


async def connect_close(call: Call, args: None) -> None:
    client = call.client
    client.conn = None
    client.loop.call_soon(client.close)  # after the reply is queued


async def connect_supports_feature(call: Call, args: Any) -> Any:
    feature = args.feature
    if feature == FEATURE_PROGRAM_KEEPALIVE:
        call.client.keepalive.start()
    return R.remote_connect_supports_feature_ret(int(feature in _FEATURES))


async def connect_register_close_callback(call: Call, args: None) -> None:
    """The QEMU driver never closes a connection by itself: nothing to arm."""


async def connect_unregister_close_callback(call: Call, args: None) -> None:
    """See :func:`connect_register_close_callback`."""


async def connect_get_type(call: Call, args: None) -> Any:
    return R.remote_connect_get_type_ret("QEMU")


async def connect_get_version(call: Call, args: None) -> Any:
    return R.remote_connect_get_version_ret(call.driver.get_version())


async def connect_get_lib_version(call: Call, args: None) -> Any:
    return _LIB_VERSION_RET


_LIB_VERSION_RET = R.remote_connect_get_lib_version_ret(LIB_VERSION)


async def connect_get_hostname(call: Call, args: None) -> Any:
    return R.remote_connect_get_hostname_ret(host.hostname())


async def connect_get_uri(call: Call, args: None) -> Any:
    return R.remote_connect_get_uri_ret(call.conn.uri)  # type: ignore[union-attr]


async def connect_get_sysinfo(call: Call, args: Any) -> Any:
    check_flags(args.flags, 0, "qemuConnectGetSysinfo")
    return R.remote_connect_get_sysinfo_ret(host.sysinfo_xml())


async def connect_get_capabilities(call: Call, args: None) -> Any:
    return R.remote_connect_get_capabilities_ret(call.driver.capabilities())


async def connect_is_secure(call: Call, args: None) -> Any:
    # A Unix socket never leaves the host; TCP/TLS listeners will answer per transport.
    return R.remote_connect_is_secure_ret(int(call.client.identity.transport in ("unix", "tls")))


async def connect_get_max_vcpus(call: Call, args: Any) -> Any:
    kind = args.type
    if kind is None or kind.lower() == "qemu":
        count = 16
    elif kind.lower() == "kvm":
        count = _kvm_max_vcpus()
    else:
        raise VirError(ErrorCode.INVALID_ARG, f"invalid argument: unknown type '{kind}'",
                       ErrorDomain.QEMU)
    return R.remote_connect_get_max_vcpus_ret(count)


_KVM_CHECK_EXTENSION = 0xAE03
_KVM_CAP_NR_VCPUS = 9
_KVM_CAP_MAX_VCPUS = 66


def _kvm_max_vcpus() -> int:
    """What KVM supports, asked the way libvirt does (max, else recommended, else 4)."""
    try:
        fd = os.open("/dev/kvm", os.O_RDONLY)
    except OSError as e:
        raise VirError(ErrorCode.SYSTEM_ERROR,
                       f"Unable to open /dev/kvm: {os.strerror(e.errno or 0)}",
                       ErrorDomain.NONE) from None
    try:
        for cap in (_KVM_CAP_MAX_VCPUS, _KVM_CAP_NR_VCPUS):
            try:
                count = fcntl.ioctl(fd, _KVM_CHECK_EXTENSION, cap)
            except OSError:
                continue
            if count > 0:
                return count
        return 4
    finally:
        os.close(fd)


async def node_get_info(call: Call, args: None) -> Any:
    info = host.node_info()
    model = info.model.encode()[:31].ljust(32, b"\0")
    return R.remote_node_get_info_ret(model, info.memory, info.cpus, info.mhz, info.nodes,
                                      info.sockets, info.cores, info.threads)


async def node_get_free_memory(call: Call, args: None) -> Any:
    return R.remote_node_get_free_memory_ret(host.free_memory())


async def node_get_security_model(call: Call, args: None) -> Any:
    # libvirtd sends both strings with their C terminator.
    model, doi = call.driver.security_model()
    return R.remote_node_get_security_model_ret(model.encode() + b"\0", doi.encode() + b"\0")


async def node_get_cells_free_memory(call: Call, args: Any) -> Any:
    rpc_limit(args.maxcells, R.REMOTE_NODE_MAX_CELLS, "maxcells > REMOTE_NODE_MAX_CELLS")
    return R.remote_node_get_cells_free_memory_ret(
        host.cells_free_memory(args.startCell, args.maxcells))
