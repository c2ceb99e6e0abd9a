"""The agent daemon: the thin I/O shell around ingest, state, scoring and publishing.

One thread runs ``Agent.run``: a ZeroMQ poller on the ROUTER (ingest) socket whose
timeout is the next timer, and timers for the scoring tick (``[agent] interval_s``),
the hook-spool drain (``[agent] spool_dirs``, every ``spool_interval_s``), and, every
``final_interval_s``, the Slurm rounds: requests of started jobs that no hook saw
(memory, GPUs, time limit: ``nomade.agent.requests``) and final states of ended jobs
(``nomade.agent.outcomes``), each one batched query through ``nomade.slurm``. The
decisions live in ``jobstate``, ``ingest``, ``scoring``, ``requests`` and ``outcomes``;
this module only moves bytes and calls them. A request answered by Slurm becomes a
``job.start`` message (source ``"slurm"``) that is stored and fed to the job state like
a hook event, so the next scoring tick sees it. A second thread serves the metrics (``exporter``),
a third the ``nomade job`` queries (``query``, with its own read-only store connection).

Shutdown (``close``, after ``run`` returns because ``should_stop()`` became true):
stop polling, drain and store what had already arrived and send its acks, drain the
spools once more, close every socket with a short linger so the acks leave, close the
store. A
collector whose last acks were lost resends; the store drops the duplicates. Nothing
acked is ever lost, because the store commits before the ack.

Comment advice: ``comments`` is the pure policy of ``nomade.agent.comment_policy`` (another
module) that turns predictions into Comment updates; ``apply_comment_updates`` writes
them through ``Slurm.set_comment`` and never lets a Slurm error stop the tick.

Job ends: each tick's predictions and every ended job go to ``summaries``
(``nomade.agent.summaries``), whose round after the final-state poll writes each ended
job's summary into its AdminComment (``[agent] summary_admin_comment``). Mail:
``mailer`` (``nomade.agent.mail``, ``[mail] enabled``) mails the users of jobs whose
risk reached ``[mail] min_level``, from the tick. Which models score: ``models``
(``nomade.agent.modelset``), reloaded when the site's models change.
"""

from __future__ import annotations

import errno
import gc
import logging
import math
import socket
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

import zmq

from nomade import wire, zmqkeys
from nomade.agent import outcomes, query, requests, scoring
from nomade.agent.exporter import Metrics, MetricsServer
from nomade.agent.ingest import Ingest, RateLimitedLog
from nomade.agent.jobstate import JobState, options_for
from nomade.agent.mail import Mailer
from nomade.agent.modelset import ModelSet
from nomade.agent.publisher import Publisher
from nomade.agent.summaries import SummaryWriter
from nomade.config import Config, check_endpoint
from nomade.slurmstates import is_final
from nomade.spool import Spool
from nomade.store import JOB_SAMPLE_FIELDS, RetentionPolicy, Store

log = logging.getLogger(__name__)

#: Most frames taken from the socket before they are stored and acked together.
MAX_FRAMES_PER_ROUND = 256
#: Job ids in one ``squeue`` call of the running-job check (``Agent.check_running``).
RUNNING_CHECK_BATCH = 1000
#: Linger (ms) at close, so the last acks and predictions can leave.
CLOSE_LINGER_MS = 1000
#: Ticks between two unfrozen full garbage collections (``Agent._gc_after_tick``): an hour at 30 s.
FULL_GC_EVERY = 120
#: Rows one periodic prune looks at (~0.5 s of the agent's thread), and the seconds to the
#: next one while a backlog is left (a first prune of a year-old store takes many).
PRUNE_MAX_ROWS = 200_000
PRUNE_AGAIN_S = 5.0


class CommentUpdate(Protocol):
    """One decision of the comment policy: set NØMADE's segment of ``job_id``'s
    Comment to ``segment`` (the user's text is kept by ``nomade.agent.comment_segment.merge``)."""

    job_id: str
    segment: str


class CommentPolicy(Protocol):
    """What the agent needs of ``nomade.agent.comment_policy.CommentPolicy``."""

    def decide(self, predictions: list[dict[str, Any]],
               running: Iterable[str] | None = None) -> Iterable[CommentUpdate]: ...


class CommentSlurm(Protocol):
    def get_comment(self, job_id: str) -> str: ...
    def set_comment(self, job_id: str, text: str) -> None: ...


