"""The cgroups of one guest, for the tuning calls (cpu, memory, blkio/io).

The driver puts each QEMU in a CPU cgroup of its own at start
(``machine/qemu-UUID.aiovirtd``). Memory and block I/O limits need the guest
in those controllers' hierarchies too: on cgroup v1 they are separate trees
the guest joins the first time a limit is set; on v2 it is the same directory
with the controller switched on for its children.
"""

from __future__ import annotations

from pathlib import Path

# Where cgroup file systems are mounted (tests point it at a fake tree).
ROOT = Path("/sys/fs/cgroup")


def is_v2() -> bool:
    return (ROOT / "cgroup.controllers").exists()


def available(controller: str) -> bool:
    """Whether ``controller`` (v1 name: cpu, memory, blkio) can be used here."""
    if is_v2():
        name = {"blkio": "io"}.get(controller, controller)
        try:
            return name in (ROOT / "cgroup.controllers").read_text().split()
        except OSError:
            return False
    return (ROOT / controller / "cgroup.procs").exists()


def group_name(uuid: str) -> str:
    return f"qemu-{uuid}.aiovirtd"


def path(controller: str, uuid: str) -> Path:
    """The guest's directory for ``controller`` (it may not exist yet)."""
    base = ROOT if is_v2() else ROOT / controller
    return base / "machine" / group_name(uuid)


def join(controller: str, uuid: str, pid: int) -> Path:
    """The guest's group for ``controller``, with QEMU in it; made on first use."""
    group = path(controller, uuid)
    if is_v2():
        name = {"blkio": "io"}.get(controller, controller)
        (ROOT / "machine").mkdir(exist_ok=True)
        for parent in (ROOT, ROOT / "machine"):
            (parent / "cgroup.subtree_control").write_text(f"+{name}")
        if not group.exists():
            group.mkdir(parents=True)
            (group / "cgroup.procs").write_text(str(pid))
        return group
    if not group.exists():
        group.mkdir(parents=True)
    if str(pid) not in (group / "cgroup.procs").read_text().split():
        (group / "cgroup.procs").write_text(str(pid))
    return group


def read(group: Path, name: str) -> str | None:
    try:
        return (group / name).read_text().strip()
    except OSError:
        return None


def write(group: Path, name: str, value: str) -> None:
    (group / name).write_text(value)


def listing(base: Path, pattern: str) -> list[Path]:
    """``base.glob(pattern)``, empty when a group vanishes while we look: other
    daemons' guests come and go under the same /machine partition."""
    try:
        return list(base.glob(pattern))
    except OSError:
        return []


def extra_dirs(uuid: str) -> list[Path]:
    """What the tuning calls may have made for a guest besides its CPU group,
    children first: they must go before the guest's own groups can."""
    if is_v2():
        return []
    threads = [p for c in ("cpu", "cpuacct") for p in listing(path(c, uuid), "*") if p.is_dir()]
    return [*threads, *(path(c, uuid) for c in ("cpuacct", "memory", "blkio"))]


def sweep() -> None:
    """Remove the empty v1 groups of guests that are gone: their thread groups
    (so that the driver can then remove their CPU groups), cpuacct, memory and blkio."""
    if is_v2():
        return
    doomed = [
        *listing(ROOT / "cpu" / "machine", group_name("*") + "/*"),
        *listing(ROOT / "cpuacct" / "machine", group_name("*") + "/*"),
    ]
    for controller in ("cpuacct", "memory", "blkio"):
        doomed += listing(ROOT / controller / "machine", group_name("*"))
    for group in doomed:
        try:
            group.rmdir()
        except OSError:
            pass  # not a directory, or still in use
