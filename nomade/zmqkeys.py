"""ZeroMQ CURVE keys: create, load, authorize, and apply them to sockets.

Key files are pyzmq/czmq certificates: ``NAME.key`` holds a public key,
``NAME.key_secret`` the public and the secret key (mode 0600). The agent accepts a
collector only if the collector's public key is in a ``*.key`` file in
``authorized_clients_dir``; that directory is re-read whenever it changes, so
``nomade keys authorize`` takes effect without restarting the agent.

Identity: an authorized key's name is its file name without ``.key``; the agent's
authenticator gives that name as the ZAP User-Id of every message the key sends, and
ingest takes it, not the message's ``sender`` field, as who sent it. A key speaks for
the node of its own name, and for the nodes listed one a line in ``NAME.nodes`` beside
it (a host running several slurmd with one collector).

Use: the agent calls ``start_authenticator`` then ``secure_server`` before ``bind``;
the collector calls ``secure_client`` before ``connect``. Both do nothing when
``[security] curve_enabled`` is false. Missing or bad key files raise ``NomadeError``.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import zmq
import zmq.auth
from zmq.utils import z85

from nomade.config import SecurityConfig
from nomade.errors import NomadeError

if TYPE_CHECKING:
    # ~5 MB at import; the collector (a client, 25 MB RSS budget) never needs it.
    from zmq.auth.thread import ThreadAuthenticator

log = logging.getLogger(__name__)

PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"
NODES_SUFFIX = ".nodes"
_KEY_LENGTH = 40  # a 32-byte key in Z85


@dataclass(frozen=True)
class KeyPair:
    """Z85-encoded CURVE keys; ``secret`` is None when loaded from a public file."""

    public: bytes
    secret: bytes | None


def create_keypair(directory: str | os.PathLike[str], name: str, *,
                   overwrite: bool = False) -> tuple[Path, Path]:
    """Write ``directory/name.key`` (0644) and ``name.key_secret`` (0600); return both paths.

    The files are made in a private temporary directory and renamed into place, so a
    secret key is never readable by others, even briefly. Refuses to replace existing
    files unless ``overwrite``.
    """
    if not name or "/" in name or name.startswith("."):
        raise NomadeError(f"key name {name!r}: expected a plain file name such as 'server'")
    target = Path(directory)
    public, secret = target / f"{name}{PUBLIC_SUFFIX}", target / f"{name}{SECRET_SUFFIX}"
    import tempfile  # with shutil: ~0.5 MB the collector (loading keys only) never needs

    existing = [str(p) for p in (public, secret) if p.exists()]
    if existing and not overwrite:
        raise NomadeError(f"{' and '.join(existing)} already exist; keep them, or replace with --force")
    target.mkdir(mode=0o755, parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target, prefix=".new-keys-") as scratch:
        made_public, made_secret = (Path(p) for p in zmq.auth.create_certificates(scratch, name))
        made_public.chmod(0o644)
        made_secret.chmod(0o600)
        os.replace(made_secret, secret)
        os.replace(made_public, public)
    return public, secret


def setup_keys(directory: str | os.PathLike[str], client: str = "client",
               nodes: Iterable[str] = ()) -> Path:
    """Make one host's whole key set in ``directory`` (an agent and a collector on one
    host: ``make demo``, a test, a single-host install) and return it: the server pair,
    the client pair under the default names (``[security] keys_dir`` finds them), the
    client authorized as ``client`` speaking also for ``nodes``. Existing pairs are
    kept. The directory is made 0700 and every file in it 0600."""
    target = Path(directory)
    target.mkdir(mode=0o700, parents=True, exist_ok=True)
    target.chmod(0o700)
    for name in ("server", "client"):
        if not (target / f"{name}{SECRET_SUFFIX}").exists():
            create_keypair(target, name, overwrite=True)
    security = SecurityConfig(keys_dir=str(target))
    authorized, _ = authorize(target / f"client{PUBLIC_SUFFIX}", security, name=client)
    node_file = authorized.with_suffix(NODES_SUFFIX)
    node_file.write_text("".join(f"{n}\n" for n in nodes), encoding="utf-8")
    authorized.parent.chmod(0o700)
    for path in (*target.glob("*.key*"), authorized, node_file):
        path.chmod(0o600)
    return target


def load_keypair(public_file: str | os.PathLike[str],
                 secret_file: str | os.PathLike[str] | None = None) -> KeyPair:
    """Load the public key from ``public_file`` and, if given, the secret key from
    ``secret_file`` (which must hold the same public key). Raises NomadeError."""
    public, _ = _read_certificate(Path(public_file))
    if secret_file is None:
        return KeyPair(public, None)
    path = Path(secret_file)
    paired_public, secret = _read_certificate(path)
    if secret is None:
        raise NomadeError(f"{path}: holds no secret key (a public .key file was given "
                          f"where the {SECRET_SUFFIX} file is expected)")
    if paired_public != public:
        raise NomadeError(f"{path}: its public key differs from the one in {public_file}; "
                          f"the two files are not a pair")
    _warn_if_exposed(path)
    return KeyPair(public, secret)


def load_public_key(path: str | os.PathLike[str]) -> bytes:
    """The public key of a *public* certificate; refuses a file holding a secret key."""
    public, secret = _read_certificate(Path(path))
    if secret is not None:
        raise NomadeError(f"{path}: holds a secret key; give the public {PUBLIC_SUFFIX} file, "
                          f"and never copy the {SECRET_SUFFIX} file off its host")
    return public


def authorize(public_file: str | os.PathLike[str], security: SecurityConfig,
              name: str | None = None) -> tuple[Path, bool]:
    """Copy a client's public certificate into ``authorized_clients_dir`` as ``name.key``
    (default: the file's own name). Returns (the authorized file, whether it is new).

    Idempotent for the same key; refuses to replace a different key of the same name.
    """
    import shutil
    import tempfile

    source = Path(public_file)
    key = load_public_key(source)
    directory = security.key_files().authorized_clients_dir
    stem = name if name is not None else source.name.removesuffix(PUBLIC_SUFFIX)
    if not stem or "/" in stem or stem.startswith("."):
        raise NomadeError(f"client name {stem!r}: expected a plain name such as 'node01'")
    dest = directory / f"{stem}{PUBLIC_SUFFIX}"
    if dest.exists():
        if _read_certificate(dest)[0] == key:
            return dest, False
        raise NomadeError(f"{dest} already holds a different client key; "
                          f"choose another name with --name")
    directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=directory, prefix=".new-", suffix=".tmp", delete=False) as tmp:
        with open(source, "rb") as handle:
            shutil.copyfileobj(handle, tmp)
    os.chmod(tmp.name, 0o644)
    os.replace(tmp.name, dest)
    return dest, True


class AuthorizedKeys:
    """The client public keys in a directory of ``NAME.key`` files, with their names.

    ``callback(domain, key)`` is the pyzmq credentials-provider hook: it re-reads the
    files when the directory's modification time or listing changed, and answers
    whether ``key`` (Z85) is authorized. ``name_of(key)`` is the key's name (its file
    name), ``nodes_of(name)`` the nodes it speaks for. A bad file is logged and skipped;
    it never locks out the others.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self._stamp: tuple[int, frozenset[str]] | None = None
        self._names: dict[bytes, str] = {}
        self._nodes: dict[str, frozenset[str]] = {}

    def keys(self) -> frozenset[bytes]:
        """The authorized keys now (re-reading the directory if it changed)."""
        try:
            stamp = (self.directory.stat().st_mtime_ns, frozenset(os.listdir(self.directory)))
        except OSError as exc:
            log.warning("authorized clients directory %s unreadable (%s): no client accepted",
                        self.directory, exc.strerror)
            self._stamp, self._names, self._nodes = None, {}, {}
            return frozenset()
        if stamp != self._stamp:
            self._names, self._nodes = self._read_all()
            self._stamp = stamp
            log.info("%d authorized CURVE client keys in %s", len(self._names), self.directory)
        return frozenset(self._names)

    def callback(self, domain: str, key: bytes) -> bool:
        """pyzmq ZAP hook: True when the Z85 ``key`` is authorized (any domain)."""
        allowed = key in self.keys()
        if not allowed:
            log.warning("refused a CURVE client with unknown public key %s", key.decode("ascii"))
        return allowed

    def name_of(self, key: bytes) -> str:
        """The name of the authorized Z85 ``key`` ("" if it is not authorized now)."""
        return self._names.get(key, "")

    def nodes_of(self, name: str) -> frozenset[str]:
        """The nodes the key ``name`` may speak for: its own name and its ``.nodes`` file's."""
        return self._nodes.get(name, frozenset((name,)))

    def _read_all(self) -> tuple[dict[bytes, str], dict[str, frozenset[str]]]:
        names: dict[bytes, str] = {}
        nodes: dict[str, frozenset[str]] = {}
        for path in sorted(self.directory.glob(f"*{PUBLIC_SUFFIX}")):
            name = path.name.removesuffix(PUBLIC_SUFFIX)
            try:
                key = load_public_key(path)
            except NomadeError as exc:
                log.warning("skipping %s", exc)
                continue
            if key in names:
                log.warning("%s: same key as %s.key; it keeps the name %s", path, names[key],
                            names[key])
                continue
            names[key] = name
            nodes[name] = frozenset((name, *_read_nodes(path.with_suffix(NODES_SUFFIX))))
        return names, nodes


