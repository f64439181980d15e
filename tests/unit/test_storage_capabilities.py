"""Pool capabilities: libvirtd's document, with our backends marked supported."""

from __future__ import annotations

from lxml import etree

from drivers.storage.capabilities import pool_capabilities


def test_every_type_listed_in_libvirt_order_with_support() -> None:
    doc = etree.fromstring(pool_capabilities({"dir"}).encode())
    pools = [(p.get("type"), p.get("supported")) for p in doc.findall("pool")]
    assert pools[:3] == [("dir", "yes"), ("fs", "no"), ("netfs", "no")]
    assert [t for t, _ in pools][5:] == ["iscsi", "iscsi-direct", "scsi", "mpath", "rbd",
                                         "sheepdog", "gluster", "zfs", "vstorage"]


def test_dir_volume_formats() -> None:
    text = pool_capabilities({"dir"})
    assert text.startswith("<storagepoolCapabilities>\n  <pool type='dir' supported='yes'>\n"
                           "    <volOptions>\n      <defaultFormat type='raw'/>\n"
                           "      <enum name='targetFormatType'>\n        <value>none</value>\n")
    doc = etree.fromstring(text.encode())
    assert doc.find("pool[@type='logical']/poolOptions/defaultFormat").get("type") == "lvm2"
    assert doc.find("pool[@type='rbd']/volOptions/enum").findall("value") == []
