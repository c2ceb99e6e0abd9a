"""Record a lab corpus through the whole live pipeline, resumably.

``python -m nomade.tools.lab record --dir D --jobs N --seed S --max-running K`` (root, on the
project's test cluster): starts the agent and a collector with a config of their own
under ``D`` (store ``D/nomade.db``, every record kept), submits the plan of ``S``
(``nomade.tools.lab.shapes``) keeping at most ``K`` jobs (array tasks count one each) in
Slurm, and writes the ledger ``D/plan.jsonl``: one JSON line per event (``submit`` with
the shape, variant, user, options and drawn parameters; ``end`` with the final state
Slurm gave; ``array_tasks`` mapping an array's task ids to their own job ids;
``recorder_cancel`` for jobs the recorder cancelled when it was stopped). The shape
of a job is metadata for evaluation, never a feature.

Resuming: the plan is deterministic in the seed, so indices that already ended (not by
the recorder's own cancel) are skipped; jobs of a previous run that Slurm still runs are
adopted. When the cluster is down it is started with ``--first-job-id`` above every job
id the store or ledger holds (the store keys jobs by job id).

Continuing a shipped corpus when its recording directory is gone: ``--after FILE`` treats
the plan indices of that seed the corpus holds as recorded (an index whose jobs all
ended UNKNOWN is not in it and is recorded again) and starts job ids above its own; the
ledger notes the file (an ``after`` event), so a resume and ``export`` find it without
the flag. ``export`` writes that corpus's jobs followed by the new ones.

SIGTERM / SIGINT: stop submitting, cancel the running jobs (recorded), wait until Slurm
has ended them and the agent stored their final states, stop the daemons (they drain
what arrived), exit 0.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nomade.slurm import Slurm, SlurmError
from nomade.slurmstates import is_final, normalise
from nomade.tools.lab import shapes
from nomade.tools.lab.pipeline import (
    CLUSTER,
    LAB_USERS,
    Daemons,
    ensure_users,
    wait_labelled,
    write_config,
)

if TYPE_CHECKING:
    from nomade.corpus import Corpus

SAMPLE_INTERVAL_S = 3.0
N_SCRATCH = 4
MAX_ERRORS = 100
MAX_RESTARTS = 5
REPO = Path(__file__).resolve().parents[3]   # nomade/tools/lab/record.py -> the checkout


def log(text: str) -> None:
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {text}", flush=True)


class Ledger:
    """The append-only ``plan.jsonl``: one fsync'd JSON line per event."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.events: list[dict[str, Any]] = []
        if path.exists():
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    self.events.append(json.loads(line))
                except ValueError:
                    log(f"{path}:{n}: unreadable line skipped (a crash mid-write)")

    def add(self, event: str, **body: Any) -> None:
        rec = {"event": event, "ts": round(time.time(), 3), **body}
        self.events.append(rec)
        with open(self.path, "a") as f:
            f.write(json.dumps(rec, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def after(self) -> Path | None:
        """The earlier corpus this recording continues (its ``after`` event), if any."""
        return next((Path(e["corpus"]) for e in reversed(self.events) if e["event"] == "after"), None)

    def max_job_id(self) -> int:
        ids = [int(e["job_id"]) for e in self.events if str(e.get("job_id", "")).isdigit()]
        ids += [int(t) for e in self.events if e["event"] == "array_tasks" for t in e["tasks"].values()]
        return max(ids, default=0)


@dataclass
class Live:
    """A submitted plan job Slurm has not ended yet (an array: its tasks)."""

    job: shapes.CorpusJob
    job_id: str
    started: float | None = None
    tasks: dict[str, str] = field(default_factory=dict)      # task id -> own job id
    final: dict[str, str] = field(default_factory=dict)      # own job id -> final state
    size: int = 1


def _squeue(slurm: Slurm, ids: list[str]) -> list[dict[str, Any]]:
    """Raw ``squeue --json --states=all`` records of these jobs (array tasks included)."""
    proc = subprocess.run([slurm.tool("squeue"), "--json", "--states=all", "--jobs=" + ",".join(ids)],
                          capture_output=True, text=True, timeout=60, check=False)
    if proc.returncode != 0:   # one id Slurm no longer knows fails the whole list
        proc = subprocess.run([slurm.tool("squeue"), "--json", "--states=all"],
                              capture_output=True, text=True, timeout=60, check=True)
    return [j for j in json.loads(proc.stdout).get("jobs", []) if isinstance(j, dict)]


def _num(raw: Any) -> int | None:
    if isinstance(raw, dict):
        raw = raw.get("number") if raw.get("set", True) else None
    return raw if isinstance(raw, int) else None


class Recorder:
    """The recording loop (see the module docstring)."""

    def __init__(self, ws: Path, n_jobs: int, seed: int, max_running: int, poll_s: float = 3.0,
                 after: Path | None = None) -> None:
        self.ws, self.n_jobs, self.seed, self.max_running, self.poll_s = ws, n_jobs, seed, max_running, poll_s
        self.slurm = Slurm(use_pyslurm="never")
        self.ledger = Ledger(ws / "plan.jsonl")
        self.paths = shapes.Paths(work=str(ws / "bin" / "work.py"), tmp=str(ws / "tmp"),
                                  scratch=tuple(str(ws / "scratch" / f"s{k}") for k in range(N_SCRATCH)),
                                  out=str(CLUSTER / "out"))
        self.live: dict[str, Live] = {}
        self.stopping = False
        self.restarts: dict[str, int] = {}
        self.id_floor = 0      # the highest job id the store, ledger or earlier corpus held at start
        self.after_floor = 0   # the highest job id of the earlier corpus (--after)
        self.done_before: set[int] = set()   # plan indices the earlier corpus (--after) holds
        after = after or self.ledger.after()
        if after is not None:
            self._read_after(after)

    # ------------------------------------------------------------ setup
    def prepare(self) -> None:
        """Workload program, temp dir, scratch filesystems, users, cluster."""
        (self.ws / "bin").mkdir(parents=True, exist_ok=True)
        os.chmod(self.ws, 0o755)
        os.chmod(self.ws / "bin", 0o755)
        shutil.copyfile(Path(__file__).with_name("work.py"), self.paths.work)
        os.chmod(self.paths.work, 0o644)
        Path(self.paths.tmp).mkdir(exist_ok=True)
        os.chmod(self.paths.tmp, 0o1777)
        for d in self.paths.scratch:
            self._mount_scratch(Path(d))
        ensure_users(LAB_USERS)
        self.id_floor = self.job_id_floor()
        if not self.slurm.ping():
            first = self.id_floor + 1
            log(f"cluster down: starting it (4 nodes x 8 CPUs, first job id {first})")
            subprocess.run([str(REPO / "slurm-conf" / "start-test-cluster.sh"), "--nodes", "4",
                            "--cpus", "8", "--first-job-id", str(first)], check=True)

    def job_id_floor(self) -> int:
        """The highest job id the store, the ledger or the earlier corpus holds: Slurm must
        give higher ones (the store keys jobs by job id)."""
        return max(self.after_floor, self._max_store_id(), self.ledger.max_job_id())

    def _read_after(self, path: Path) -> None:
        """The plan indices of this seed and the highest job id of an earlier corpus; the
        ledger notes it. ``SystemExit`` when it holds no job of this seed (a wrong seed
        would record its whole plan again)."""
        from nomade import corpus
        earlier = corpus.read(path)
        self.done_before = plan_indices(earlier, self.seed)
        if not self.done_before:
            raise SystemExit(f"{path}: no job of seed {self.seed} (its seeds: {sorted(_seeds(earlier))}); "
                             f"continue it with its own seed")
        self.after_floor = max((int(j["job_id"]) for j in earlier.rows.jobs if str(j["job_id"]).isdigit()),
                               default=0)
        if self.ledger.after() != path.resolve():
            self.ledger.add("after", corpus=str(path.resolve()), indices=len(self.done_before),
                            max_job_id=self.after_floor)
        log(f"{path}: {len(self.done_before)} plan indices of seed {self.seed} recorded, "
            f"job ids up to {self.after_floor}")

    def _mount_scratch(self, d: Path) -> None:
        """A ``SCRATCH_MB`` ext4 filesystem on a loop file, mode 1777 (kept when mounted)."""
        d.mkdir(parents=True, exist_ok=True)
        if subprocess.run(["mountpoint", "-q", str(d)], check=False).returncode == 0:
            return
        img = d.with_suffix(".img")
        subprocess.run(["truncate", "-s", f"{shapes.SCRATCH_MB}M", str(img)], check=True)
        subprocess.run(["mkfs.ext4", "-q", "-F", str(img)], check=True)
        subprocess.run(["mount", "-o", "loop", str(img), str(d)], check=True)
        os.chmod(d, 0o1777)

    def _max_store_id(self) -> int:
        db = self.ws / "nomade.db"
        if not db.exists():
            return 0
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            row = conn.execute("SELECT max(CAST(job_id AS INTEGER)) FROM jobs").fetchone()
        return int(row[0] or 0)

    # ------------------------------------------------------------ resume
    def todo(self) -> list[shapes.CorpusJob]:
        """Plan jobs not yet recorded; jobs of an earlier run still in Slurm are adopted."""
        ended = {e["job_id"] for e in self.ledger.events if e["event"] == "end"}
        cancelled = {e["job_id"] for e in self.ledger.events if e["event"] == "recorder_cancel"}
        submitted = {e["index"]: e["job_id"] for e in self.ledger.events if e["event"] == "submit"}
        plan = shapes.plan(self.n_jobs, list(LAB_USERS), self.seed, self.paths)
        pending_ids = [j for i, j in submitted.items() if j not in ended and i < self.n_jobs]
        known = {str(_num(r.get("array_job_id")) or _num(r.get("job_id"))) for r in
                 (_squeue(self.slurm, pending_ids) if pending_ids else [])}
        todo = []
        for job in plan:
            if job.index in self.done_before:
                continue
            job_id = submitted.get(job.index)
            if job_id is not None and job_id in ended and job_id not in cancelled:
                continue
            if job_id is not None and job_id not in ended and job_id in known:
                self.live[job_id] = Live(job, job_id, size=max(1, len(job.array_variants)))
                continue
            if job_id is not None and job_id not in ended:
                self.ledger.add("lost", index=job.index, job_id=job_id)
            todo.append(job)
        log(f"plan of {self.n_jobs} (seed {self.seed}): {self.n_jobs - len(todo) - len(self.live)} "
            f"recorded, {len(self.live)} adopted, {len(todo)} to go")
        return todo

    # ------------------------------------------------------------ loop
    def running(self) -> int:
        return sum(lv.size - len(lv.final) for lv in self.live.values())

    def submit(self, job: shapes.CorpusJob) -> str:
        """Submit one plan job as its user and record it; its job id."""
        job_id = self.slurm.submit(job.script, options=list(job.options), as_user=job.user)
        if int(job_id) <= self.id_floor:   # the cluster was restarted: ids would collide in the store
            self.slurm.cancel(job_id)
            raise SystemExit(
                f"Slurm gave job id {job_id}, but the store already holds ids up to {self.id_floor}: the "
                f"cluster was restarted. Restart it with slurm-conf/start-test-cluster.sh --nodes 4 --cpus 8 "
                f"--first-job-id {self.id_floor + 1} (or stop it and let the recorder start it), then resume.")
        self.live[job_id] = Live(job, job_id, size=max(1, len(job.array_variants)))
        self.ledger.add("submit", index=job.index, job_id=job_id, seed=self.seed, shape=job.shape,
                        variant=job.variant, user=job.user, options=list(job.options),
                        cancel_after_s=job.cancel_after_s, params=job.params,
                        array_variants=list(job.array_variants))
        return job_id

    def poll(self) -> None:
        """Note starts and ends; cancel ``cancel`` jobs when due; clean ended jobs' files."""
        if not self.live:
            return
        now = time.time()
        by_master: dict[str, list[dict[str, Any]]] = {}
        for raw in _squeue(self.slurm, list(self.live)):
            master = str(_num(raw.get("array_job_id")) or _num(raw.get("job_id")))
            by_master.setdefault(master, []).append(raw)
        for job_id, lv in list(self.live.items()):
            records = by_master.get(job_id, [])
            for raw in records:
                own, task = str(_num(raw.get("job_id"))), _num(raw.get("array_task_id"))
                state = normalise(raw.get("job_state"))
                if lv.job.array_variants and task is not None and own != "None":
                    lv.tasks.setdefault(str(task), own)
                if state == "RUNNING" and lv.started is None:
                    lv.started = now
                if state and is_final(state) and (task is not None or not lv.job.array_variants):
                    lv.final[own] = state
            if lv.started and lv.job.cancel_after_s is not None and not lv.final \
                    and now - lv.started >= lv.job.cancel_after_s:
                self.slurm.cancel(job_id)
            if not records and now - self._submitted_ts(job_id) > 60:
                lv.final.setdefault(job_id, "UNKNOWN")
            if len(lv.final) >= lv.size:
                self._ended(lv)

    def _submitted_ts(self, job_id: str) -> float:
        return next((e["ts"] for e in reversed(self.ledger.events)
                     if e["event"] == "submit" and e["job_id"] == job_id), 0.0)

    def _ended(self, lv: Live) -> None:
        if lv.job.array_variants:
            self.ledger.add("array_tasks", index=lv.job.index, job_id=lv.job_id, tasks=lv.tasks)
        self.ledger.add("end", index=lv.job.index, job_id=lv.job_id, shape=lv.job.shape, states=lv.final)
        del self.live[lv.job_id]
        for own in lv.final:
            self._clean(own)

    def _clean(self, job_id: str) -> None:
        """Remove what a job left in the scratch filesystems and the temp dir."""
        for d in (*self.paths.scratch, self.paths.tmp):
            for p in Path(d).glob(f"*-{job_id}*"):
                if p.is_file() and (p.name.startswith(f"out-{job_id}-") or p.name == f"thrash-{job_id}"):
                    p.unlink(missing_ok=True)

    def run(self, daemons: Daemons) -> None:
        """Submit and poll until the plan is done or a stop is asked for. A failing Slurm
        command or a dead daemon is logged and retried (a daemon restarted) rather than
        ending hours of recording; ``MAX_ERRORS`` in a row end it."""
        todo = self.todo()
        total, errors = len(todo), 0
        while (todo or self.live) and not self.stopping:
            try:
                self._revive(daemons)
                self.poll()
                while todo and not self.stopping and self.running() < self.max_running:
                    job_id = self.submit(todo[0])
                    job = todo.pop(0)
                    log(f"[{total - len(todo)}/{total}] plan #{job.index} -> job {job_id} "
                        f"{job.user} {job.shape}/{job.variant}")
                errors = 0
            except (OSError, ValueError, subprocess.SubprocessError, SlurmError) as e:
                errors += 1
                log(f"error {errors}/{MAX_ERRORS}: {type(e).__name__}: {e}")
                if errors >= MAX_ERRORS:
                    raise
            time.sleep(self.poll_s)
        if self.stopping:
            self.cancel_live()

    def _revive(self, daemons: Daemons) -> None:
        """Restart a daemon that exited (at most ``MAX_RESTARTS`` times each)."""
        for name, proc in list(daemons.procs.items()):
            if proc.poll() is None:
                continue
            self.restarts[name] = self.restarts.get(name, 0) + 1
            if self.restarts[name] > MAX_RESTARTS:
                daemons.check()
            log(f"the {name} exited with {proc.returncode}; restart {self.restarts[name]} "
                f"(see {self.ws}/{name}.log)")
            daemons.procs.pop(name)
            daemons.start(name)

    def cancel_live(self) -> None:
        """Cancel what still runs (recorded), wait up to 90 s for Slurm to end it."""
        for job_id in list(self.live):
            self.ledger.add("recorder_cancel", index=self.live[job_id].job.index, job_id=job_id)
            try:
                self.slurm.cancel(job_id)
            except Exception as e:  # a job that just ended; the poll sees it
                log(f"scancel {job_id}: {e}")
        deadline = time.time() + 90
        while self.live and time.time() < deadline:
            time.sleep(self.poll_s)
            self.poll()
        log(f"stopped; {len(self.live)} job(s) not seen ending")


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m nomade.tools.lab record", description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", type=Path, default=Path("/tmp/nomade-corpus"))
    p.add_argument("--jobs", type=int, default=2000, help="plan size (indices 0..N-1)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--max-running", type=int, default=20, help="jobs (array tasks) in Slurm at once")
    p.add_argument("--after", type=Path, metavar="CORPUS",
                   help="an earlier corpus of this seed: its plan indices count as recorded and job ids "
                        "start above its own (continue a corpus whose recording directory is gone)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Record until the plan is done or SIGTERM/SIGINT; 0 then."""
    a = _args(argv)
    if os.geteuid() != 0:
        print("the recorder needs root: it submits jobs as the lab users and mounts scratch", file=sys.stderr)
        return 2
    a.dir.mkdir(parents=True, exist_ok=True)
    (a.dir / "record.pid").write_text(f"{os.getpid()}\n")
    rec = Recorder(a.dir, a.jobs, a.seed, a.max_running, after=a.after)

    def stop(signum: int, _frame: Any) -> None:
        log(f"signal {signum}: stopping (cancelling running jobs)")
        rec.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    rec.prepare()
    config = write_config(a.dir, sample_interval_s=SAMPLE_INTERVAL_S, header="nomade.tools.lab.record",
                          score=False)
    daemons = Daemons(a.dir, config)
    daemons.start("agent")
    daemons.start("collector")
    try:
        rec.run(daemons)
        last = [own for e in rec.ledger.events[-100:] if e["event"] == "end"
                for own, state in e["states"].items() if state != "UNKNOWN"][-50:]
        missing = len(last) - len(wait_labelled(a.dir / "nomade.db", last, timeout_s=60))
        log(f"agent stored final states; {missing} of the last jobs without one")
    finally:
        daemons.stop_all()
    log("recorder done")
    return 0


# ------------------------------------------------------------------ export
def plan_indices(earlier: Corpus, seed: int) -> set[int]:
    """The plan indices of ``seed`` a corpus holds."""
    return {int(m["plan_index"]) for m in earlier.meta.values()
            if m.get("seed") == seed and m.get("plan_index") is not None}


def _seeds(earlier: Corpus) -> set[int]:
    return {int(m["seed"]) for m in earlier.meta.values() if m.get("seed") is not None}


def ledger_meta(ledger: Ledger) -> dict[str, dict[str, Any]]:
    """Job id -> corpus metadata (shape, variant, plan index, seed, user) of every job the
    ledger saw end, array tasks by their own ids; jobs the recorder cancelled are left out."""
    cancelled = {e["job_id"] for e in ledger.events if e["event"] == "recorder_cancel"}
    submits = {e["job_id"]: e for e in ledger.events if e["event"] == "submit"}
    tasks = {e["job_id"]: e["tasks"] for e in ledger.events if e["event"] == "array_tasks"}
    meta: dict[str, dict[str, Any]] = {}
    for e in ledger.events:
        if e["event"] != "end" or e["job_id"] in cancelled or e["job_id"] not in submits:
            continue
        sub = submits[e["job_id"]]
        variant_of = {own: sub["array_variants"][int(t)] for t, own in tasks.get(e["job_id"], {}).items()}
        for own, state in e["states"].items():
            if state == "UNKNOWN":
                continue
            meta[own] = {"shape": sub["shape"], "variant": variant_of.get(own, sub["variant"]),
                         "plan_index": sub["index"], "seed": sub["seed"], "user": sub["user"]}
    return meta


def export(argv: list[str] | None = None) -> int:
    """``python -m nomade.tools.lab export --dir D --out FILE``: the recorded corpus as one file."""
    from nomade import corpus
    p = argparse.ArgumentParser(prog="python -m nomade.tools.lab export")
    p.add_argument("--dir", type=Path, default=Path("/tmp/nomade-corpus"))
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--readme", type=Path, help="rewrite the fenced block under '## Counts' of this README "
                                               "with `nomade corpus info` of the new file")
    p.add_argument("--after", type=Path, metavar="CORPUS",
                   help="the corpus this recording continued, its jobs first (default: the one "
                        "`record --after` noted in the ledger)")
    a = p.parse_args(argv)
    ledger = Ledger(a.dir / "plan.jsonl")
    after = a.after or ledger.after()
    earlier = corpus.read(after) if after else None
    meta = ledger_meta(ledger)
    if earlier is not None:
        again = {(m["seed"], m["plan_index"]) for m in meta.values()} & \
            {(m.get("seed"), m.get("plan_index")) for m in earlier.meta.values()}
        if again:
            raise SystemExit(f"{a.dir}: plan indices already in {after}: {sorted(i for _, i in again)[:5]}; "
                             f"was the recording resumed without --after?")
    header = corpus.export_store(a.dir / "nomade.db", a.out, meta, _made_by(ledger, a.dir, earlier),
                                 after=earlier)
    print(json.dumps(header["counts"], indent=1))
    print(f"{a.out}: {a.out.stat().st_size / 1e6:.1f} MB", file=sys.stderr)
    if a.readme:
        from nomade.commands.corpus import text
        _fill_counts(a.readme, text(a.out.name, header) + f"\nsize: {a.out.stat().st_size / 1e6:.1f} MB")
    return 0


def _made_by(ledger: Ledger, ws: Path, earlier: Corpus | None = None) -> dict[str, Any]:
    """The header's ``made_by``: tool, seed, plan indices, cluster, recording period(s), the
    re-record command; a continued corpus (``earlier``) adds its indices and periods."""
    submits = [e for e in ledger.events if e["event"] == "submit"]
    seeds = {e["seed"] for e in submits}
    indices = [e["index"] for e in submits]
    periods = [[time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t)) for t in
                (min(e["ts"] for e in submits), max(e["ts"] for e in ledger.events))]] if submits else []
    if earlier is not None:
        before = earlier.header.get("made_by", {})
        indices += [i for i in before.get("plan_indices") or [] if i is not None]
        recorded = before.get("recorded") or []
        periods = (recorded if recorded and isinstance(recorded[0], list) else [recorded] if recorded else []) + periods
        seeds |= _seeds(earlier)
    seed = min(seeds, default=1)
    return {
        "tool": "python -m nomade.tools.lab record (nomade/tools/lab/record.py, shapes in nomade/tools/lab/shapes.py)",
        "seed": seed if len(seeds) <= 1 else sorted(seeds),
        "plan_indices": [min(indices, default=None), max(indices, default=None)],
        "cluster": "project test cluster: Slurm 22.05, 4 emulated nodes x 8 CPUs on a 2-core host, cgroup v1",
        "sample_interval_s": SAMPLE_INTERVAL_S,
        "recorded": (periods[0] if len(periods) == 1 else periods) or None,
        "rerecord": f"python -m nomade.tools.lab record --dir {ws} --jobs N --seed {seed} "
                    "--max-running 28; python -m nomade.tools.lab export --dir DIR --out FILE",
    }


def _fill_counts(readme: Path, block: str) -> None:
    """Replace the first fenced block after '## Counts' in ``readme`` with ``block``."""
    lines = readme.read_text().splitlines()
    try:
        start = lines.index("## Counts")
        first = next(i for i in range(start, len(lines)) if lines[i].startswith("```"))
        last = next(i for i in range(first + 1, len(lines)) if lines[i].startswith("```"))
    except (ValueError, StopIteration):
        raise SystemExit(f"{readme}: no fenced block under '## Counts' to fill") from None
    readme.write_text("\n".join([*lines[:first + 1], block, *lines[last:]]) + "\n")
