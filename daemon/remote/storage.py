"""Storage pool and volume calls of the REMOTE program.

libvirtd serves these from its storage driver on the same connection a client
opened for QEMU; here that is the server's ``storage`` driver. A pool handle is
looked up by UUID, a volume handle by its pool's name and its own name.
"""

from __future__ import annotations

from typing import Any

from daemon.dispatch import Call
from daemon.remote._common import check_flags, server_driver
from drivers.storage.capabilities import pool_capabilities
from drivers.storage.driver import StorageDriver
from drivers.storage.pool import BACKENDS, STATE_INACTIVE, STATE_RUNNING, Pool
from drivers.storage.vol_xml import VOL_TYPES, Volume, format_vol
from protocol.errors import ErrorCode, ErrorDomain, VirError
from protocol.programs import remote

R = remote().module

_XML_INACTIVE = 1 << 0
_VOL_CREATE_FLAGS = (1 << 0) | (1 << 2)  # PREALLOC_METADATA, VALIDATE
_VOL_INFO_PHYSICAL = 1 << 0


def _driver(call: Call) -> StorageDriver:
    return server_driver(call, "storage")


def _check_flags(flags: int, allowed: int, api: str) -> None:
    check_flags(flags, allowed, api, ErrorDomain.STORAGE)


def _pool_handle(pool: Pool) -> Any:
    return R.remote_nonnull_storage_pool(pool.name, pool.uuid)


def _vol_handle(pool: Pool, vol: Volume) -> Any:
    return R.remote_nonnull_storage_vol(pool.name, vol.name, vol.key)


def _pool(call: Call, handle: Any) -> Pool:
    return _driver(call).lookup_by_uuid(handle.uuid, handle.name)


def _vol(call: Call, handle: Any) -> tuple[Pool, Volume]:
    driver = _driver(call)
    pool = driver.lookup_by_name(handle.pool)
    return pool, driver.volume(pool, handle.name)


# -- pools: lists and lookups ------------------------------------------------------


async def connect_list_all_storage_pools(call: Call, args: Any) -> Any:
    _check_flags(args.flags, (1 << 20) - 1, "storageConnectListAllStoragePools")
    pools = _driver(call).list_pools(args.flags)
    handles = [_pool_handle(p) for p in pools] if args.need_results else []
    return R.remote_connect_list_all_storage_pools_ret(handles, len(pools))


def _names(call: Call, active: bool, limit: int) -> list[str]:
    if limit > R.REMOTE_STORAGE_POOL_LIST_MAX:
        raise VirError(ErrorCode.RPC, "maxnames > REMOTE_STORAGE_POOL_LIST_MAX", ErrorDomain.RPC)
    names = [p.name for p in _driver(call).list_pools() if p.active == active]
    return names[: max(limit, 0)]


async def connect_num_of_storage_pools(call: Call, args: None) -> Any:
    return R.remote_connect_num_of_storage_pools_ret(len(_names(call, True, 1 << 16)))


async def connect_num_of_defined_storage_pools(call: Call, args: None) -> Any:
    return R.remote_connect_num_of_defined_storage_pools_ret(len(_names(call, False, 1 << 16)))


async def connect_list_storage_pools(call: Call, args: Any) -> Any:
    return R.remote_connect_list_storage_pools_ret(_names(call, True, args.maxnames))


async def connect_list_defined_storage_pools(call: Call, args: Any) -> Any:
    return R.remote_connect_list_defined_storage_pools_ret(_names(call, False, args.maxnames))


async def storage_pool_lookup_by_name(call: Call, args: Any) -> Any:
    pool = _driver(call).lookup_by_name(args.name)
    return R.remote_storage_pool_lookup_by_name_ret(_pool_handle(pool))


async def storage_pool_lookup_by_uuid(call: Call, args: Any) -> Any:
    pool = _driver(call).lookup_by_uuid(args.uuid)
    return R.remote_storage_pool_lookup_by_uuid_ret(_pool_handle(pool))


async def storage_pool_lookup_by_target_path(call: Call, args: Any) -> Any:
    pool = _driver(call).lookup_by_target_path(args.path)
    return R.remote_storage_pool_lookup_by_target_path_ret(_pool_handle(pool))


async def storage_pool_lookup_by_volume(call: Call, args: Any) -> Any:
    pool, _ = _vol(call, args.vol)
    return R.remote_storage_pool_lookup_by_volume_ret(_pool_handle(pool))


async def connect_find_storage_pool_sources(call: Call, args: Any) -> Any:
    _check_flags(args.flags, 0, "storageConnectFindStoragePoolSources")
    xml = await _driver(call).find_sources(args.type, args.srcSpec)
    return R.remote_connect_find_storage_pool_sources_ret(xml)


async def connect_get_storage_pool_capabilities(call: Call, args: Any) -> Any:
    _check_flags(args.flags, 0, "storageConnectGetStoragePoolCapabilities")
    return R.remote_connect_get_storage_pool_capabilities_ret(pool_capabilities(BACKENDS))


