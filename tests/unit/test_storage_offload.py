"""drivers/offload.py: hung work fails after the timeout, on its own lane only."""

from __future__ import annotations

import asyncio
import sys
import threading
import time

import pytest

from drivers import offload
from protocol.errors import ErrorCode, VirError


@pytest.fixture(autouse=True)
def short_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(offload, "TIMEOUT", 0.2)


def test_hung_lane_times_out_other_lanes_answer() -> None:
    release = threading.Event()

    async def main() -> None:
        hung = [asyncio.ensure_future(offload.run("/hung", release.wait)) for _ in range(6)]
        start = time.monotonic()
        assert await offload.run("/calm", lambda: 42) == 42
        assert time.monotonic() - start < 0.1
        for job in hung:
            with pytest.raises(VirError) as e:
                await job
            assert e.value.code == ErrorCode.OPERATION_TIMEOUT
            assert "Timed out during operation: no answer from '/hung'" in str(e.value)
        stuck = [t for t in threading.enumerate() if t.name == "offload /hung"]
        assert len(stuck) == offload.WORKERS  # what a hung pool holds, at most
        release.set()
        assert await offload.run("/hung", lambda: "back") == "back"

    asyncio.run(main())


def test_errors_reach_the_caller() -> None:
    async def main() -> None:
        with pytest.raises(FileNotFoundError):
            await offload.run("/x", open, "/nonexistent/file")
        assert await offload.run_long("/x", sum, [1, 2]) == 3

    asyncio.run(main())


def test_helper_killed_and_reaped_after_the_timeout() -> None:
    async def main() -> None:
        argv = (sys.executable, "-c", "import time; time.sleep(30)")
        proc = await asyncio.create_subprocess_exec(*argv)
        with pytest.raises(VirError) as e:
            await offload.communicate(proc, argv)
        assert e.value.code == ErrorCode.OPERATION_TIMEOUT
        assert proc.returncode is not None  # killed and reaped

    asyncio.run(main())
