"""The agent's query server: ``nomade job`` asks, MUNGE says who asks, the store answers.

A ROUTER socket on ``[agent] query_endpoint`` ("" turns it off), served by its own thread
with its own read-only store connection (``nomade.agent.jobreport.Reader``), so neither a
store read nor a wait on munged ever delays the agent's tick or ingest. Requests are
answered one at a time, in order.

With CURVE on (``[security] curve_enabled``, the default) the socket is a CURVE server
with the agent's server key, in its own ZAP domain (``QUERY_DOMAIN``) that lets any client
key in: users have no authorized keys, and need none, since MUNGE says who they are. What
CURVE adds is that the client knows it talks to the agent (it holds the agent's public
``server.key``) and that nobody on the way reads the reply or relays the credential to
the agent for themselves. Without CURVE the endpoint must be loopback
(``nomade.config.check_endpoint``).

Each request (``nomade.jobquery``) carries a MUNGE credential whose payload is the query.
``unmunge`` (``nomade.munge``) gives the asker's UID; the frame itself is never believed.
Who sees what, as Slurm does it (``PrivateData=jobs``):

- root, the user the agent runs as, and the users named in ``[agent] query_admins``
  see every job;
- anyone else sees a job only when the store says it is theirs (its uid, or, when the
  store has no uid, its user name equal to the asker's);
- a job that is not the asker's gets the very reply a job that does not exist gets
  ("not_found"), so nobody learns which job ids other users have.

Bounds: a frame over ``jobquery.MAX_REQUEST_BYTES`` is dropped by ZeroMQ; at most
``[agent] query_max_per_s`` requests a second are checked (a token bucket, burst of two
seconds' worth), the rest answered "busy" without running unmunge; ``unmunge`` and each
report have a time limit. A malformed request is counted and answered with an error,
never raised. ``counts`` holds the outcomes (``OUTCOMES``; the agent passes its metrics'
``queries_total``).
"""

from __future__ import annotations

import logging
import os
import pwd
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zmq

from nomade import jobquery, munge, zmqkeys
from nomade.agent.ingest import RateLimitedLog
from nomade.agent.jobreport import Reader, ReportTimeout
from nomade.config import Config, check_endpoint
from nomade.errors import NomadeError

if TYPE_CHECKING:
    from zmq.auth.thread import ThreadAuthenticator

log = logging.getLogger(__name__)

#: Outcomes counted in ``QueryServer.counts`` (``malformed``: not even a frame to answer).
OUTCOMES = (*jobquery.CODES, "malformed")
#: Requests queued in ZeroMQ per client before it drops more.
RECEIVE_HWM = 64
#: Time limits of one ``unmunge`` and of one report's store reads.
UNMUNGE_TIMEOUT_S = 5.0
REPORT_BUDGET_S = 5.0
NOT_FOUND = "job {job_id}: no such job of yours is known to NØMADE"
#: ZAP domain of the query socket: any CURVE client key may connect.
QUERY_DOMAIN = "nomade-query"


class AnyClientKey:
    """ZAP credentials provider of ``QUERY_DOMAIN``: every client key passes (who asks is
    MUNGE's to say, per request)."""

    def callback(self, domain: str, key: bytes) -> bool:
        return True


def admin_uids(names: Iterable[str], own_uid: int | None = None) -> frozenset[int]:
    """The UIDs that see every job: root, ``own_uid`` (the agent's; default this
    process's), and each user in ``names`` that exists (an unknown name is logged)."""
    uids = {0, os.geteuid() if own_uid is None else own_uid}
    for name in names:
        try:
            uids.add(pwd.getpwnam(name).pw_uid)
        except KeyError:
            log.warning("[agent] query_admins: no user %r on this host: ignored", name)
    return frozenset(uids)


