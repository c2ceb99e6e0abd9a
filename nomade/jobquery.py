"""The query protocol between ``nomade job`` and the agent, and its client half.

One request, one reply, each a single msgpack frame (DEALER to the agent's ROUTER on
``[agent] query_endpoint``):

- request: ``{"v": 1, "cred": CREDENTIAL}``, where CREDENTIAL is a MUNGE credential
  (``nomade.munge``) whose payload is the query itself, msgpack
  ``{"v": 1, "op": "job", "job_id": "123", "nonce": 16 random bytes}``. The agent takes
  who is asking from the credential and what is asked from its payload, never from the
  frame: a credential is good for exactly the query it carries, once (munged refuses a
  replay), within its time to live.
- reply: ``{"v": 1, "nonce": the request's nonce or None, "ok": bool, "code": CODE,
  "error": text or None, "job": the report (``nomade.agent.jobreport``) or None}``.
  CODE is ``"ok"``, ``"not_found"`` (no such job, or not the asker's: the two look the
  same, so a user learns nothing of other users' jobs), ``"auth"`` (the credential was
  refused), ``"bad_request"``, ``"busy"`` (rate limit or the store took too long).

The transport is CURVE-encrypted when the agent's is (``ask(server_key=...)``). Standard
library, msgpack and (in ``ask`` only) pyzmq; no torch.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

import msgpack

from nomade import munge
from nomade.errors import NomadeError

VERSION = 1
#: Largest request frame the agent reads, and largest reply a client accepts.
MAX_REQUEST_BYTES = munge.MAX_CREDENTIAL_BYTES + 256
MAX_REPLY_BYTES = 1 << 20
NONCE_BYTES = 16
#: A Slurm job id as NØMADE keeps it: "123", an array task's own id, or "123_4" / "123+1".
JOB_ID = re.compile(r"^[0-9]{1,12}([_+][0-9]{1,9})?$")
CODES = ("ok", "not_found", "auth", "bad_request", "busy")


class QueryError(NomadeError):
    """A query that could not be made or was refused; ``code`` is one of ``CODES``
    (or ``"unreachable"`` when no reply came)."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Query:
    """What a credential's payload asks: ``op`` on ``job_id``, tagged with ``nonce``."""

    op: str
    job_id: str
    nonce: bytes


def check_job_id(job_id: str) -> str:
    """``job_id`` if it looks like a Slurm job id, else ``QueryError`` (bad_request)."""
    if not JOB_ID.match(job_id):
        raise QueryError(f"{job_id!r} is not a Slurm job id (digits; an array task by its "
                         "own id, squeue -o %A)", "bad_request")
    return job_id


def query_payload(job_id: str, nonce: bytes | None = None) -> tuple[bytes, bytes]:
    """The credential payload that asks for job ``job_id``'s report, and its nonce."""
    nonce = os.urandom(NONCE_BYTES) if nonce is None else nonce
    body = {"v": VERSION, "op": "job", "job_id": check_job_id(job_id), "nonce": nonce}
    payload: bytes = msgpack.packb(body)
    return payload, nonce


def parse_payload(payload: bytes) -> Query:
    """The ``Query`` in a decoded credential's payload; ``QueryError`` (bad_request) if
    it is not exactly one."""
    body = _unpack_map(payload, "credential payload")
    nonce, job_id = body.get("nonce"), body.get("job_id")
    if body.get("v") != VERSION or body.get("op") != "job":
        raise QueryError(f"unknown query version or op ({body.get('v')!r}, {body.get('op')!r})",
                         "bad_request")
    if not isinstance(nonce, bytes) or len(nonce) != NONCE_BYTES or not isinstance(job_id, str):
        raise QueryError("query payload lacks a job_id or a 16-byte nonce", "bad_request")
    return Query("job", check_job_id(job_id), nonce)


def request_frame(credential: bytes) -> bytes:
    """The request frame carrying ``credential``."""
    frame: bytes = msgpack.packb({"v": VERSION, "cred": credential})
    return frame


def parse_request(frame: bytes) -> bytes:
    """The credential in a request frame; ``QueryError`` (bad_request) for anything else."""
    if len(frame) > MAX_REQUEST_BYTES:
        raise QueryError(f"request of {len(frame)} bytes, more than {MAX_REQUEST_BYTES}",
                         "bad_request")
    body = _unpack_map(frame, "request")
    cred = body.get("cred")
    if body.get("v") != VERSION or not isinstance(cred, bytes) or not cred:
        raise QueryError("request is not {v: 1, cred: bytes}", "bad_request")
    return cred


def reply_frame(nonce: bytes | None, code: str, error: str | None = None,
                job: dict[str, Any] | None = None) -> bytes:
    """A reply frame (``code`` one of ``CODES``)."""
    frame: bytes = msgpack.packb({"v": VERSION, "nonce": nonce, "ok": code == "ok", "code": code,
                                  "error": error, "job": job})
    return frame


def parse_reply(frame: bytes, nonce: bytes) -> dict[str, Any]:
    """The job report of a reply to the request tagged ``nonce``; ``QueryError`` with the
    agent's code and words for a refusal, or for a reply that is not to this request."""
    body = _unpack_map(frame, "reply from the agent")
    if body.get("v") != VERSION:
        raise QueryError(f"reply of protocol version {body.get('v')!r}, not {VERSION}", "bad_request")
    code = body.get("code") if body.get("code") in CODES else "bad_request"
    if not body.get("ok"):
        raise QueryError(str(body.get("error") or code), str(code))
    job = body.get("job")
    if body.get("nonce") != nonce or not isinstance(job, dict):
        raise QueryError("the agent's reply does not answer this request", "bad_request")
    return job


def _unpack_map(data: bytes, what: str) -> dict[str, Any]:
    try:
        body = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (ValueError, msgpack.UnpackException) as e:   # truncated, extra data, bad bytes
        raise QueryError(f"{what} is not msgpack: {e}", "bad_request") from None
    if not isinstance(body, dict):
        raise QueryError(f"{what} is not a map", "bad_request")
    return body


def ask(endpoint: str, job_id: str, *, server_key: bytes | None = None,
        timeout_s: float = 10.0) -> dict[str, Any]:
    """Ask the agent on ``endpoint`` for job ``job_id``'s report, as the calling user
    (a MUNGE credential made here). With ``server_key`` (the agent's public CURVE key,
    Z85) the connection is CURVE-encrypted with a throwaway client key, and only that
    agent can answer. ``QueryError`` when refused or unanswered (a wrong server key
    looks like no answer), ``MungeError`` when no credential could be made."""
    import zmq

    payload, nonce = query_payload(job_id)
    frame = request_frame(munge.encode(payload))
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_REPLY_BYTES)
        if server_key is not None:
            public, secret = zmq.curve_keypair()
            sock.curve_publickey, sock.curve_secretkey = public, secret
            sock.curve_serverkey = server_key
        sock.connect(endpoint)
        sock.send(frame)
        if not sock.poll(int(timeout_s * 1000), zmq.POLLIN):
            raise QueryError(f"no answer from the agent on {endpoint} within {timeout_s:g} s "
                             "(is it running, with [agent] query_endpoint set to this address"
                             + (", and is this its server.key?)" if server_key else "?)"),
                             "unreachable")
        return parse_reply(sock.recv(), nonce)
    finally:
        sock.close()


__all__ = ["CODES", "JOB_ID", "MAX_REPLY_BYTES", "MAX_REQUEST_BYTES", "Query", "QueryError", "ask",
           "check_job_id", "parse_payload", "parse_reply", "parse_request", "query_payload",
           "reply_frame", "request_frame"]