# -- pools: definitions and life cycle -------------------------------------------------


async def storage_pool_define_xml(call: Call, args: Any) -> Any:
    _check_flags(args.flags, 1 << 0, "storagePoolDefineXML")  # VALIDATE
    pool = _driver(call).define_xml(args.xml, args.flags)
    return R.remote_storage_pool_define_xml_ret(_pool_handle(pool))


async def storage_pool_create_xml(call: Call, args: Any) -> Any:
    _check_flags(args.flags, 0x7, "storagePoolCreateXML")
    pool = await _driver(call).create_xml(args.xml, args.flags)
    return R.remote_storage_pool_create_xml_ret(_pool_handle(pool))


async def storage_pool_undefine(call: Call, args: Any) -> None:
    _driver(call).undefine(_pool(call, args.pool))


async def storage_pool_build(call: Call, args: Any) -> None:  # the backend checks flags
    await _driver(call).build(_pool(call, args.pool), args.flags)


async def storage_pool_create(call: Call, args: Any) -> None:
    _check_flags(args.flags, 0x7, "storagePoolCreate")
    await _driver(call).create(_pool(call, args.pool), args.flags)


async def storage_pool_destroy(call: Call, args: Any) -> None:
    await _driver(call).destroy(_pool(call, args.pool))


async def storage_pool_delete(call: Call, args: Any) -> None:  # the backend checks flags
    await _driver(call).delete(_pool(call, args.pool), args.flags)


async def storage_pool_refresh(call: Call, args: Any) -> None:
    _check_flags(args.flags, 0, "storagePoolRefresh")
    await _driver(call).refresh(_pool(call, args.pool))


# -- pools: facts --------------------------------------------------------------------------


async def storage_pool_get_info(call: Call, args: Any) -> Any:
    """A stopped pool still gives the sizes of its last refresh, as libvirtd's does
    (virsh shows them as "-")."""
    pool = _pool(call, args.pool)
    s = pool.scan.sizes
    return R.remote_storage_pool_get_info_ret(STATE_RUNNING if pool.active else STATE_INACTIVE,
                                              s.capacity, s.allocation, s.available)


async def storage_pool_get_xml_desc(call: Call, args: Any) -> Any:
    _check_flags(args.flags, _XML_INACTIVE, "storagePoolGetXMLDesc")
    xml = _pool(call, args.pool).xml(inactive=bool(args.flags & _XML_INACTIVE))
    return R.remote_storage_pool_get_xml_desc_ret(xml)


async def storage_pool_get_autostart(call: Call, args: Any) -> Any:
    return R.remote_storage_pool_get_autostart_ret(int(_pool(call, args.pool).autostart))


async def storage_pool_set_autostart(call: Call, args: Any) -> None:
    _driver(call).set_autostart(_pool(call, args.pool), bool(args.autostart))


async def storage_pool_is_active(call: Call, args: Any) -> Any:
    return R.remote_storage_pool_is_active_ret(int(_pool(call, args.pool).active))


async def storage_pool_is_persistent(call: Call, args: Any) -> Any:
    return R.remote_storage_pool_is_persistent_ret(int(_pool(call, args.pool).persistent))


# -- pools: their volumes ------------------------------------------------------------------


def _active_volumes(call: Call, handle: Any) -> tuple[Pool, list[Volume]]:
    pool = _pool(call, handle)
    if not pool.active:
        raise VirError(ErrorCode.OPERATION_INVALID,
                       f"Requested operation is not valid: storage pool '{pool.name}' is not active",
                       ErrorDomain.STORAGE)
    return pool, list(pool.volumes.values())


async def storage_pool_num_of_volumes(call: Call, args: Any) -> Any:
    return R.remote_storage_pool_num_of_volumes_ret(len(_active_volumes(call, args.pool)[1]))


async def storage_pool_list_volumes(call: Call, args: Any) -> Any:
    if args.maxnames > R.REMOTE_STORAGE_VOL_LIST_MAX:
        raise VirError(ErrorCode.RPC, "maxnames > REMOTE_STORAGE_VOL_LIST_MAX", ErrorDomain.RPC)
    vols = _active_volumes(call, args.pool)[1]
    return R.remote_storage_pool_list_volumes_ret([v.name for v in vols][: max(args.maxnames, 0)])


async def storage_pool_list_all_volumes(call: Call, args: Any) -> Any:
    _check_flags(args.flags, 0, "storagePoolListAllVolumes")
    pool, vols = _active_volumes(call, args.pool)
    handles = [_vol_handle(pool, v) for v in vols] if args.need_results else []
    return R.remote_storage_pool_list_all_volumes_ret(handles, len(vols))


# -- volumes -----------------------------------------------------------------------------------


async def storage_vol_lookup_by_name(call: Call, args: Any) -> Any:
    driver = _driver(call)
    pool = _pool(call, args.pool)
    vol = driver.volume(pool, args.name)
    return R.remote_storage_vol_lookup_by_name_ret(_vol_handle(pool, vol))


