"""The test guest itself, booted by plain QEMU before the driver tests rely on it.

It must reach its banner and a shell on the serial console under TCG, run a
command, and power off by itself when QEMU presses the ACPI power button.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from qemu.qmp import QMPClient

from guest import BANNER, PROMPT, Guest, ensure_guest

pytestmark = pytest.mark.slow

BOOT_TIMEOUT = 60.0
COMMAND_TIMEOUT = 10.0
POWEROFF_TIMEOUT = 20.0


class Console:
    """The guest's serial port on QEMU's stdout, read up to what a test waits for."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.reader = reader
        self.output = bytearray()
        self.pos = 0  # everything before this was consumed by an earlier expect

    async def expect(self, pattern: bytes, timeout: float) -> re.Match[bytes]:
        regex = re.compile(pattern)
        async with asyncio.timeout(timeout):
            while (match := regex.search(self.output, self.pos)) is None:
                chunk = await self.reader.read(4096)
                if not chunk:
                    raise EOFError(f"QEMU closed the console before {pattern!r}: {self.output!r}")
                self.output += chunk
        self.pos = match.end()
        return match


@pytest.fixture(scope="module")
def guest() -> Guest:
    return ensure_guest()


@pytest.fixture(params=["pc", "q35"])
def machine(request: pytest.FixtureRequest) -> str:
    """Both x86 machine types: their ACPI hardware differs (PIIX4 and ICH9)."""
    return str(request.param)


@pytest.fixture
async def qemu(guest: Guest, machine: str,
               tmp_path: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    """QEMU booting the guest, serial on stdio, QMP on ``tmp_path/qmp.sock``; killed at teardown."""
    argv = [
        "qemu-system-x86_64", "-accel", "tcg", "-machine", machine, "-m", "128",
        "-nodefaults", "-nographic", "-serial", "stdio", "-no-reboot",
        "-qmp", f"unix:{tmp_path / 'qmp.sock'},server=on,wait=off",
        "-kernel", str(guest.kernel), "-initrd", str(guest.initrd), "-append", guest.cmdline,
    ]
    with open(tmp_path / "qemu.log", "wb") as log:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log)
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_boot_shell_and_acpi_poweroff(
        qemu: asyncio.subprocess.Process, machine: str, tmp_path: Path) -> None:
    assert qemu.stdin is not None and qemu.stdout is not None
    start = time.monotonic()
    console = Console(qemu.stdout)
    await console.expect(re.escape(BANNER.encode()), BOOT_TIMEOUT)
    booted = time.monotonic() - start
    await console.expect(re.escape(PROMPT.encode()), COMMAND_TIMEOUT)
    assert b"insmod" not in console.output, console.output.decode(errors="replace")

    qemu.stdin.write(b"echo hi\n")
    # The tty echoes the command line itself; the output is a line of its own.
    await console.expect(rb"\nhi\r\n", COMMAND_TIMEOUT)

    qmp = QMPClient("test-guest")
    await qmp.connect(str(tmp_path / "qmp.sock"))
    try:
        with qmp.listener("SHUTDOWN") as shutdown:
            pressed = time.monotonic()
            await qmp.execute("system_powerdown")
            async with asyncio.timeout(POWEROFF_TIMEOUT):
                event = await shutdown.get()
                returncode = await qemu.wait()
        stopped = time.monotonic() - pressed
    finally:
        # QEMU closing the monitor as it exits surfaces here as EOFError: expected.
        with contextlib.suppress(EOFError):
            await qmp.disconnect()
    assert event["data"] == {"guest": True, "reason": "guest-shutdown"}
    assert returncode == 0
    print(f"\n{machine}: banner after {booted:.2f} s, powered off {stopped:.2f} s after the button")
