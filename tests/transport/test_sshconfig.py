"""Resolving SSH targets from ssh_config as ``ssh`` does: aliases, Include, first match, ProxyJump chains."""

from __future__ import annotations

import getpass
from pathlib import Path

import pytest

from aris_queue_mcp.errors import TransportError
from aris_queue_mcp.transport.sshconfig import SSHConfigResolver, Target, parse_target


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake $HOME with an empty ~/.ssh (paramiko and this module follow $HOME)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("ARIS_SSH_CONFIG", raising=False)
    (tmp_path / ".ssh").mkdir()
    return tmp_path


def _resolver(home: Path, text: str) -> SSHConfigResolver:
    path = home / ".ssh" / "config"
    path.write_text(text)
    return SSHConfigResolver(str(path))


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("gpu1", Target("gpu1")),
        ("alice@gpu1", Target("gpu1", "alice")),
        ("alice@10.0.0.5:2222", Target("10.0.0.5", "alice", 2222)),
        ("gpu1.example.org:22", Target("gpu1.example.org", None, 22)),
        ("ssh://bob@host:2200", Target("host", "bob", 2200)),
        ("ssh://host/", Target("host")),
        ("[::1]:2222", Target("::1", None, 2222)),
        ("bob@[fe80::1]", Target("fe80::1", "bob")),
        ("fe80::1", Target("fe80::1")),
    ],
)
def test_parse_target(target: str, expected: Target) -> None:
    assert parse_target(target) == expected


@pytest.mark.parametrize(
    "target", ["", "host:0", "host:99999", "host:ssh", "@host", "host name", "-oProxyCommand=x", "a;b"]
)
def test_parse_target_rejects(target: str) -> None:
    with pytest.raises(TransportError):
        parse_target(target)


def test_alias_resolves_every_option(home: Path) -> None:
    r = _resolver(
        home,
        """
Host gpu1
  HostName 10.0.0.5
  Port 2222
  User alice
  IdentityFile ~/.ssh/id_gpu
  IdentitiesOnly yes
  StrictHostKeyChecking accept-new
  UserKnownHostsFile ~/kh1 /etc/kh2
  ConnectTimeout 7
  ServerAliveInterval 11
""",
    )
    spec = r.resolve("gpu1")
    assert (spec.alias, spec.hostname, spec.port, spec.user) == ("gpu1", "10.0.0.5", 2222, "alice")
    assert spec.identity_files == [f"{home}/.ssh/id_gpu"]
    assert spec.identities_only and spec.accepts_new_host_keys
    assert spec.user_known_hosts_files == [f"{home}/kh1", "/etc/kh2"]
    assert (spec.connect_timeout, spec.server_alive_interval) == (7.0, 11)
    assert spec.host_key_name == "[10.0.0.5]:2222"
    assert spec.describe() == "gpu1 (alice@10.0.0.5:2222)"


def test_defaults_for_an_unknown_host(home: Path) -> None:
    spec = _resolver(home, "").resolve("plainhost")
    assert (spec.hostname, spec.port, spec.user) == ("plainhost", 22, getpass.getuser())
    assert spec.host_key_name == "plainhost"
    assert spec.user_known_hosts_files == [f"{home}/.ssh/known_hosts", f"{home}/.ssh/known_hosts2"]
    assert not spec.accepts_new_host_keys  # ssh's default "ask" means: refuse here
    assert spec.proxy_jump == [] and spec.proxy_command is None


def test_missing_config_file_is_fine(home: Path) -> None:
    assert SSHConfigResolver(str(home / "nope")).resolve("h").hostname == "h"


def test_target_user_and_port_beat_the_config(home: Path) -> None:
    r = _resolver(
        home, "Host gpu1\n  HostName 10.0.0.5\n  User alice\n  Port 2222\n  ProxyCommand nc %h %p %r\n"
    )
    spec = r.resolve("bob@gpu1:2200")
    assert (spec.hostname, spec.user, spec.port) == ("10.0.0.5", "bob", 2200)
    assert spec.proxy_command == "nc 10.0.0.5 2200 bob"


def test_first_match_wins(home: Path) -> None:
    r = _resolver(
        home,
        "Host gpu*\n  User first\n  Port 2000\n"
        "Host gpu1\n  User second\n  HostName h1\n"
        "Host *\n  User third\n",
    )
    spec = r.resolve("gpu1")
    assert (spec.user, spec.port, spec.hostname) == ("first", 2000, "h1")
    assert r.resolve("other").user == "third"