async def storage_vol_lookup_by_key(call: Call, args: Any) -> Any:
    pool, vol = _driver(call).lookup_vol_by_key(args.key)
    return R.remote_storage_vol_lookup_by_key_ret(_vol_handle(pool, vol))


async def storage_vol_lookup_by_path(call: Call, args: Any) -> Any:
    pool, vol = _driver(call).lookup_vol_by_path(args.path)
    return R.remote_storage_vol_lookup_by_path_ret(_vol_handle(pool, vol))


async def storage_vol_create_xml(call: Call, args: Any) -> Any:
    _check_flags(args.flags, _VOL_CREATE_FLAGS, "storageVolCreateXML")
    pool = _pool(call, args.pool)
    vol = await _driver(call).create_vol(pool, args.xml, args.flags)
    return R.remote_storage_vol_create_xml_ret(_vol_handle(pool, vol))


async def storage_vol_create_xml_from(call: Call, args: Any) -> Any:
    _check_flags(args.flags, _VOL_CREATE_FLAGS, "storageVolCreateXMLFrom")
    pool = _pool(call, args.pool)
    source_pool, source = _vol(call, args.clonevol)
    vol = await _driver(call).create_vol_from(pool, args.xml, source_pool, source, args.flags)
    return R.remote_storage_vol_create_xml_from_ret(_vol_handle(pool, vol))


async def storage_vol_delete(call: Call, args: Any) -> None:
    _check_flags(args.flags, 0, "storageVolDelete")
    pool, vol = _vol(call, args.vol)
    await _driver(call).delete_vol(pool, vol, args.flags)


async def storage_vol_resize(call: Call, args: Any) -> None:
    _check_flags(args.flags, 0x7, "storageVolResize")
    pool, vol = _vol(call, args.vol)
    await _driver(call).resize_vol(pool, vol, args.capacity, args.flags)


async def storage_vol_wipe(call: Call, args: Any) -> None:
    _check_flags(args.flags, 0, "storageVolWipe")
    pool, vol = _vol(call, args.vol)
    await _driver(call).wipe_vol(pool, vol, 0)


async def storage_vol_wipe_pattern(call: Call, args: Any) -> None:
    _check_flags(args.flags, 0, "storageVolWipePattern")
    pool, vol = _vol(call, args.vol)
    await _driver(call).wipe_vol(pool, vol, args.algorithm)


_SPARSE_STREAM = 1 << 0


async def storage_vol_download(call: Call, args: Any) -> None:
    _check_flags(args.flags, _SPARSE_STREAM, "storageVolDownload")
    pool, vol = _vol(call, args.vol)
    await _driver(call).check_stream(vol, upload=False)
    stream = call.stream
    assert stream is not None
    stream.sparse = bool(args.flags & _SPARSE_STREAM)
    stream.late_errors = True  # a failed read is reported at the client's finish
    stream.serve(_driver(call).download_vol(pool, vol, args.offset, args.length, stream.sparse,
                                            stream.send, stream.send_hole))


async def storage_vol_upload(call: Call, args: Any) -> None:
    _check_flags(args.flags, _SPARSE_STREAM, "storageVolUpload")
    pool, vol = _vol(call, args.vol)
    await _driver(call).check_stream(vol, upload=True)
    stream = call.stream
    assert stream is not None
    stream.sparse = bool(args.flags & _SPARSE_STREAM)
    stream.serve(_driver(call).upload_vol(pool, vol, args.offset, args.length, stream.recv,
                                          sparse=stream.sparse))


async def _fresh(call: Call, handle: Any) -> Volume:
    pool, vol = _vol(call, handle)
    return await _driver(call).refresh_vol(pool, vol)


async def storage_vol_get_info(call: Call, args: Any) -> Any:
    vol = await _fresh(call, args.vol)
    return R.remote_storage_vol_get_info_ret(VOL_TYPES[vol.type], vol.capacity,
                                             vol.allocation or 0)


async def storage_vol_get_info_flags(call: Call, args: Any) -> Any:
    _check_flags(args.flags, _VOL_INFO_PHYSICAL, "storageVolGetInfoFlags")
    vol = await _fresh(call, args.vol)
    alloc = vol.physical if args.flags & _VOL_INFO_PHYSICAL else vol.allocation
    return R.remote_storage_vol_get_info_flags_ret(VOL_TYPES[vol.type], vol.capacity, alloc or 0)


async def storage_vol_get_xml_desc(call: Call, args: Any) -> Any:
    _check_flags(args.flags, 0, "storageVolGetXMLDesc")
    return R.remote_storage_vol_get_xml_desc_ret(format_vol(await _fresh(call, args.vol)))


async def storage_vol_get_path(call: Call, args: Any) -> Any:
    return R.remote_storage_vol_get_path_ret(_vol(call, args.vol)[1].path)
