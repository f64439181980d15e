"""``virsh pool-capabilities``: every pool type libvirt knows, its formats, and
whether this daemon has a backend for it."""

from __future__ import annotations

from collections.abc import Collection

_FILE = ("none", "raw", "dir", "bochs", "cloop", "dmg", "iso", "vpc", "vdi", "fat", "vhd",
         "ploop", "cow", "qcow", "qcow2", "qed", "vmdk")
_FS = ("auto", "ext2", "ext3", "ext4", "ufs", "iso9660", "udf", "gfs", "gfs2", "vfat", "hfs+",
       "xfs", "ocfs2", "vmfs")
_NETFS = ("auto", "nfs", "glusterfs", "cifs")
_LOGICAL = ("unknown", "lvm2")
_DISK = ("unknown", "dos", "dvh", "gpt", "mac", "bsd", "pc98", "sun", "lvm2")
_PARTITIONS = ("none", "linux", "fat16", "fat32", "linux-swap", "linux-lvm", "linux-raid",
               "extended")

Options = tuple[str, tuple[str, ...]] | None

#: Pool type -> (source format default and values, volume format default and values),
#: in libvirt's order.
_TYPES: tuple[tuple[str, Options, Options], ...] = (
    ("dir", None, ("raw", _FILE)),
    ("fs", ("auto", _FS), ("raw", _FILE)),
    ("netfs", ("auto", _NETFS), ("raw", _FILE)),
    ("logical", ("lvm2", _LOGICAL), None),
    ("disk", ("unknown", _DISK), ("none", _PARTITIONS)),
    ("iscsi", None, None),
    ("iscsi-direct", None, None),
    ("scsi", None, None),
    ("mpath", None, None),
    ("rbd", None, ("raw", ())),
    ("sheepdog", None, None),
    ("gluster", None, ("raw", _FILE)),
    ("zfs", None, None),
    ("vstorage", None, ("raw", _FILE)),
)


#: Pool type -> (default, values) of its ``<source><format type=.../>``, for the types that have one.
SOURCE_FORMATS: dict[str, tuple[str, tuple[str, ...]]] = {
    kind: pool_opts for kind, pool_opts, _ in _TYPES if pool_opts is not None}


def _options(tag: str, enum: str, options: Options) -> list[str]:
    if options is None:
        return []
    default, values = options
    return [f"    <{tag}>", f"      <defaultFormat type='{default}'/>",
            f"      <enum name='{enum}'>", *(f"        <value>{v}</value>" for v in values),
            "      </enum>", f"    </{tag}>"]


def pool_capabilities(supported: Collection[str]) -> str:
    lines = ["<storagepoolCapabilities>"]
    for kind, pool_opts, vol_opts in _TYPES:
        yes = "yes" if kind in supported else "no"
        lines.append(f"  <pool type='{kind}' supported='{yes}'>")
        lines += _options("poolOptions", "sourceFormatType", pool_opts)
        lines += _options("volOptions", "targetFormatType", vol_opts)
        lines.append("  </pool>")
    lines.append("</storagepoolCapabilities>")
    return "\n".join(lines) + "\n"