def test_include_globs_relative_to_dot_ssh_sorted_and_recursive(home: Path) -> None:
    conf_d = home / ".ssh" / "conf.d"
    conf_d.mkdir()
    (conf_d / "20-b.conf").write_text("Host b\n  HostName host-b\nHost shared\n  User from-b\n")
    (conf_d / "10-a.conf").write_text(
        "Include nested\nHost a\n  HostName host-a\nHost shared\n  User from-a\n"
    )
    (conf_d / "ignored.txt").write_text("Host b\n  HostName wrong\n")
    (home / ".ssh" / "nested").write_text("Host deep\n  HostName host-deep\n")
    r = _resolver(home, "Include conf.d/*.conf\nHost shared\n  User from-main\n  HostName shared-host\n")
    assert r.resolve("a").hostname == "host-a"
    assert r.resolve("b").hostname == "host-b"
    assert r.resolve("deep").hostname == "host-deep"
    # Included first, so 10-a.conf's value wins over 20-b.conf's and the main file's (ssh: first match wins).
    shared = r.resolve("shared")
    assert (shared.user, shared.hostname) == ("from-a", "shared-host")


def test_include_absolute_path_and_tilde(home: Path, tmp_path: Path) -> None:
    other = tmp_path / "elsewhere.conf"
    other.write_text("Host x\n  Port 2345\n")
    r = _resolver(home, f"Include {other}\nInclude ~/.ssh/missing-*.conf\n")
    assert r.resolve("x").port == 2345


def test_include_inside_host_block_is_conditional(home: Path) -> None:
    (home / ".ssh" / "work.conf").write_text("User worker\nHost *.corp\n  Port 2200\n")
    r = _resolver(
        home, "Host work-* *.corp\n  Include work.conf\n  HostName after-include\nHost *\n  User anyone\n"
    )
    w = r.resolve("work-1")
    # Lines after the Include still belong to the enclosing block.
    assert (w.user, w.port, w.hostname) == ("worker", 22, "after-include")
    assert r.resolve("db.corp").port == 2200
    # The included `Host *.corp` block applies only where the enclosing block matched too.
    other = r.resolve("other")
    assert (other.user, other.hostname) == ("anyone", "other")


def test_include_loop_is_reported(home: Path) -> None:
    r = _resolver(home, "Include config\n")
    with pytest.raises(TransportError, match="Include nested deeper"):
        r.resolve("h")


def test_env_var_selects_the_config(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = home / "alt_config"
    cfg.write_text("Host h\n  HostName from-env\n")
    monkeypatch.setenv("ARIS_SSH_CONFIG", str(cfg))
    r = SSHConfigResolver()
    assert r.config_path == str(cfg) and not r.use_system_config
    assert r.resolve("h").hostname == "from-env"


def test_known_hosts_paths_argument_overrides_config(home: Path) -> None:
    path = home / ".ssh" / "config"
    path.write_text("Host h\n  UserKnownHostsFile /from/config\n")
    spec = SSHConfigResolver(str(path), known_hosts_paths=["~/kh"]).resolve("h")
    assert spec.user_known_hosts_files == [f"{home}/kh"]


CHAIN = """
Host bastion
  HostName bastion.example.org
  User jumper
  ProxyJump outer
Host outer
  HostName outer.example.org
  Port 2022
Host inner
  HostName 10.1.0.1
  ProxyJump somewhere-else
Host gpu
  HostName 10.1.0.9
  ProxyJump bastion,root@inner:2200
Host direct
  ProxyJump none
  ProxyCommand nc %h %p
Host cmdfirst
  ProxyCommand nc %h %p
  ProxyJump bastion
Host jumpfirst
  ProxyJump bastion
  ProxyCommand nc %h %p
Host loop
  ProxyJump loop
"""


def test_proxyjump_chain(home: Path) -> None:
    spec = _resolver(home, CHAIN).resolve("gpu")
    first, second = spec.proxy_jump
    assert (first.alias, first.hostname, first.user) == ("bastion", "bastion.example.org", "jumper")
    # The first hop keeps its own ProxyJump from the config (resolved again, recursively)...
    assert [(h.hostname, h.port) for h in first.proxy_jump] == [("outer.example.org", 2022)]
    # ...later hops are reached through the previous one, whatever their own config says.
    assert (second.alias, second.hostname, second.user, second.port) == (
        "root@inner:2200",
        "10.1.0.1",
        "root",
        2200,
    )
    assert second.proxy_jump == []
    assert spec.describe().endswith("via bastion -> root@inner:2200)")


def test_proxyjump_none_and_ordering(home: Path) -> None:
    r = _resolver(home, CHAIN)
    direct = r.resolve("direct")
    assert direct.proxy_jump == [] and direct.proxy_command is None  # the first value, `none`, wins
    cmd = r.resolve("cmdfirst")
    assert cmd.proxy_command == "nc cmdfirst 22" and cmd.proxy_jump == []
    jump = r.resolve("jumpfirst")
    assert jump.proxy_command is None and [h.alias for h in jump.proxy_jump] == ["bastion"]


def test_proxyjump_loop_is_reported(home: Path) -> None:
    with pytest.raises(TransportError, match="ProxyJump chain deeper"):
        _resolver(home, CHAIN).resolve("loop")


def test_bad_numbers_are_reported(home: Path) -> None:
    with pytest.raises(TransportError, match="Port 'abc'"):
        _resolver(home, "Host h\n  Port abc\n").resolve("h")
