"""virt-install --import through aiovirtd: guests whose disk is a volume of the default pool.

virt-install (Debian's virtinst, on Debian's libvirt-python) drives the daemon
as it would libvirtd: it looks the pool and volume up, creates the volume when
asked for a size, defines and starts the guest. The guests run on TCG with a
blank disk; nothing boots, which is all the import needs.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from e2e.daemon import DaemonProcess

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("virt-install") is None,
                       reason="virt-install (virtinst) is not installed"),
]

TIMEOUT = 120


def _install(d: DaemonProcess, name: str, disk: str) -> None:
    res = subprocess.run(
        ["virt-install", "--connect", d.uri, "--import", "--name", name, "--memory", "128",
         "--disk", disk, "--osinfo", "detect=on,require=off", "--virt-type", "qemu",
         "--network", "none", "--graphics", "none", "--noautoconsole"],
        capture_output=True, text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Domain creation completed." in res.stdout


def _validate(tmp_path: Path, xml: str, schema: str) -> None:
    path = tmp_path / f"{schema}.xml"
    path.write_text(xml)
    res = subprocess.run(["virt-xml-validate", str(path), schema], capture_output=True,
                         text=True, check=False)
    assert res.returncode == 0, res.stdout + res.stderr


def test_import_onto_existing_and_new_volumes(daemon: DaemonProcess, tmp_path: Path) -> None:
    images = daemon.root / "var/lib/libvirt/images"
    daemon.virsh("vol-create-as", "default", "vi1.qcow2", "64M", "--format", "qcow2")
    names = ("vi1", "vi2")
    try:
        _install(daemon, "vi1", "vol=default/vi1.qcow2")
        # A new volume virt-install asks the pool for: qcow2 with lazy refcounts.
        _install(daemon, "vi2", "pool=default,size=0.05,format=qcow2")
        for name, vol in (("vi1", "vi1.qcow2"), ("vi2", "vi2.qcow2")):
            assert daemon.virsh("domstate", name).stdout.strip() == "running"
            xml = daemon.virsh("dumpxml", name).stdout
            _validate(tmp_path, xml, "domain")
            assert "<driver name='qemu' type='qcow2'" in xml
            assert f"<source file='{images}/{vol}' index='1'/>" in xml
        vol = daemon.virsh("vol-dumpxml", "--pool", "default", "vi2.qcow2").stdout
        _validate(tmp_path, vol, "storagevol")
        assert "<compat>1.1</compat>" in vol and "<lazy_refcounts/>" in vol
        # Given by path, the volumes are still in use by the guests.
        res = daemon.virsh("pool-destroy", "default", check=False)
        assert res.returncode != 0
        assert "has volume 'vi1.qcow2' in use by running domain 'vi1'" in res.stderr
    finally:
        for name in names:
            daemon.virsh("destroy", name, check=False)
            daemon.virsh("undefine", name, check=False)
