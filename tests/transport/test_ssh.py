"""SSHTransport against a real OpenSSH sshd on loopback (see tests/fixtures/sshd.py)."""

from __future__ import annotations

import os
import shutil
import stat
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import paramiko
import pytest

from aris_queue_mcp.errors import HostKeyError, TransportError
from aris_queue_mcp.transport import LocalTransport, SSHTransport, Transport, TransportPool, open_transport
from tests.fixtures.sshd import SshServer, free_port

pytestmark = pytest.mark.timeout(60)


def _config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "ssh_config"
    path.write_text(text)
    return str(path)


def _alias_block(server: SshServer, alias: str, extra: str = "") -> str:
    return (
        f"Host {alias}\n  HostName {server.host}\n  Port {server.port}\n  User {server.user}\n"
        f"  IdentityFile {server.client_key}\n  IdentitiesOnly yes\n{extra}"
    )


# ---- commands --------------------------------------------------------------------------------------------


def test_run_stdout_stderr_exit_code(sshd: SshServer) -> None:
    with sshd.transport() as t:
        assert isinstance(t, Transport)
        res = t.run(["sh", "-c", "echo out; echo err >&2; exit 7"])
        assert (res.exit_code, res.stdout, res.stderr) == (7, "out\n", "err\n")
        assert t.run(["true"]).ok


def test_stdin_and_large_output_do_not_deadlock(sshd: SshServer) -> None:
    data = os.urandom(1 << 20).hex().encode()  # 2 MB, more than the SSH window
    with sshd.transport() as t:
        res = t.run(["sh", "-c", "cat; head -c 1048576 /dev/zero | tr '\\0' e >&2"], stdin=data, timeout=30)
        assert res.stdout.encode() == data
        assert res.stderr == "e" * (1 << 20)


def test_shell_metacharacters_arrive_literally(sshd: SshServer) -> None:
    marker = Path(sshd.remote_home) / "pwned"
    evil = f"$(touch {marker}); `touch {marker}` ; | & > * 'quote' \"dq\" \n newline $HOME"
    with sshd.transport() as t:
        res = t.run(["printf", "%s", evil])
    assert res.stdout == evil
    assert not marker.exists()


def test_timeout_is_wall_clock_and_names_host_and_command(sshd: SshServer) -> None:
    with sshd.transport() as t:
        start = time.monotonic()
        with pytest.raises(TransportError, match=r"gpu-test: command timed out after 0.5s: sleep 10"):
            t.run(["sleep", "10"], timeout=0.5)
        assert time.monotonic() - start < 3
        # The connection is still usable afterwards.
        assert t.run(["echo", "ok"]).stdout == "ok\n"


