"""nomade.zmqkeys and `nomade keys`: key files, and real CURVE ROUTER/DEALER sockets on 127.0.0.1."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zmq

from nomade import zmqkeys
from nomade.config import SecurityConfig
from nomade.errors import NomadeError

ROOT = Path(__file__).resolve().parent.parent
PATIENCE_MS = 10_000   # how long a message that should arrive may take
SILENCE_MS = 1_500     # how long we listen for a message that must not arrive


def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.fixture
def keys_dir(tmp_path: Path) -> Path:
    """A keys directory with a server pair and an authorized client pair."""
    directory = tmp_path / "keys"
    zmqkeys.create_keypair(directory, "server")
    public, _ = zmqkeys.create_keypair(directory, "client")
    zmqkeys.authorize(public, server_security(directory))
    return directory


def server_security(directory: Path) -> SecurityConfig:
    return SecurityConfig(curve_enabled=True, keys_dir=str(directory))


def client_security(directory: Path, name: str) -> SecurityConfig:
    return SecurityConfig(curve_enabled=True, keys_dir=str(directory),
                          client_public_key_file=str(directory / f"{name}.key"),
                          client_secret_key_file=str(directory / f"{name}.key_secret"))


class Sockets:
    """A context whose sockets are all closed with linger 0, then the context terminated."""

    def __init__(self) -> None:
        self.context = zmq.Context()
        self.sockets: list[zmq.Socket] = []
        self.auth = None

    def socket(self, kind: int) -> zmq.Socket:
        sock = self.context.socket(kind)
        sock.linger = 0
        self.sockets.append(sock)
        return sock

    def close(self) -> None:
        for sock in self.sockets:
            sock.close(linger=0)
        if self.auth is not None:
            self.auth.stop()
        self.context.term()


@pytest.fixture
def zmq_sockets() -> Iterator[Sockets]:
    sockets = Sockets()
    yield sockets
    sockets.close()


def start_server(sockets: Sockets, security: SecurityConfig) -> tuple[zmq.Socket, int]:
    sockets.auth = zmqkeys.start_authenticator(sockets.context, security)
    router = sockets.socket(zmq.ROUTER)
    assert zmqkeys.secure_server(router, security, sockets.auth)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    return router, port


def dealer(sockets: Sockets, port: int, security: SecurityConfig | None) -> zmq.Socket:
    sock = sockets.socket(zmq.DEALER)
    if security is not None:
        assert zmqkeys.secure_client(sock, security)
    sock.connect(f"tcp://127.0.0.1:{port}")
    return sock


def test_authorized_client_exchanges_messages(keys_dir: Path, zmq_sockets: Sockets) -> None:
    router, port = start_server(zmq_sockets, server_security(keys_dir))
    client = dealer(zmq_sockets, port, client_security(keys_dir, "client"))
    client.send(b"ping")
    assert router.poll(PATIENCE_MS) == zmq.POLLIN
    identity, body = router.recv_multipart()
    assert body == b"ping"
    router.send_multipart([identity, b"pong"])
    assert client.poll(PATIENCE_MS) == zmq.POLLIN
    assert client.recv() == b"pong"
    assert router.get(zmq.MECHANISM) == zmq.CURVE


def test_unknown_key_gets_nothing_through(keys_dir: Path, zmq_sockets: Sockets,
                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="nomade.zmqkeys")
    zmqkeys.create_keypair(keys_dir, "intruder")
    router, port = start_server(zmq_sockets, server_security(keys_dir))
    intruder = dealer(zmq_sockets, port, client_security(keys_dir, "intruder"))
    intruder.send(b"let me in")
    assert router.poll(SILENCE_MS) == 0
    assert wait_until(lambda: "refused a CURVE client with unknown public key" in caplog.text)
    # The server still serves authorized clients afterwards.
    friend = dealer(zmq_sockets, port, client_security(keys_dir, "client"))
    friend.send(b"hello")
    assert router.poll(PATIENCE_MS) == zmq.POLLIN
    assert router.recv_multipart()[1] == b"hello"


def test_plain_client_gets_nothing_through(keys_dir: Path, zmq_sockets: Sockets) -> None:
    router, port = start_server(zmq_sockets, server_security(keys_dir))
    plain = dealer(zmq_sockets, port, None)
    plain.send(b"no keys")
    assert router.poll(SILENCE_MS) == 0


def test_authorization_takes_effect_without_restart(keys_dir: Path, zmq_sockets: Sockets) -> None:
    newcomer_public, _ = zmqkeys.create_keypair(keys_dir, "newcomer")
    router, port = start_server(zmq_sockets, server_security(keys_dir))
    zmqkeys.authorize(newcomer_public, server_security(keys_dir))
    newcomer = dealer(zmq_sockets, port, client_security(keys_dir, "newcomer"))
    newcomer.send(b"new here")
    assert router.poll(PATIENCE_MS) == zmq.POLLIN
    assert router.recv_multipart()[1] == b"new here"


def test_disabled_curve_changes_nothing(zmq_sockets: Sockets) -> None:
    off = SecurityConfig(curve_enabled=False)
    assert zmqkeys.start_authenticator(zmq_sockets.context, off) is None
    router = zmq_sockets.socket(zmq.ROUTER)
    client = zmq_sockets.socket(zmq.DEALER)
    assert zmqkeys.secure_server(router, off, None) is False
    assert zmqkeys.secure_client(client, off) is False
    assert router.get(zmq.MECHANISM) == zmq.NULL and client.get(zmq.MECHANISM) == zmq.NULL


def test_missing_key_files_are_clear_errors(tmp_path: Path, zmq_sockets: Sockets) -> None:
    security = server_security(tmp_path / "empty")
    with pytest.raises(NomadeError, match="nomade keys generate --client") as info:
        zmqkeys.secure_client(zmq_sockets.socket(zmq.DEALER), security)
    assert str(tmp_path / "empty" / "client.key") in str(info.value)
    with pytest.raises(NomadeError, match="authorized clients directory .* does not exist"):
        zmqkeys.start_authenticator(zmq_sockets.context, security)
    (tmp_path / "empty" / "authorized_clients").mkdir(parents=True)
    zmq_sockets.auth = zmqkeys.start_authenticator(zmq_sockets.context, security)
    with pytest.raises(NomadeError, match="server.key is missing; create them with: "
                                         "nomade keys generate --server"):
        zmqkeys.secure_server(zmq_sockets.socket(zmq.ROUTER), security, zmq_sockets.auth)


def test_client_keys_match_files(keys_dir: Path) -> None:
    keys = zmqkeys.client_keys(client_security(keys_dir, "client"))
    assert keys is not None
    assert keys.server_public == zmqkeys.load_public_key(keys_dir / "server.key")
    pair = zmqkeys.load_keypair(keys_dir / "client.key", keys_dir / "client.key_secret")
    assert (keys.public, keys.secret) == (pair.public, pair.secret)
    assert zmqkeys.client_keys(SecurityConfig(curve_enabled=False)) is None


def test_client_needs_server_public_key(tmp_path: Path, zmq_sockets: Sockets) -> None:
    zmqkeys.create_keypair(tmp_path, "client")
    with pytest.raises(NomadeError, match="server.key is missing; the agent host's server.key"):
        zmqkeys.secure_client(zmq_sockets.socket(zmq.DEALER), server_security(tmp_path))


def test_create_keypair_modes_and_refusal(tmp_path: Path) -> None:
    public, secret = zmqkeys.create_keypair(tmp_path / "new", "server")
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["server.key", "server.key_secret"]
    first = zmqkeys.load_keypair(public, secret)
    assert len(first.public) == 40 and first.secret is not None and len(first.secret) == 40
    with pytest.raises(NomadeError, match="already exist"):
        zmqkeys.create_keypair(tmp_path / "new", "server")
    zmqkeys.create_keypair(tmp_path / "new", "server", overwrite=True)
    assert zmqkeys.load_keypair(public, secret).public != first.public
    with pytest.raises(NomadeError, match="plain file name"):
        zmqkeys.create_keypair(tmp_path, "../escape")


def test_load_keypair_checks_files(tmp_path: Path) -> None:
    a_public, a_secret = zmqkeys.create_keypair(tmp_path, "a")
    b_public, b_secret = zmqkeys.create_keypair(tmp_path, "b")
    with pytest.raises(NomadeError, match="not a pair"):
        zmqkeys.load_keypair(a_public, b_secret)
    with pytest.raises(NomadeError, match="holds no secret key"):
        zmqkeys.load_keypair(a_public, b_public)
    with pytest.raises(NomadeError, match="cannot read key file"):
        zmqkeys.load_keypair(tmp_path / "absent.key")
    junk = tmp_path / "junk.key"
    junk.write_text("curve\n    public-key = \"tooshort\"\n", encoding="utf-8")
    with pytest.raises(NomadeError, match="not a 40-character Z85 CURVE key"):
        zmqkeys.load_keypair(junk)
    junk.write_text("hello\n", encoding="utf-8")
    with pytest.raises(NomadeError, match="not a CURVE certificate"):
        zmqkeys.load_keypair(junk)


def test_exposed_secret_is_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    public, secret = zmqkeys.create_keypair(tmp_path, "a")
    os.chmod(secret, 0o644)
    with caplog.at_level(logging.WARNING, logger="nomade.zmqkeys"):
        zmqkeys.load_keypair(public, secret)
    assert "readable by others" in caplog.text


def test_authorize_rules(tmp_path: Path) -> None:
    security = server_security(tmp_path)
    public, secret = zmqkeys.create_keypair(tmp_path / "node", "client")
    dest, new = zmqkeys.authorize(public, security, "node01")
    assert new and dest == tmp_path / "authorized_clients" / "node01.key"
    assert zmqkeys.load_public_key(dest) == zmqkeys.load_public_key(public)
    assert zmqkeys.authorize(public, security, "node01") == (dest, False)
    other, _ = zmqkeys.create_keypair(tmp_path / "other", "client")
    with pytest.raises(NomadeError, match="already holds a different client key"):
        zmqkeys.authorize(other, security, "node01")
    with pytest.raises(NomadeError, match="holds a secret key"):
        zmqkeys.authorize(secret, security)
    assert [p.name for p in dest.parent.iterdir()] == ["node01.key"]


def test_authorized_keys_skip_bad_files_and_reload(tmp_path: Path) -> None:
    directory = tmp_path / "authorized"
    directory.mkdir()
    (directory / "broken.key").write_text("nothing here\n", encoding="utf-8")
    keys = zmqkeys.AuthorizedKeys(directory)
    assert keys.keys() == frozenset()
    public, _ = zmqkeys.create_keypair(tmp_path, "n1")
    zmqkeys.authorize(public, SecurityConfig(authorized_clients_dir=str(directory)))
    key = zmqkeys.load_public_key(public)
    assert keys.callback("*", key) is True
    assert keys.name_of(key) == "n1" and keys.nodes_of("n1") == {"n1"}
    (directory / "n1.nodes").write_text("n2\n# a comment\nn3\n", encoding="utf-8")
    keys.keys()                         # a new file changes the listing: all is re-read
    assert keys.nodes_of("n1") == {"n1", "n2", "n3"}
    (directory / "n1.key").unlink()
    assert keys.callback("*", key) is False and keys.name_of(key) == ""


def test_setup_keys_makes_a_private_working_set(tmp_path: Path, zmq_sockets: Sockets) -> None:
    directory = zmqkeys.setup_keys(tmp_path / "keys", "host1", ["n1", "n2"])
    assert directory.stat().st_mode & 0o777 == 0o700
    files = [p for p in directory.rglob("*") if p.is_file()]
    assert {p.relative_to(directory).as_posix() for p in files} == {
        "server.key", "server.key_secret", "client.key", "client.key_secret",
        "authorized_clients/host1.key", "authorized_clients/host1.nodes"}
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in files)
    before = (directory / "server.key_secret").read_bytes()
    assert zmqkeys.setup_keys(directory, "host1", ["n1", "n2"]) == directory   # idempotent
    assert (directory / "server.key_secret").read_bytes() == before
    security = SecurityConfig(curve_enabled=True, keys_dir=str(directory))
    zmq_sockets.auth = zmqkeys.start_authenticator(zmq_sockets.context, security)
    router = zmq_sockets.socket(zmq.ROUTER)
    zmqkeys.secure_server(router, security, zmq_sockets.auth)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer_ = zmq_sockets.socket(zmq.DEALER)
    zmqkeys.secure_client(dealer_, security)
    dealer_.connect(f"tcp://127.0.0.1:{port}")
    dealer_.send(b"hello")
    assert router.poll(PATIENCE_MS) == zmq.POLLIN
    frames = router.recv_multipart(copy=False)
    assert frames[-1].get("User-Id") == "host1"     # the key's name, not its Z85 text
    assert zmqkeys.authorized_keys(zmq_sockets.auth).nodes_of("host1") == {"host1", "n1", "n2"}


def test_keys_command_generate_and_authorize(tmp_path: Path) -> None:
    config = tmp_path / "nomade.toml"
    config.write_text(f"[security]\nkeys_dir = '{tmp_path / 'keys'}'\n", encoding="utf-8")

    def nomade(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "nomade", "--config", str(config), "keys", *args],
                              cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)

    made = nomade("generate", "--server", "--client", "node01")
    assert made.returncode == 0, made.stderr
    assert {p.name for p in (tmp_path / "keys").iterdir()} == {
        "server.key", "server.key_secret", "node01.key", "node01.key_secret"}
    assert nomade("generate", "--server").returncode == 2
    authorized = nomade("authorize", str(tmp_path / "keys" / "node01.key"))
    assert authorized.returncode == 0 and "authorized:" in authorized.stdout
    assert (tmp_path / "keys" / "authorized_clients" / "node01.key").is_file()
    refused = nomade("authorize", str(tmp_path / "keys" / "node01.key_secret"))
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert "holds a secret key" in refused.stderr and "Traceback" not in refused.stderr


def test_keys_command_setup(tmp_path: Path) -> None:
    config = tmp_path / "nomade.toml"
    config.write_text(f"[security]\nkeys_dir = '{tmp_path / 'keys'}'\n", encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "nomade", "--config", str(config), "keys", "setup",
                           "--name", "host1", "--nodes", "n1,n2"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "authorized as host1" in done.stdout
    nodes = tmp_path / "keys" / "authorized_clients" / "host1.nodes"
    assert nodes.read_text() == "n1\nn2\n" and nodes.stat().st_mode & 0o777 == 0o600