def load_comment_policy(cfg: Config) -> CommentPolicy | None:
    """The comment policy of ``nomade.agent.comment_policy`` (None while that module is absent)."""
    try:
        from nomade.agent.comment_policy import CommentPolicy as Policy
    except ImportError as e:
        log.info("job Comment advice unavailable (%s): predictions are published only", e)
        return None
    policy: CommentPolicy = Policy(cfg.ml.alerts)
    return policy


def apply_comment_updates(updates: Iterable[CommentUpdate], slurm: CommentSlurm,
                          metrics: Metrics, errors: RateLimitedLog) -> int:
    """Write each update into its job's Comment, keeping the user's text; how many were
    written. A Slurm error (the job ended, slurmctld down) is counted and logged, never raised."""
    from nomade.agent.comment_policy import apply

    written = 0
    for update in updates:
        try:
            written += apply(slurm, update)   # keeps the user's text (nomade.agent.comment_segment.merge)
        except Exception as e:  # a Slurm failure must not stop the tick: count, log, go on
            metrics.comment_errors_total += 1
            errors.warning("job %s: Comment not updated: %s", update.job_id, e)
    metrics.comment_updates_total += written
    return written


class _StateSink:
    """Spool drain target: store the events, then feed them to the job state."""

    def __init__(self, store: Store, state: JobState) -> None:
        self.store, self.state = store, state
        self.count = 0
        self.ended: list[str] = []

    def write_messages(self, messages: Iterable[Any]) -> None:
        messages = list(messages)
        self.store.write_messages(messages)
        self.ended += [e.job_id for e in self.state.apply(messages).ended]
        self.count += len(messages)


