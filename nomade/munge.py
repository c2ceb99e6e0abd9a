"""MUNGE credentials through the ``munge`` and ``unmunge`` programs (standard library only).

Who is asking, the way Slurm knows it: the client encodes its request as the payload of a
MUNGE credential (``encode``, run as the user), and the server decodes it (``decode``)
with its own munged, which checks the MAC with the site's shared key, the time to live,
and that the credential was never decoded before (a replay is refused). The server takes
the UID and GID from the credential, never from the message, and the request from the
credential's payload, so a credential cannot be reused for another request.

Both programs run with an argument list (never a shell), the payload and the credential
on stdin, and a timeout. Any failure (program missing, munged down, bad, expired or
replayed credential) raises ``MungeError`` with munge's own words.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from nomade.errors import NomadeError

#: Where the programs are looked for when they are not on $PATH (a root cron, a unit file).
SEARCH = ("/usr/bin", "/usr/local/bin", "/usr/sbin", "/opt/munge/bin")
#: Largest payload encoded and credential decoded (MUNGE itself allows ~1 MB; a query is tiny).
MAX_PAYLOAD_BYTES = 4096
MAX_CREDENTIAL_BYTES = 8192
#: ``unmunge`` exit status of a credential decoded before (EMUNGE_CRED_REPLAYED).
REPLAYED = 17


class MungeError(NomadeError):
    """A credential could not be made or was refused; the message says why."""


@dataclass(frozen=True)
class Credential:
    """A decoded credential: who made it (from munged, not from the message) and its payload."""

    uid: int
    gid: int
    payload: bytes


def program(name: str) -> str:
    """The path of the ``munge``/``unmunge`` program; ``MungeError`` if not installed."""
    found = shutil.which(name) or shutil.which(name, path=os.pathsep.join(SEARCH))
    if found is None:
        raise MungeError(f"{name}: not installed (package munge); NØMADE's queries need MUNGE, "
                         "as Slurm does")
    return found


def _run(argv: list[str], data: bytes, timeout_s: float) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(argv, input=data, capture_output=True, timeout=timeout_s,
                              check=False)
    except subprocess.TimeoutExpired:
        raise MungeError(f"{Path(argv[0]).name}: no answer within {timeout_s:g} s "
                         "(is munged running?)") from None
    except OSError as e:
        raise MungeError(f"{argv[0]}: cannot run: {e.strerror or e}") from None


def _why(done: subprocess.CompletedProcess[bytes]) -> str:
    """munge's last line of complaint, without its own "PROGRAM: " prefix."""
    lines = done.stderr.decode("utf-8", "replace").strip().splitlines()
    if not lines:
        return f"exit status {done.returncode}"
    return lines[-1].split(": ", 1)[-1] if lines[-1].startswith(("munge:", "unmunge:")) else lines[-1]


def encode(payload: bytes, *, timeout_s: float = 5.0) -> bytes:
    """A credential of the calling user that carries ``payload`` (``munge``)."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise MungeError(f"payload of {len(payload)} bytes, more than {MAX_PAYLOAD_BYTES}")
    done = _run([program("munge")], payload, timeout_s)
    if done.returncode != 0:
        raise MungeError(f"munge: {_why(done)}")
    return done.stdout.strip()


def decode(credential: bytes, *, timeout_s: float = 5.0) -> Credential:
    """Check ``credential`` with munged (``unmunge``): its maker's UID and GID and its
    payload. Raises ``MungeError`` for anything but a valid, fresh, never-seen credential."""
    if len(credential) > MAX_CREDENTIAL_BYTES:
        raise MungeError(f"credential of {len(credential)} bytes, more than {MAX_CREDENTIAL_BYTES}")
    done = _run([program("unmunge"), "--numeric", "--keys=STATUS,UID,GID"], credential, timeout_s)
    if done.returncode != 0:
        why = "credential replayed" if done.returncode == REPLAYED else _why(done)
        raise MungeError(f"unmunge: {why}")
    head, sep, payload = done.stdout.partition(b"\n\n")
    fields = dict(line.split(b":", 1) for line in head.splitlines() if b":" in line)
    try:
        status, uid, gid = (int(fields[k].strip()) for k in (b"STATUS", b"UID", b"GID"))
    except (KeyError, ValueError):
        raise MungeError("unmunge: output not understood") from None
    if not sep or status != 0:
        raise MungeError(f"unmunge: status {status}")
    return Credential(uid, gid, payload)


__all__ = ["MAX_CREDENTIAL_BYTES", "MAX_PAYLOAD_BYTES", "Credential", "MungeError", "decode",
           "encode", "program"]
