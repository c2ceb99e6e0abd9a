"""``nomade db stats|prune`` as an admin runs it: the real CLI on a real store file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nomade import wire
from nomade.store import DAY_S, Store

REPO = Path(__file__).resolve().parent.parent


def _msg(kind: str, body: dict[str, object], ts: float) -> wire.Message:
    return wire.make(kind, "n1", 0, body, ts)


@pytest.fixture()
def conf(tmp_path: Path) -> Path:
    """A config whose store holds a year-old ended job (4096 samples), a job that ended
    a month ago (600 samples) and a running one (1 sample)."""
    now, db = time.time(), tmp_path / "nomade.db"
    with Store(db) as s:
        s.write_messages([
            _msg("job.start", {"job_id": "1", "source": "prolog", "start_ts": now - 401 * DAY_S}, now),
            _msg("job.end", {"job_id": "1", "source": "epilog", "state": "COMPLETED",
                             "end_ts": now - 400 * DAY_S}, now),
            _msg("job.start", {"job_id": "2", "source": "prolog", "start_ts": now - 31 * DAY_S}, now),
            _msg("job.end", {"job_id": "2", "source": "epilog", "state": "TIMEOUT",
                             "end_ts": now - 31 * DAY_S + 600 * 30}, now),
            _msg("job.start", {"job_id": "3", "source": "prolog", "start_ts": now - 60}, now)])
        s.write_batch("n1", 1, [_msg("job.sample", {"job_id": "1", "node": "n1", "ts": t}, t)
                                for t in (now - 401 * DAY_S + k for k in range(4096))])
        s.write_batch("n1", 2, [_msg("job.sample", {"job_id": "2", "node": "n1", "ts": t}, t)
                                for t in (now - 31 * DAY_S + 30 * k for k in range(600))])
        s.write_batch("n1", 3, [_msg("job.sample", {"job_id": "3", "node": "n1", "ts": now}, now)])
    path = tmp_path / "nomade.toml"
    path.write_text(f'[storage]\ndb_path = "{db}"\nthin_samples_to = 100\n')
    return path


def nomade(conf: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NOMADE_CONFIG": str(conf)}
    return subprocess.run([sys.executable, "-m", "nomade", "db", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def test_stats_json_and_text(conf: Path) -> None:
    out = nomade(conf, "stats", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["counts"]["job_samples"] == 4096 + 600 + 1 and data["counts"]["running"] == 1
    assert data["bytes"]["job_samples"] > 4697 * 20 and data["file_bytes"] >= data["free_bytes"]
    assert data["oldest_sample_ts"] < data["newest_sample_ts"]
    text = nomade(conf, "stats").stdout
    assert "job_samples" in text and "4,697" in text and "1 running" in text


def test_prune_dry_run_then_prune(conf: Path) -> None:
    dry = json.loads(nomade(conf, "prune", "--dry-run", "--json").stdout)
    assert (dry["job_samples_dropped"], dry["job_samples_thinned"]) == (4096, 500)
    assert json.loads(nomade(conf, "stats", "--json").stdout)["counts"]["job_samples"] == 4697
    done = nomade(conf, "prune")
    assert done.returncode == 0 and "removed 500 job samples (thinning), 4,096" in done.stdout
    assert json.loads(nomade(conf, "stats", "--json").stdout)["counts"]["job_samples"] == 101
    again = json.loads(nomade(conf, "prune", "--json").stdout)
    assert again["job_samples_thinned"] == again["job_samples_dropped"] == 0


def test_help_teaches_and_a_missing_store_is_one_line(tmp_path: Path, conf: Path) -> None:
    assert "thin_samples_to" in nomade(conf, "prune", "--help").stdout
    missing = tmp_path / "missing.toml"
    missing.write_text(f'[storage]\ndb_path = "{tmp_path / "none.db"}"\n')
    out = nomade(missing, "stats")
    assert out.returncode == 2 and "no store file there" in out.stderr
