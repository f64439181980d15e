"""Status files: what a restarted daemon reads back is what was written."""

from __future__ import annotations

from pathlib import Path

import pytest
from lxml import etree

from drivers.files import write_atomic
from drivers.qemu.domain import Paused, Running, State
from drivers.qemu.status import Status, format_status, parse_status


def _c14n(xml: str) -> bytes:
    return etree.tostring(etree.fromstring(xml), method="c14n")


DOMAIN = "<domain type='kvm'>\n  <name>a&amp;b</name>\n</domain>\n"


def test_round_trip() -> None:
    st = Status(
        state=State.PAUSED, reason=Paused.USER, pid=1234, monitor_path="/run/x y/m.sock",
        id=7, domain_xml=DOMAIN, vnc_port=5901, pty_paths={"serial0": "/dev/pts/3"},
        taps={"net0": "vnet0"},
    )
    text = format_status(st)
    assert "<domstatus state='paused' reason='user' pid='1234'>" in text
    back = parse_status(text)
    assert _c14n(back.domain_xml) == _c14n(DOMAIN)
    back.domain_xml = st.domain_xml
    assert back == st


def test_running_reason_names() -> None:
    st = Status(State.RUNNING, Running.UNPAUSED, 1, "/m", 1, DOMAIN)
    assert "reason='unpaused'" in format_status(st)
    assert parse_status(format_status(st)).reason == Running.UNPAUSED


@pytest.mark.parametrize("text", ["", "<x/>", "<domstatus state='running'/>", "<domstatus"])
def test_malformed(text: str) -> None:
    with pytest.raises((ValueError, KeyError)):
        parse_status(text)


def test_write_atomic_replaces(tmp_path: Path) -> None:
    path = tmp_path / "a.xml"
    write_atomic(path, "one")
    write_atomic(path, "two")
    assert path.read_text() == "two"
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["a.xml"]