class Agent:
    """The agent process's sockets, timers and parts; ``run`` then ``close``."""

    def __init__(self, cfg: Config, *, store: Store | None = None, slurm: Any = None,
                 comments: CommentPolicy | None = None, name: str | None = None,
                 spool_interval_s: float = 1.0, final_interval_s: float = 2.0) -> None:
        self.cfg = cfg
        self.name = name or socket.gethostname().split(".")[0]
        paths = cfg.paths()
        if store is None:
            paths.db_path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
            store = Store(paths.db_path)
        self.store = store
        self.slurm = slurm
        self.comments = comments
        self.metrics = Metrics()
        self.interval_s = cfg.agent.interval_s
        self.spool_interval_s = spool_interval_s
        self.final_interval_s = final_interval_s
        self.sample_interval_s = cfg.collector.interval_s
        self.state = JobState.rebuild(store, time.time(), JOB_SAMPLE_FIELDS,
                                      **options_for(cfg.ml.sequence_length, self.sample_interval_s),
                                      max_jobs=cfg.agent.max_running_jobs,
                                      max_orphans=cfg.agent.max_orphan_jobs,
                                      max_nodes=cfg.agent.max_nodes_per_job)
        self.state.limit_hits = self.metrics.limit_hits_total   # JobState counts into the metric
        self.tracker = outcomes.FinalStateTracker(give_up_after_s=cfg.agent.final_state_timeout_s,
                                                    max_jobs=cfg.agent.max_final_state_jobs)
        self.requests = requests.RequestTracker()
        self.summaries = (SummaryWriter(max_jobs=cfg.agent.max_running_jobs)
                          if cfg.agent.summary_admin_comment and slurm is not None else None)
        self.mailer = Mailer(cfg.mail, cfg.ml.alerts.confirm_predictions) if cfg.mail.enabled else None
        self.spools = [Spool(d) for d in cfg.agent.spool_dirs]
        self.models = ModelSet(cfg, paths.models_dir, Path(store.path).parent, self.metrics)
        self.kept_neighbours = scoring.KeptNeighbours()   # the GNN's, from tick to tick
        self._comment_log = RateLimitedLog(log, 30.0)
        self._max_round_bytes = cfg.agent.max_round_mb << 20
        self._max_sender_bytes = cfg.agent.max_sender_round_mb << 20
        for key, endpoint in (("agent.ingest_endpoint", cfg.agent.ingest_endpoint),
                              ("agent.publish_endpoint", cfg.agent.publish_endpoint),
                              ("agent.query_endpoint", cfg.agent.query_endpoint)):
            if endpoint:   # query_endpoint "": no query socket
                check_endpoint(cfg, key, endpoint)
        self._ctx = zmq.Context()
        self._auth = zmqkeys.start_authenticator(self._ctx, cfg.security)
        self.ingest = Ingest(store, self.state, self.metrics, self.name,
                             keys=zmqkeys.authorized_keys(self._auth))
        self.router = self._socket(zmq.ROUTER, cfg.agent.ingest_endpoint)
        self.pub = self._socket(zmq.PUB, cfg.agent.publish_endpoint)
        self.publisher = Publisher(self.pub, store, self.name)
        self.ingest_endpoint = self.router.getsockopt_string(zmq.LAST_ENDPOINT)
        self.publish_endpoint = self.pub.getsockopt_string(zmq.LAST_ENDPOINT)
        self.metrics_server = self._metrics_server(cfg.agent.metrics_address)
        self.query = query.start(cfg, self._ctx, self.store.path, auth=self._auth,   # `nomade job`
                                 counts=self.metrics.queries_total)
        self.metrics.running_jobs = len(self.state.running)
        gc.freeze()   # the rebuilt state: see _gc_after_tick
        log.info("agent %s: ingest on %s, predictions on %s, %d running jobs from the store",
                 self.name, self.ingest_endpoint, self.publish_endpoint, len(self.state.running))

    def _socket(self, kind: int, endpoint: str) -> zmq.Socket:
        sock = self._ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        if kind == zmq.ROUTER:
            sock.setsockopt(zmq.MAXMSGSIZE, wire.MAX_FRAME_BYTES)
            sock.setsockopt(zmq.ROUTER_HANDOVER, 1)   # a restarted collector keeps its identity
            sock.setsockopt(zmq.RCVHWM, self.cfg.agent.receive_hwm)
        zmqkeys.secure_server(sock, self.cfg.security, self._auth)
        sock.bind(endpoint)
        return sock

    def _metrics_server(self, address: str) -> MetricsServer | None:
        if not address:
            return None
        host, _, port = address.rpartition(":")
        server = MetricsServer(self.metrics, host, int(port))
        log.info("metrics on http://%s:%d/metrics", *server.address)
        return server

    # -- the loop

    def run(self, should_stop: Callable[[], bool]) -> None:
        """Serve until ``should_stop()`` is true (checked at least every 0.2 s)."""
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        now = time.monotonic()
        next_tick, next_spool, next_final = now, now, now + self.final_interval_s
        next_check = now + self.cfg.agent.running_check_interval_s
        every = self.cfg.storage.prune_interval_s
        next_prune = now + every if every else math.inf
        while not should_stop():
            now = time.monotonic()
            if now >= next_spool:
                self.drain_spools()
                next_spool = now + self.spool_interval_s
            if now >= next_final:
                self.poll_requests()
                self.poll_final_states()
                self.write_summaries()
                next_final = now + self.final_interval_s
            if now >= next_check:
                self.check_running(time.time())
                next_check = now + self.cfg.agent.running_check_interval_s
            if now >= next_tick:
                self.tick()
                next_tick = now + self.interval_s
            elif now >= next_prune:   # between ticks; sooner again while a backlog is left
                done = self.prune(time.time())
                next_prune = now + (every if done else PRUNE_AGAIN_S)
            wait = min(next_tick, next_spool, next_final, now + 0.2) - time.monotonic()
            try:
                ready = dict(poller.poll(max(0, int(wait * 1000))))
            except zmq.ZMQError as e:
                if e.errno == errno.EINTR:   # a signal: look at should_stop again
                    continue
                raise
            if self.router in ready:
                self.receive()

    def receive(self, block_ms: int = 0) -> int:
        """Take waiting messages (at most ``MAX_FRAMES_PER_ROUND`` and ``[agent]
        max_round_mb``), store, ack; how many. A sender's frames beyond ``[agent]
        max_sender_round_mb`` in the round (after its first) are dropped unacked (counted;
        it resends). With CURVE a sender is its key's name, else its connection. A
        failed store write is logged and nothing is acked (the senders resend)."""
        received: list[list[Any]] = []
        users: list[str | None] = []
        per_sender: dict[bytes | str, int] = {}
        round_bytes, m = 0, self.metrics
        while len(received) < MAX_FRAMES_PER_ROUND and round_bytes < self._max_round_bytes:
            try:
                frames = self.router.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            except zmq.ZMQError as e:
                if e.errno == errno.EINTR:
                    break
                raise
            size = sum(len(f) for f in frames)
            user = self._user_id(frames[-1])
            who: bytes | str = user if user is not None else frames[0].bytes
            before = per_sender.get(who, 0)
            per_sender[who] = before + size
            round_bytes += size
            if before and before + size > self._max_sender_bytes:   # its first frame always goes
                m.limit_hits_total["sender_round_bytes"] += 1
                continue
            # small frames copied, big ones decoded in place (zero-copy)
            received.append([f.bytes if len(f) < 65536 else f.buffer for f in frames])
            users.append(user)
        if round_bytes >= self._max_round_bytes:
            m.limit_hits_total["round_bytes"] += 1
        self.metrics.queue_depth = len(received)
        if not received:
            return 0
        try:
            replies = self.ingest.handle(received, users if self._auth is not None else None)
        except Exception as e:  # store full or locked: do not ack, do not die; they resend
            self.metrics.store_errors_total += 1
            log.error("store write failed, %d frames not acknowledged: %s", len(received), e)
            return len(received)
        for reply in replies:
            try:
                self.router.send_multipart(reply, zmq.NOBLOCK)
            except zmq.ZMQError:   # peer gone (ROUTER drops unroutable): it resends
                pass
        self._changes()
        return len(received)

    def _user_id(self, frame: zmq.Frame) -> str | None:
        """With CURVE, the ZAP User-Id of ``frame``: the name of the key that sent it
        (``nomade.zmqkeys``; "" for a key no longer authorized, which matches no sender);
        None without CURVE."""
        if self._auth is None:
            return None
        try:
            return str(frame.get("User-Id"))
        except zmq.ZMQError:
            return ""

    def _changes(self) -> None:
        changes = self.ingest.take_changes()
        for ended in changes.ended:
            if ended.state is None:
                self.tracker.job_ended(ended.job_id, ended.end_ts)
        self._jobs_ended([e.job_id for e in changes.ended])
        self.metrics.running_jobs = len(self.state.running)

    # -- timers

    def drain_spools(self) -> int:
        """Move the hook events of ``[agent] spool_dirs`` into the store and the state."""
        from nomade.agent.hook_drain import drain_spool

        sink = _StateSink(self.store, self.state)
        for spool in self.spools:
            try:
                drain_spool(spool, sink, self.name)
            except Exception as e:  # unreadable dir or store error: the events stay; retry
                log.warning("spool %s not drained: %s", spool.dir, e)
        self.metrics.spool_events_total += sink.count
        self._jobs_ended(sink.ended)
        self.metrics.running_jobs = len(self.state.running)
        return sink.count

    def check_running(self, now: float) -> int:
        """End the started jobs (started over ``running_check_interval_s`` ago) that
        Slurm no longer lists as running: a ``job.end`` (source "slurm") with Slurm's final
        state when it still knows the job, else none (the final-state poller asks). A job
        whose end event was lost, or a start nobody ran, is not scored forever. How many
        ended; a failed query or store write is logged and retried next time."""
        if self.slurm is None:
            return 0
        old = now - self.cfg.agent.running_check_interval_s
        ids = [r.job_id for r in self.state.scorable() if r.request["start_ts"] < old]
        messages: list[wire.Message] = []
        for k in range(0, len(ids), RUNNING_CHECK_BATCH):
            chunk = ids[k:k + RUNNING_CHECK_BATCH]
            try:
                listed = {job.job_id: job for job in self.slurm.list_jobs(job_ids=chunk)}
            except Exception as e:  # a Slurm outage must not stop the agent: try again later
                log.warning("running-job check of %d jobs failed: %s", len(chunk), e)
                return 0
            messages += [m for j in chunk if (m := self._end_unless_running(j, listed.get(j), now))]
        if not messages:
            return 0
        sink = _StateSink(self.store, self.state)
        try:
            sink.write_messages(messages)
        except Exception as e:  # store locked or full: the next check finds them again
            log.warning("ends of %d jobs Slurm no longer runs not stored: %s", len(messages), e)
            return 0
        log.info("%d started jobs are no longer running in Slurm: ended", len(messages))
        self._jobs_ended(sink.ended)
        self.metrics.running_jobs = len(self.state.running)
        return len(messages)

    def _jobs_ended(self, job_ids: list[str]) -> None:
        """Jobs left the running set: drop their metrics, queue their summaries."""
        self.metrics.jobs_ended(job_ids)
        if self.summaries is not None:
            self.summaries.ended(job_ids, time.time())

    def _end_unless_running(self, job_id: str, job: Any, now: float) -> wire.Message | None:
        """The ``job.end`` of a started job given Slurm's view of it (``job``; None: Slurm
        does not list it), None while Slurm says it is not final (running, requeued)."""
        body: dict[str, Any] = {"job_id": job_id, "source": outcomes.SOURCE, "end_ts": now}
        if job is not None and job.state is not None:
            if not is_final(job.state):
                return None
            body.update(state=job.state, exit_code=job.exit_code,
                        end_ts=now if job.end_ts is None else job.end_ts)
        try:
            return wire.make("job.end", self.name, 0, body, now)
        except wire.WireError as e:  # Slurm said something the wire refuses: end it plainly
            log.warning("job %s: Slurm's end refused (%s); ended without a state", job_id, e)
            return wire.make("job.end", self.name, 0, {**body, "state": None, "exit_code": None}, now)

    def poll_requests(self) -> int:
        """Complete the requests of started jobs that lack memory, GPUs or time limit from
        one batched Slurm query (``nomade.agent.requests``); how many jobs were completed.
        A failed query is logged and backed off; a failed store write is retried next round."""
        if self.slurm is None:
            return 0
        now = time.time()
        self.requests.observe(requests.lacking((r.job_id, r.request) for r in self.state.scorable()),
                              now)
        due = self.requests.due(now)
        if not due:
            return 0
        try:
            listed = {}
            for job in self.slurm.list_jobs(job_ids=due):   # array tasks: by "A_T" and their own id
                listed[job.job_id] = listed[job.own_id or job.job_id] = job
        except Exception as e:  # a Slurm outage must not stop the agent: log, back off, go on
            log.warning("request query for %d jobs failed: %s", len(due), e)
            decisions: list[requests.Answer | requests.GiveUp] = list(self.requests.query_failed(now, due))
        else:
            decisions = self.requests.answered(now, {j: listed.get(j) for j in due})
        messages = []
        for d in decisions:
            if isinstance(d, requests.GiveUp):
                log.warning("job %s: request left incomplete: %s", d.job_id, d.reason)
                continue
            try:
                messages.append(wire.make("job.start", self.name, 0, d.body, now))
            except wire.WireError as e:  # Slurm said something the wire refuses: say so, skip
                log.warning("job %s: Slurm's view of its request refused: %s", d.job_id, e)
        if not messages:
            return 0
        try:
            _StateSink(self.store, self.state).write_messages(messages)
        except Exception as e:  # store locked or full: ask again next round
            log.warning("requests of %d jobs not stored: %s", len(messages), e)
            self.requests.retry(m.body["job_id"] for m in messages)
            return 0
        return len(messages)

    def poll_final_states(self) -> None:
        """Ask Slurm for the final state of ended jobs that lack one (backed off)."""
        if self.slurm is None:
            return
        try:
            decisions = outcomes.poll_once(self.tracker, self.store, self.slurm, time.time())
        except Exception as e:  # store trouble: try again next round
            log.warning("final-state round failed: %s", e)
            return
        self.metrics.limit_hits_total["final_state_jobs"] += self.tracker.full
        for d in decisions:
            if isinstance(d, outcomes.Final):
                self.state.final_state(d.job_id, d.state)
                self.metrics.final_states_total += 1

    def write_summaries(self) -> int:
        """Write the due job-end summaries into Slurm (``nomade.agent.summaries``); how
        many. Bounded in jobs and time; never raises."""
        if self.summaries is None or self.slurm is None:
            return 0
        written = self.summaries.round(self.store, self.slurm, time.time())
        for failed, lead_s in self.summaries.outcomes:
            self.metrics.job_outcome(failed, lead_s)
        self.summaries.outcomes.clear()
        self.metrics.summaries_written_total = self.summaries.written
        self.metrics.summaries_failed_total = self.summaries.failed + self.summaries.dropped
        return written

    def send_mail(self, predictions: list[dict[str, Any]], running: list[str]) -> int:
        """Mail the users of jobs whose risk reached ``[mail] min_level`` (``nomade.agent.mail``);
        how many were sent. Never raises."""
        if self.mailer is None or self.slurm is None:
            return 0
        sent = self.mailer.tick(predictions, running, self.slurm)
        self.metrics.mail_sent_total = self.mailer.sent
        self.metrics.mail_failed_total = self.mailer.failed
        return sent

    def prune(self, now: float) -> bool:
        """Apply the ``[storage]`` retention policy for at most ``PRUNE_MAX_ROWS`` rows,
        log and count what went; whether it is done. Never raises."""
        try:
            counts = self.store.prune(now, RetentionPolicy.from_config(self.cfg.storage),
                                      max_rows=PRUNE_MAX_ROWS)
        except Exception as e:  # a locked or full store must not stop the agent
            log.error("prune failed: %s", e)
            return True
        removed = self.metrics.pruned_rows_total
        removed["job_samples", "thin"] += counts.job_samples_thinned
        removed["job_samples", "drop"] += counts.job_samples_dropped
        removed["node_samples", "drop"] += counts.node_samples
        removed["predictions", "drop"] += counts.predictions
        if counts.total():
            log.info("pruned %d job samples (thinned), %d (dropped), %d node samples, "
                     "%d predictions%s", counts.job_samples_thinned, counts.job_samples_dropped,
                     counts.node_samples, counts.predictions, "" if counts.done else "; more to do")
        return counts.done

    def tick(self) -> list[dict[str, Any]]:
        """Score every running job, publish and store the predictions, apply Comment
        advice; the predictions (none without a model). Never raises."""
        t0 = time.perf_counter()
        now = time.time()
        predictions: list[dict[str, Any]] = []
        try:
            self.state.expire(now)
            scorer = self.models.current()
            if scorer is not None:
                step_s, length = scorer.grid   # the models' own time grid, not the sampling interval
                inputs = scoring.tick_inputs(self.state, now, length, step_s)
                predictions = scoring.score(inputs, scorer, kept=self.kept_neighbours)
                for m in self.publisher.publish(predictions):
                    self.metrics.predictions_total[m.body["level"]] += 1
                running = [r.job_id for r in inputs.jobs]   # state.scorable(), sorted once a tick
                if self.comments is not None and self.slurm is not None:
                    # comment advice: the policy decides, the Slurm call is made here
                    apply_comment_updates(self.comments.decide(predictions, running), self.slurm,
                                          self.metrics, self._comment_log)
                if self.summaries is not None:
                    self.summaries.observe(predictions, running)
                self.send_mail(predictions, running)
        except Exception:  # a bug or a broken model must not stop ingest: log, count, go on
            self.metrics.tick_errors_total += 1
            log.exception("scoring tick failed")
        self.metrics.scored(predictions)   # none scored (no model, a failure): no stale risk shown
        dt = time.perf_counter() - t0
        self.metrics.tick_done(dt)
        self.metrics.running_jobs = len(self.state.running)
        self._gc_after_tick()
        return predictions

    def _gc_after_tick(self) -> None:
        """Keep the cyclic GC's full passes out of the tick: with 10,000 running jobs a
        full pass walks the whole long-lived job state (0.12-0.35 s, a third of the tick
        budget). What survives a tick is frozen (``gc.freeze``: never scanned again);
        cycles among frozen objects that die later are reclaimed by one unfrozen full
        collection every ``FULL_GC_EVERY`` ticks, here, after the tick is timed."""
        if self.metrics.ticks_total % FULL_GC_EVERY == 0:
            gc.unfreeze()
            gc.collect()
        gc.freeze()

    # -- shutdown

    def close(self) -> None:
        """Stop accepting, store and ack what arrived, close everything (idempotent)."""
        if self.router.closed:
            return
        for _ in range(64):   # what had arrived; a peer that keeps sending cannot hold us
            if not self.receive():
                break
        self.drain_spools()
        self.router.setsockopt(zmq.LINGER, CLOSE_LINGER_MS)
        self.pub.setsockopt(zmq.LINGER, CLOSE_LINGER_MS)
        self.router.close()
        self.pub.close()
        if self.query is not None:
            self.query.close()
        if self._auth is not None:
            self._auth.stop()
        self._ctx.term()
        if self.metrics_server is not None:
            self.metrics_server.close()
        self.store.close()
        log.info("agent stopped: %d batches, %d samples stored", self.metrics.batches_total,
                 self.metrics.samples_total)
