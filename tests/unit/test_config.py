"""daemon.config: virconf syntax, libvirtd defaults, typed settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.config import Config, ConfigError, parse


def test_syntax() -> None:
    text = '''# a comment
    a = 1   # trailing comment
    b = "two words"
    c = [ "x",
          "y" ,
        ]
    d = 'single'; e = -3
    f = """multi
line"""
    g = []
    '''
    assert parse(text) == {"a": 1, "b": "two words", "c": ["x", "y"], "d": "single",
                           "e": -3, "f": "multi\nline", "g": []}


def test_later_assignment_wins() -> None:
    assert parse("a = 1\na = 2\n") == {"a": 2}


@pytest.mark.parametrize("text, line", [
    ("a = \n", 1), ("a 1\n", 1), ("\n\n= 1\n", 3), ("a = [1 2]\n", 1),
    ('a = "open\n', 1), ("a = 1 2\n", 1), ("a = @\n", 1),
])
def test_syntax_errors_name_the_line(text: str, line: int) -> None:
    with pytest.raises(ConfigError, match=f"f.conf:{line}: configuration file syntax error"):
        parse(text, "f.conf")


def test_defaults_are_libvirtds() -> None:
    c = Config()
    assert (c.max_clients, c.max_client_requests) == (5000, 5)
    assert (c.keepalive_interval, c.keepalive_count) == (5, 5)
    assert (c.unix_sock_ro_perms, c.unix_sock_rw_perms, c.unix_sock_admin_perms) == \
        ("0777", "0700", "0700")
    assert c.unix_sock_dir is None and c.unix_sock_group is None
    assert c.log_level == 3


def test_settings_and_unknown_keys() -> None:
    c = Config.from_text('''
        unix_sock_group = "kvm"
        unix_sock_rw_perms = "0770"
        max_clients = 10
        keepalive_interval = -1
        listen_tls = 0            # libvirtd knows it, we ignore it
        tls_allowed_dn_list = ["a", "b"]
        log_outputs = "3:stderr"
    ''')
    assert c.unix_sock_group == "kvm"
    assert c.mode("unix_sock_rw_perms") == 0o770
    assert c.max_clients == 10 and c.keepalive_interval == -1
    assert c.log_outputs == "3:stderr"


def test_type_errors() -> None:
    with pytest.raises(ConfigError, match="expected an integer for 'max_clients'"):
        Config.from_text('max_clients = "ten"')
    with pytest.raises(ConfigError, match="expected a string for 'unix_sock_group'"):
        Config.from_text("unix_sock_group = 5")
    with pytest.raises(ConfigError, match="Failed to parse mode '0999'"):
        Config.from_text('unix_sock_ro_perms = "0999"')


def test_load(tmp_path: Path) -> None:
    f = tmp_path / "libvirtd.conf"
    f.write_text("max_client_requests = 20\n")
    assert Config.load(f).max_client_requests == 20
    with pytest.raises(ConfigError, match="cannot read"):
        Config.load(tmp_path / "missing.conf")


def test_hosts_libvirtd_conf_parses() -> None:
    path = Path("/etc/libvirt/libvirtd.conf")
    if not path.exists():
        pytest.skip("no libvirtd.conf on this host")
    Config.load(path)