def owns(uid: int, owner: tuple[int | None, str | None]) -> bool:
    """Whether the job whose stored (uid, user) is ``owner`` belongs to ``uid``."""
    job_uid, job_user = owner
    if job_uid is not None:
        return job_uid == uid
    if job_user is None:
        return False
    try:
        return pwd.getpwuid(uid).pw_name == job_user
    except KeyError:
        return False


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self.at = burst, time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class QueryServer:
    """The query socket and its thread; ``close()`` stops both (before the context ends)."""

    def __init__(self, cfg: Config, ctx: zmq.Context[Any], db_path: str | Path, *,
                 auth: ThreadAuthenticator | None = None, own_uid: int | None = None,
                 counts: dict[str, int] | None = None) -> None:
        self.admins = admin_uids(cfg.agent.query_admins, own_uid)
        self.bucket = TokenBucket(cfg.agent.query_max_per_s, max(1.0, 2 * cfg.agent.query_max_per_s))
        self.counts = {} if counts is None else counts   # the agent's metrics dict, when given
        self.counts.update(dict.fromkeys(OUTCOMES, 0))
        self._log = RateLimitedLog(log, 30.0)
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.MAXMSGSIZE, jobquery.MAX_REQUEST_BYTES)
        self.sock.setsockopt(zmq.RCVHWM, RECEIVE_HWM)
        try:
            if zmqkeys.secure_server(self.sock, cfg.security, auth):
                assert auth is not None   # secure_server refuses to go on without it
                auth.configure_curve_callback(QUERY_DOMAIN, credentials_provider=AnyClientKey())
                self.sock.zap_domain = QUERY_DOMAIN.encode()
            self.sock.bind(cfg.agent.query_endpoint)
        except (zmq.ZMQError, NomadeError, ValueError) as e:
            self.sock.close()
            where = cfg.source if cfg.source is not None else "the built-in defaults"
            raise NomadeError(f"{where}: [agent] query_endpoint = {cfg.agent.query_endpoint!r}: "
                              f"cannot bind: {e}") from None
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.reader = Reader(db_path, cfg.ml.alerts, cfg.storage, budget_s=REPORT_BUDGET_S)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="nomade-query", daemon=True)
        self._thread.start()
        log.info("job queries (MUNGE) on %s", self.endpoint)

    def _serve(self) -> None:
        try:
            while not self._stop.is_set():
                if self.sock.poll(200, zmq.POLLIN):
                    self._one()
        except Exception:  # a bug here must not take the agent down: log, stop serving
            log.exception("query server stopped")
        finally:
            self.sock.close()
            self.reader.close()

    def _one(self) -> None:
        """Answer the next waiting request (a malformed one is counted, answered if it can be)."""
        try:
            frames = self.sock.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return
        if len(frames) != 2:
            self.counts["malformed"] += 1
            self._log.warning("query: %d frames, expected 2 (identity, request): dropped", len(frames))
            return
        identity, frame = frames
        reply = self.answer(frame)
        try:
            self.sock.send_multipart([identity, reply], zmq.NOBLOCK)
        except zmq.ZMQError:   # the client went away: nothing to do
            pass

    def answer(self, frame: bytes) -> bytes:
        """The reply frame to one request frame (counted by outcome). Never raises."""
        nonce = None
        try:
            if not self.bucket.take():
                raise jobquery.QueryError("the agent is answering too many queries; try again "
                                          "in a few seconds", "busy")
            credential = jobquery.parse_request(frame)
            try:
                cred = munge.decode(credential, timeout_s=UNMUNGE_TIMEOUT_S)
            except munge.MungeError as e:
                raise jobquery.QueryError(f"credential refused: {e}", "auth") from None
            query = jobquery.parse_payload(cred.payload)
            nonce = query.nonce
            job = self._report(cred.uid, query.job_id)
        except jobquery.QueryError as e:
            self.counts[e.code] += 1
            if e.code in ("auth", "bad_request"):
                self._log.warning("query refused (%s): %s", e.code, e)
            return jobquery.reply_frame(nonce, e.code, str(e))
        except Exception as e:  # a store error or a bug: the client gets a line, the agent lives
            self.counts["busy"] += 1
            self._log.warning("query failed: %s", e)
            return jobquery.reply_frame(nonce, "busy", f"the agent could not answer: {e}")
        self.counts["ok"] += 1
        return jobquery.reply_frame(nonce, "ok", None, job)

    def _report(self, uid: int, job_id: str) -> dict[str, object]:
        """Job ``job_id``'s report if ``uid`` may see it; else "not_found", the same as
        for a job that does not exist."""
        not_found = jobquery.QueryError(NOT_FOUND.format(job_id=job_id), "not_found")
        try:
            if uid not in self.admins:
                owner = self.reader.job_owner(job_id)
                if owner is None or not owns(uid, owner):
                    log.debug("query: job %s by uid %d: not found or not theirs", job_id, uid)
                    raise not_found
            job = self.reader.report(job_id)
        except ReportTimeout as e:
            raise jobquery.QueryError(str(e), "busy") from None
        if job is None:
            raise not_found
        log.debug("query: job %s by uid %d answered", job_id, uid)
        return job

    def close(self) -> None:
        """Stop the thread; it closes the socket and the store connection (idempotent)."""
        self._stop.set()
        self._thread.join(timeout=10)


def start(cfg: Config, ctx: zmq.Context[Any], db_path: str | Path, *,
          auth: ThreadAuthenticator | None = None,
          counts: dict[str, int] | None = None) -> QueryServer | None:
    """The query server of ``cfg`` (CURVE through ``auth`` when it is on). None when
    ``[agent] query_endpoint`` is "", or when it cannot bind (logged as an error: the agent
    goes on ingesting and scoring without it). ``NomadeError`` for an endpoint that is not
    loopback without CURVE (``check_endpoint``), as for the agent's other sockets."""
    if not cfg.agent.query_endpoint:
        return None
    check_endpoint(cfg, "agent.query_endpoint", cfg.agent.query_endpoint)
    try:
        munge.program("unmunge")
    except munge.MungeError as e:
        log.warning("job queries will all be refused: %s", e)
    try:
        return QueryServer(cfg, ctx, db_path, auth=auth, counts=counts)
    except NomadeError as e:
        log.error("no job queries: %s", e)
        return None


__all__ = ["OUTCOMES", "QUERY_DOMAIN", "AnyClientKey", "QueryServer", "TokenBucket", "admin_uids", "owns", "start"]
