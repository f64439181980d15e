"""One QEMU process: log format, CPU time, launch, events, exit detection, re-attach."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from drivers.qemu.domain import process_cpu_time
from drivers.qemu.process import QemuProcess, format_command, pid_alive
from protocol.errors import VirError

QEMU = "/usr/bin/qemu-system-x86_64"
def needs_qemu(test):  # type: ignore[no-untyped-def]
    """These start a real QEMU: quick, but not "no QEMU", so they count as slow."""
    skip = pytest.mark.skipif(not os.path.exists(QEMU), reason="no QEMU")
    return pytest.mark.slow(skip(test))


def test_format_command_one_option_per_line() -> None:
    text = format_command({"LC_ALL": "C"}, [QEMU, "-name", "guest=a b", "-S", "-m", "64"])
    assert text == f"LC_ALL=C \\\n{QEMU} \\\n-name 'guest=a b' \\\n-S \\\n-m 64\n"


def test_cpu_time_and_liveness() -> None:
    sum(range(200_000))
    assert process_cpu_time(os.getpid()) > 0
    assert pid_alive(os.getpid())
    assert process_cpu_time(2**22 + 7) == 0 and not pid_alive(2**22 + 7)


def argv(monitor: str, *extra: str) -> list[str]:
    return [
        QEMU, "-S", "-machine", "none", "-nodefaults", "-display", "none",
        "-chardev", f"socket,id=charmonitor,path={monitor},server=on,wait=off",
        "-mon", "chardev=charmonitor,id=monitor,mode=control", *extra,
    ]


async def launch(tmp_path: Path, events: list, exits: list, *extra: str) -> QemuProcess:
    monitor = str(tmp_path / "m.sock")
    return await QemuProcess.launch(
        argv(monitor, *extra), name="t", monitor_path=monitor, log_path=tmp_path / "t.log",
        env={"LC_ALL": "C"}, on_event=lambda n, d: events.append(n),
        on_exit=lambda p: exits.append(p.pid), header="starting up test", timeout=10,
    )


@needs_qemu
async def test_launch_events_kill(tmp_path: Path) -> None:
    events: list = []
    exits: list = []
    proc = await launch(tmp_path, events, exits)
    assert (await proc.monitor.execute("query-status"))["status"] == "prelaunch"
    await proc.monitor.execute("cont")
    await proc.monitor.execute("stop")
    assert events[:2] == ["RESUME", "STOP"]
    assert await proc.kill(graceful=True)
    await proc.monitor.close()
    assert exits == [proc.pid] and "SHUTDOWN" in events
    log = (tmp_path / "t.log").read_text()
    assert ": starting up test\nLC_ALL=C \\\n" in log


@needs_qemu
async def test_sigkill_seen_and_reattach(tmp_path: Path) -> None:
    exits: list = []
    proc = await launch(tmp_path, [], exits)
    await proc.detach()  # as a daemon going away
    again = await QemuProcess.attach("t", proc.pid, proc.monitor_path, lambda n, d: None,
                                     lambda p: exits.append(p.pid))
    assert (await again.monitor.execute("query-status"))["running"] is False
    os.kill(proc.pid, signal.SIGKILL)
    await asyncio.wait_for(asyncio.shield(again.exited), 5)
    await again.monitor.close()
    assert exits == [proc.pid]


@needs_qemu
async def test_failed_start_reports_qemu_words(tmp_path: Path) -> None:
    with pytest.raises(VirError) as info:
        await launch(tmp_path, [], [], "-no-such-option")
    assert "process exited while connecting to monitor" in info.value.message
    assert "no-such-option" in info.value.message