def _read_nodes(path: Path) -> list[str]:
    """The node names of a ``NAME.nodes`` file, one a line ([] when there is none)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as exc:
        log.warning("%s unreadable (%s): the key speaks for its own node only", path, exc)
        return []
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def authorized_keys(auth: ThreadAuthenticator | None) -> AuthorizedKeys | None:
    """The key directory behind an authenticator of ``start_authenticator`` (None: none)."""
    if auth is None:
        return None
    provider = auth.credentials_providers.get("*")
    return provider if isinstance(provider, AuthorizedKeys) else None


def start_authenticator(context: zmq.Context, security: SecurityConfig) -> ThreadAuthenticator | None:
    """Start a ZAP authenticator on ``context`` that accepts only authorized client keys.

    Returns None when CURVE is disabled. Call ``stop()`` on the result at shutdown.
    Raises NomadeError when the authorized clients directory does not exist.
    """
    if not security.curve_enabled:
        return None
    directory = security.key_files().authorized_clients_dir
    if not directory.is_dir():
        raise NomadeError(f"CURVE is enabled but the authorized clients directory {directory} "
                          f"does not exist; add client keys with: nomade keys authorize CLIENT.key "
                          f"(one host: nomade keys setup)")
    provider = AuthorizedKeys(directory)
    if not provider.keys():
        log.warning("no client key in %s yet: every collector is refused until one is authorized",
                    directory)
    from zmq.auth.thread import ThreadAuthenticator

    auth = ThreadAuthenticator(context, log=logging.getLogger(f"{__name__}.zap"))
    # the ZAP User-Id of a client's messages: its key's name, not the Z85 key
    auth.curve_user_id = lambda public: provider.name_of(z85.encode(public))  # type: ignore[method-assign,assignment]
    auth.start()
    auth.configure_curve_callback("*", credentials_provider=provider)
    return auth


def secure_server(sock: zmq.Socket, security: SecurityConfig,
                  auth: ThreadAuthenticator | None) -> bool:
    """Make ``sock`` a CURVE server (call before bind). Returns False, changing
    nothing, when CURVE is disabled; otherwise ``auth`` must be running."""
    if not security.curve_enabled:
        return False
    if auth is None or not auth.is_alive():
        raise ValueError("secure_server needs the running authenticator from start_authenticator")
    files = security.key_files()
    pair = _required_pair(files.server_public_key_file, files.server_secret_key_file, "--server")
    sock.curve_publickey = pair.public
    sock.curve_secretkey = pair.secret
    sock.curve_server = True
    return True


@dataclass(frozen=True)
class ClientKeys:
    """What a CURVE client socket needs: its own pair and the server's public key (Z85)."""

    public: bytes
    secret: bytes
    server_public: bytes