def test_remote_env_comes_from_sshd_setenv(make_sshd: Callable[..., SshServer], tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tool = bin_dir / "fake-tool"
    tool.write_text("#!/bin/sh\necho fake\n")
    tool.chmod(0o755)
    tricky = 'a b "c" \\d #e'
    server = make_sshd(remote_env={"ARIS_TEST": tricky}, extra_path=[str(bin_dir)])
    with server.transport() as t:
        res = t.run(["sh", "-c", 'echo "$HOME|$ARIS_TEST"; fake-tool'])
        assert res.stdout == f"{server.remote_home}|{tricky}\nfake\n"
        assert t.home() == server.remote_home


# ---- files -----------------------------------------------------------------------------------------------


def test_put_and_read_file_with_modes(sshd: SshServer, tmp_path: Path) -> None:
    src = tmp_path / "script.sh"
    src.write_bytes(b"#!/bin/sh\necho hi\n")
    with sshd.transport() as t:
        dest = f"{sshd.remote_home}/script.sh"
        t.put_file(str(src), dest, mode=0o700)
        assert stat.S_IMODE(os.stat(dest).st_mode) == 0o700
        assert t.run([dest]).stdout == "hi\n"
        src.write_bytes(b"secret")
        t.put_file(str(src), "~/script.sh")  # overwrite; default mode 0600; ~ is the remote HOME
        assert stat.S_IMODE(os.stat(dest).st_mode) == 0o600
        assert t.read_file(dest) == b"secret"
        assert t.read_file("~/script.sh") == b"secret"
        assert t.read_file("script.sh") == b"secret"  # relative paths are from home
        assert sorted(os.listdir(sshd.remote_home)) == ["script.sh"]  # no temp file left


def test_put_file_large(sshd: SshServer, tmp_path: Path) -> None:
    src = tmp_path / "big"
    src.write_bytes(os.urandom(3 << 20))
    with sshd.transport() as t:
        t.put_file(str(src), "~/big")
        assert t.read_file("~/big") == src.read_bytes()


def test_read_missing_file_names_host_and_path(sshd: SshServer) -> None:
    with sshd.transport() as t:
        missing = r"gpu-test: no such file on .*127\.0\.0\.1.*: /nonexistent/x"
        with pytest.raises(TransportError, match=missing):
            t.read_file("/nonexistent/x")
        with pytest.raises(TransportError, match="does the directory exist"):
            t.put_file(__file__, "/nonexistent/dir/x")


def test_home_agrees_with_remote_shell(sshd: SshServer) -> None:
    with sshd.transport() as t:
        assert t.home() == sshd.remote_home
        assert t.run(["sh", "-c", "echo ~"]).stdout.strip() == sshd.remote_home


# ---- host keys -------------------------------------------------------------------------------------------


def test_unknown_host_key_is_refused_with_fix_it_message(sshd: SshServer, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    t = sshd.transport(known_hosts_paths=[str(empty)])
    with pytest.raises(HostKeyError) as info:
        t.run(["true"])
    msg = str(info.value)
    assert f"host key for [127.0.0.1]:{sshd.port} (ssh-ed25519 SHA256:" in msg
    assert f"ssh-keyscan -p {sshd.port} 127.0.0.1 >> {empty}" in msg
    assert "ssh gpu-test" in msg
    assert empty.read_text() == ""  # never silently added


def test_changed_host_key_is_refused(sshd: SshServer, tmp_path: Path) -> None:
    other = paramiko.Ed25519Key.from_private_key_file(sshd.client_key)  # any other ed25519 key
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{sshd.port} ssh-ed25519 {other.get_base64()}\n")
    t = sshd.transport(known_hosts_paths=[str(known)])
    changed = r"CHANGED.*man-in-the-middle.*ssh-keygen -R '\[127\.0\.0\.1\]:\d+'"
    with pytest.raises(HostKeyError, match=changed):
        t.run(["true"])


def test_changed_key_refused_even_with_accept_new(sshd: SshServer, tmp_path: Path) -> None:
    other = paramiko.Ed25519Key.from_private_key_file(sshd.client_key)
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{sshd.port} ssh-ed25519 {other.get_base64()}\n")
    cfg = _config(tmp_path, _alias_block(sshd, "box", "  StrictHostKeyChecking no\n"))
    t = SSHTransport("box", ssh_config_path=cfg, known_hosts_paths=[str(known)])
    with pytest.raises(HostKeyError, match="CHANGED"):
        t.run(["true"])


def test_accept_new_records_the_key(sshd: SshServer, tmp_path: Path) -> None:
    known = tmp_path / "sub" / "known_hosts"
    extra = f"  StrictHostKeyChecking accept-new\n  UserKnownHostsFile {known}\n"
    cfg = _config(tmp_path, _alias_block(sshd, "box", extra))
    with SSHTransport("box", ssh_config_path=cfg) as t:
        assert t.run(["true"]).ok
    assert known.read_text() == sshd.host_key_line + "\n"
    # The recorded key is now checked like any other.
    with SSHTransport("box", ssh_config_path=cfg) as t:
        assert t.run(["true"]).ok
    assert known.read_text().count("\n") == 1


# ---- targets, proxies ------------------------------------------------------------------------------------


def test_user_at_host_port_target(sshd: SshServer) -> None:
    target = f"{sshd.user}@127.0.0.1:{sshd.port}"
    # An empty config file: key and known_hosts come from arguments / ssh's defaults as overridden here.
    with SSHTransport(
        f"ssh://{target}",
        ssh_config_path=_config(Path(sshd.remote_home), f"IdentityFile {sshd.client_key}\n"),
        known_hosts_paths=[sshd.known_hosts],
    ) as t:
        assert t.run(["echo", "hi"]).stdout == "hi\n"


def test_proxyjump_through_itself(sshd: SshServer, tmp_path: Path) -> None:
    cfg = _config(
        tmp_path,
        _alias_block(sshd, "jump")
        + _alias_block(sshd, "jump2", "  ProxyJump jump\n")
        + _alias_block(sshd, "target", "  ProxyJump jump\n")
        + _alias_block(sshd, "target2", "  ProxyJump jump,jump\n")
        + _alias_block(sshd, "target3", "  ProxyJump jump2\n"),
    )
    for alias, hops in (("target", 1), ("target2", 2), ("target3", 2)):
        with SSHTransport(alias, ssh_config_path=cfg, known_hosts_paths=[sshd.known_hosts]) as t:
            assert t.run(["echo", alias]).stdout == f"{alias}\n"
            assert len(t._clients) == hops + 1
            # Each extra hop is one more sshd connection: the target sees the jump host's tunnel.
            assert t.run(["sh", "-c", 'echo "${SSH_CONNECTION%% *}"']).stdout.strip() == "127.0.0.1"


def test_proxycommand_python_relay(sshd: SshServer, tmp_path: Path) -> None:
    relay = tmp_path / "relay.py"
    relay.write_text(
        "import socket, sys, threading\n"
        "s = socket.create_connection((sys.argv[1], int(sys.argv[2])))\n"
        "def up():\n"
        "    while (d := sys.stdin.buffer.read1(65536)):\n"
        "        s.sendall(d)\n"
        "    s.shutdown(socket.SHUT_WR)\n"
        "threading.Thread(target=up, daemon=True).start()\n"
        "while (d := s.recv(65536)):\n"
        "    sys.stdout.buffer.write(d); sys.stdout.buffer.flush()\n"
    )
    proxy = f"  ProxyCommand exec {sys.executable} {relay} %h %p\n"
    cfg = _config(tmp_path, _alias_block(sshd, "viacmd", proxy))
    with SSHTransport("viacmd", ssh_config_path=cfg, known_hosts_paths=[sshd.known_hosts]) as t:
        assert "ProxyCommand" in repr(t)
        assert t.run(["echo", "relayed"]).stdout == "relayed\n"


@pytest.mark.skipif(shutil.which("ssh") is None, reason="OpenSSH client not installed")
def test_proxycommand_openssh_client(sshd: SshServer, tmp_path: Path) -> None:
    # OpenSSH's ssh reads ~/.ssh from the passwd home, so it gets the fixture's config with -F.
    proxy = f"  ProxyCommand ssh -F {sshd.ssh_config} -W %h:%p {sshd.alias}\n"
    cfg = _config(tmp_path, _alias_block(sshd, "viassh", proxy))
    with SSHTransport("viassh", ssh_config_path=cfg, known_hosts_paths=[sshd.known_hosts]) as t:
        assert t.run(["echo", "via-ssh"]).stdout == "via-ssh\n"


# ---- connection lifetime, errors --------------------------------------------------------------------------


def test_connection_is_reused(sshd: SshServer) -> None:
    with sshd.transport() as t:
        for _ in range(3):
            t.run(["true"])
        t.put_file(__file__, "~/copy")
        t.read_file("~/copy")
        assert t.connects == 1


def test_reconnects_after_sshd_restart(sshd: SshServer) -> None:
    with sshd.transport(keepalive=1) as t:
        assert t.run(["echo", "1"]).stdout == "1\n"
        sshd.stop()
        with pytest.raises(TransportError, match=r"gpu-test.*connection refused at 127\.0\.0\.1"):
            t.run(["echo", "2"])
        sshd.start()
        assert t.run(["echo", "3"]).stdout == "3\n"
        assert t.read_file(sshd.known_hosts)  # SFTP reopens on the new connection too
        assert t.connects == 2


def test_dropped_connection_is_reestablished_transparently(sshd: SshServer) -> None:
    with sshd.transport() as t:
        t.run(["true"])
        t.read_file(sshd.known_hosts)
        sshd.stop()
        sshd.start()
        assert t.run(["echo", "back"]).stdout == "back\n"
        assert t.read_file(sshd.known_hosts)
        assert t.connects == 2


def test_connection_refused_names_the_host(sshd: SshServer) -> None:
    t = sshd.transport()
    sshd.stop()
    with pytest.raises(TransportError) as info:
        t.run(["true"])
    msg = str(info.value)
    assert msg.startswith("gpu-test: cannot connect to gpu-test (")
    assert f"127.0.0.1:{sshd.port}" in msg and "connection refused" in msg and "is sshd running" in msg


def test_auth_failure_says_what_to_try(sshd: SshServer, tmp_path: Path) -> None:
    key = paramiko.Ed25519Key.from_private_key_file(sshd.client_key)
    wrong = tmp_path / "wrong_key"
    # A key the server does not know: the host key pair works as "some other key".
    shutil.copy(sshd.host_key, wrong)
    assert key.get_base64() != paramiko.Ed25519Key.from_private_key_file(str(wrong)).get_base64()
    cfg = _config(tmp_path, _alias_block(sshd, "box").replace(sshd.client_key, str(wrong)))
    with pytest.raises(TransportError, match=r"box: cannot connect .*authentication failed for user"):
        SSHTransport("box", ssh_config_path=cfg, known_hosts_paths=[sshd.known_hosts]).run(["true"])


def test_unknown_host_name_is_a_dns_error(tmp_path: Path) -> None:
    cfg = _config(tmp_path, "Host nohost\n  HostName no-such-host.invalid\n")
    with pytest.raises(TransportError, match=r"nohost: cannot connect .*cannot resolve host name"):
        SSHTransport("nohost", ssh_config_path=cfg, connect_timeout=5).run(["true"])


def test_pool_shares_one_connection_across_threads(sshd: SshServer) -> None:
    pool = TransportPool(ssh_config_path=sshd.ssh_config, known_hosts_paths=[sshd.known_hosts])
    with pool:
        results: list[str] = []

        def work() -> None:
            results.append(pool.get(sshd.alias).run(["echo", "x"]).stdout)

        threads = [threading.Thread(target=work) for _ in range(6)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert results == ["x\n"] * 6
        t = pool.get(sshd.alias)
        assert isinstance(t, SSHTransport) and t.connects == 1
        assert pool.get(sshd.alias) is t
        assert pool.get("local") is pool.get(None)
    assert not t._clients


def test_jump_host_that_cannot_reach_the_target(sshd: SshServer, tmp_path: Path) -> None:
    closed = free_port()
    cfg = _config(
        tmp_path,
        _alias_block(sshd, "jump")
        + f"Host behind\n  HostName 127.0.0.1\n  Port {closed}\n  ProxyJump jump\n",
    )
    t = SSHTransport("behind", ssh_config_path=cfg, known_hosts_paths=[sshd.known_hosts])
    expected = rf"behind: jump host jump \(.*\) could not open a tunnel to 127\.0\.0\.1:{closed}"
    with pytest.raises(TransportError, match=expected):
        t.run(["true"])


def test_open_transport_picks_local_or_ssh(sshd: SshServer) -> None:
    for target in (None, "", "local", " LOCAL "):
        assert isinstance(open_transport(target), LocalTransport)
    t = open_transport(sshd.alias, ssh_config_path=sshd.ssh_config, known_hosts_paths=[sshd.known_hosts])
    assert isinstance(t, SSHTransport)
    assert t.label == "gpu-test"
    t.close()


def test_link_failure_before_the_command_starts_is_retried_once(
    sshd: SshServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    with sshd.transport() as t:
        t.run(["true"])
        broken = t._connection()

        def fail(*args: object, **kwargs: object) -> None:
            raise EOFError("link went away")

        # The link still looks active but fails: the call reconnects and runs on a fresh connection.
        monkeypatch.setattr(broken, "open_session", fail)
        assert t.run(["echo", "retried"]).stdout == "retried\n"
        assert t.connects == 2
