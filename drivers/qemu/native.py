"""``virsh domxml-to-native qemu-argv``: the command line a definition would start with.

The driver's own pieces are used as a start uses them (parser, firmware choice,
command builder, environment), with the paths of a domain that has no id yet
(libvirtd shows ``-1`` there too). Nothing is created on disk: no NVRAM, no taps.
"""

from __future__ import annotations

import shlex

from drivers.qemu import command, domain_xml
from drivers.qemu.domain_xml.firmware import select_firmware

FORMAT = "qemu-argv"


def to_native(driver, xml: str) -> str:  # type: ignore[no-untyped-def]
    """``ENV=... /usr/bin/qemu-system-x86_64 -name ...`` on one line, shell-quoted."""
    d = domain_xml.parse(xml, driver.caps)
    dirs = driver.dirs
    select_firmware(d, str(dirs.lib_dir / "nvram"))
    argv = command.build_argv(
        d,
        driver.caps,
        monitor_path=str(dirs.state_dir / f"{d.uuid}.monitor"),
        pidfile=str(dirs.state_dir / f"{d.name}.pid"),
        channel_dir=str(driver._channel_dir(-1, d.name)),
    )
    env = [f"{k}={shlex.quote(v)}" for k, v in driver._env(d).items()]
    return " ".join(env + [shlex.quote(word) for word in argv])