def client_keys(security: SecurityConfig) -> ClientKeys | None:
    """Load the client's keys from the configured files; None when CURVE is disabled.
    Raises NomadeError naming a missing or bad file."""
    if not security.curve_enabled:
        return None
    files = security.key_files()
    pair = _required_pair(files.client_public_key_file, files.client_secret_key_file, "--client")
    server = _required(files.server_public_key_file, "the agent host's server.key (copy it here)")
    assert pair.secret is not None  # load_keypair with a secret file guarantees it
    return ClientKeys(pair.public, pair.secret, load_keypair(server).public)


def secure_client(sock: zmq.Socket, security: SecurityConfig) -> bool:
    """Give ``sock`` the client key pair and the server's public key (call before
    connect). Returns False, changing nothing, when CURVE is disabled."""
    keys = client_keys(security)
    if keys is None:
        return False
    sock.curve_publickey = keys.public
    sock.curve_secretkey = keys.secret
    sock.curve_serverkey = keys.server_public
    return True


def _required_pair(public: Path, secret: Path, flag: str) -> KeyPair:
    how = f"create them with: nomade keys generate {flag} (one host: nomade keys setup)"
    return load_keypair(_required(public, how), _required(secret, how))


def _required(path: Path, how: str) -> Path:
    if not path.is_file():
        raise NomadeError(f"CURVE is enabled ([security] curve_enabled) but key file {path} "
                          f"is missing; {how}")
    return path


def _read_certificate(path: Path) -> tuple[bytes, bytes | None]:
    """(public, secret or None) from a certificate file, both checked as Z85 keys."""
    try:
        public, secret = zmq.auth.load_certificate(path)
    except OSError as exc:
        raise NomadeError(f"{path}: cannot read key file ({exc.strerror or exc})") from None
    except ValueError:
        raise NomadeError(f"{path}: not a CURVE certificate (no public-key line)") from None
    for what, key in (("public", public), ("secret", secret)):
        if key is not None and not _valid_key(key):
            raise NomadeError(f"{path}: the {what} key is not a 40-character Z85 CURVE key")
    return public, secret


def _valid_key(key: bytes) -> bool:
    if len(key) != _KEY_LENGTH:
        return False
    try:
        z85.decode(key)
    except (ValueError, KeyError, struct.error):
        return False
    return True


def _warn_if_exposed(secret_file: Path) -> None:
    mode = secret_file.stat().st_mode & 0o777
    if mode & 0o077:
        log.warning("secret key file %s is readable by others (mode %o); chmod 600 it",
                    secret_file, mode)
