"""The training pipeline and its commands: time split without leakage, dataset
round trip, a full train → status → score run through the real ``nomade`` CLI."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from nomade import features
from nomade.errors import NomadeError
from nomade.ml import persist, train

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def prepared() -> train.Prepared:
    jobs, samples = train.synthetic_tables(400, seed=7)
    return train.prepare(jobs, samples, 30.0, 8, max_per_job=5, source="synthetic")


def test_split_is_by_time_and_each_job_counts_once(prepared: train.Prepared) -> None:
    p = prepared
    starts = [p.start_ts[p.rows(s)] for s in train.SPLITS]
    assert starts[0].max() <= starts[1].min() and starts[1].max() <= starts[2].min()
    for s in train.SPLITS:  # a job's examples are all in one split
        assert not set(p.job[p.rows(s)]) & set(p.job[~np.isin(np.arange(len(p.y)), p.rows(s))])
    per_job = np.bincount(p.job, weights=p.w)
    assert np.allclose(per_job[np.unique(p.job)], 1.0)
    assert len(np.unique(p.job)) == p.summary["jobs"] == len(p.ref_y)
    sizes = [p.summary["splits"][s]["jobs"] for s in train.SPLITS]
    assert sizes == [320, 40, 40]
    assert p.X.shape[1] == features.N_FEATURES and p.S.shape[1:] == (8, len(features.CHANNELS))
    assert (p.t >= p.start_ts).all()


def test_every_neighbour_ended_before_its_query_started(prepared: train.Prepared) -> None:
    p = prepared
    norm = features.Normalizer().fit(p.X, p.mask)
    d = train.build_data(p, norm, 0.7, 5)
    ended = p.ref_end_ts[d.nbrs.idx]
    assert (ended[d.nbrs.valid] < np.broadcast_to(p.start_ts[:, None], ended.shape)[d.nbrs.valid]).all()
    assert d.nbrs.valid.any()


def test_prepared_round_trip_and_bad_files(tmp_path: Path, prepared: train.Prepared) -> None:
    prepared.save(tmp_path / "d.npz")
    back = train.Prepared.load(tmp_path / "d.npz")
    assert np.array_equal(back.X, prepared.X) and back.summary == json.loads(json.dumps(prepared.summary))
    with pytest.raises(NomadeError, match="--prepare"):
        train.Prepared.load(tmp_path / "missing.npz")
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 nonsense")
    with pytest.raises(NomadeError, match="not a prepared dataset"):
        train.Prepared.load(tmp_path / "bad.npz")


def test_prepare_refuses_data_without_labels() -> None:
    jobs, samples = train.synthetic_tables(20, seed=1)
    jobs.label[:] = np.nan
    with pytest.raises(NomadeError, match="no ended job"):
        train.prepare(jobs, samples, 30.0, 4)


def _nomade(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nomade", *args], capture_output=True, text=True,
                          env=env, timeout=300, check=False)


@pytest.mark.slow
def test_cli_prepare_train_status_and_errors(tmp_path: Path) -> None:
    cfg = tmp_path / "nomade.toml"
    cfg.write_text('[ml]\nsequence_length = 8\n[ml.training]\nepochs = 2\npatience = 1\n'
                   f'[storage]\ndb_path = "{tmp_path}/state/nomade.db"\n')
    env = {**os.environ, "NOMADE_CONFIG": str(cfg), "XDG_DATA_HOME": str(tmp_path / "data"),
           "OMP_NUM_THREADS": "1"}
    out = _nomade("train", "--prepare", "--synthetic", "300", "--json", env=env)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["jobs"] == 300 and Path(summary["dataset"]).is_file()
    out = _nomade("train", "--learn-weights", "--quiet", "--json", env=env)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert set(report["models"]) == {"gnn", "lstm", "autoencoder"}
    assert report["ensemble"]["test"]["auc_roc"] > 0.6 and "cv_auc" in report["weights_cv"]
    models_dir = tmp_path / "data" / "nomade" / "models"
    assert (models_dir / "ensemble_weights.json").is_file()
    persist.write_agent_state(tmp_path / "state", models_dir, persist.model_version(persist.read_metadata(models_dir)))
    out = _nomade("ml", "status", "--json", env=env)
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    assert status["weights_source"] == "learned" and not status["retrain_due"]
    assert status["agent"]["uses_this_set"] and status["models"]["lstm"]["validation"]["n"] > 0
    # which set is in use, and why: the site's unless the shipped starter beat it on validation
    verdict = report.get("starter_comparison")
    assert status["in_use"]["which"] == ("site" if verdict is None else verdict["use"])
    assert status["in_use"]["reason"]
    out = _nomade("ml", "status", env=env)
    assert out.stdout.startswith("in use: ") and "not due" in out.stdout
    assert "uses the site's model set above" in out.stdout
    out = _nomade("train", "--model", "gnn", env=env)  # table, progress on stderr
    assert out.returncode == 0 and "ensemble" in out.stdout and "gnn" in out.stderr
    (models_dir / "gnn_model.pt").write_bytes(b"broken")
    out = _nomade("predict", "--models-dir", str(models_dir), env=env)
    assert out.returncode == 2 and "gnn_model.pt" in out.stderr and "Traceback" not in out.stderr
    out = _nomade("train", "--data", str(tmp_path / "none.npz"), env=env)
    assert out.returncode == 2 and "--prepare" in out.stderr


def _store_from_synthetic(db: Path, n: int, now: float) -> int:
    """A real store holding a synthetic history up to ``now``: ended jobs with their
    final state, running jobs with the samples taken so far. Returns how many run."""
    from nomade import wire
    from nomade.store import Store
    jobs, samples = train.synthetic_tables(n, seed=5, span_days=1.0, t0=now - 86400)
    sample_fields = set(wire.FIELDS["job.sample"])
    msgs, seq = [], 0
    for i in range(len(jobs)):
        if jobs.start_ts[i] > now:
            continue
        msgs.append(wire.make("job.start", "ctld", seq, {
            "job_id": jobs.job_id[i], "user": f"u{jobs.user[i]}", "partition": "cpu", "nodes": ["n1"],
            "num_nodes": 1, "req_cpus": int(jobs.req_cpus[i]), "req_mem_bytes": int(jobs.req_mem_bytes[i]),
            "req_gpus": int(jobs.req_gpus[i]), "time_limit_s": float(jobs.time_limit_s[i]),
            "submit_ts": float(jobs.submit_ts[i]), "start_ts": float(jobs.start_ts[i])}, ts=now))
        if jobs.end_ts[i] <= now:
            msgs.append(wire.make("job.end", "ctld", seq, {"job_id": jobs.job_id[i], "end_ts": float(jobs.end_ts[i]),
                                                          "exit_code": 0, "state": jobs.state[i]}, ts=now))
    for r in np.flatnonzero(samples.ts <= now):
        body = {c: (float(v[r]) if c.endswith(("_s", "pressure")) else int(v[r]))
                for c, v in samples.cols.items() if c in sample_fields and np.isfinite(v[r])}
        msgs.append(wire.make("job.sample", "n1", seq, {**body, "job_id": jobs.job_id[samples.job_index[r]],
                                                        "node": "n1", "ts": float(samples.ts[r])}, ts=now))
    store = Store(db)
    try:
        store.write_messages(msgs)
        return len(store.running_jobs())
    finally:
        store.close()


@pytest.mark.slow
def test_cli_trains_from_the_store_and_predicts_running_jobs(tmp_path: Path) -> None:
    import time
    db = tmp_path / "state" / "nomade.db"
    running = _store_from_synthetic(db, 200, time.time())
    assert running > 0
    cfg = tmp_path / "nomade.toml"
    cfg.write_text(f'[ml]\nsequence_length = 8\n[ml.training]\nepochs = 2\npatience = 1\n[storage]\ndb_path = "{db}"\n')
    env = {**os.environ, "NOMADE_CONFIG": str(cfg), "XDG_DATA_HOME": str(tmp_path / "data"), "OMP_NUM_THREADS": "1"}
    out = _nomade("train", "--db", str(db), "--quiet", "--json", env=env)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["data"]["source"] == str(db)
    out = _nomade("predict", "--json", env=env)
    assert out.returncode == 0, out.stderr
    preds = json.loads(out.stdout)
    assert len(preds) == running
    assert all(0 <= p["risk"] <= 1 and p["level"] in ("low", "moderate", "high", "critical") for p in preds)
    assert [p["risk"] for p in preds] == sorted((p["risk"] for p in preds), reverse=True)
    assert any(p["parts"]["lstm"] is not None for p in preds)
    one = _nomade("predict", "--job", preds[0]["job_id"], env=env)
    assert one.returncode == 0 and preds[0]["job_id"] in one.stdout and "risk" in one.stdout
    out = _nomade("predict", "--job", "no-such-job", env=env)
    assert out.returncode == 2 and "not running" in out.stderr


def test_learning_weights_needs_all_three_models(tmp_path: Path, prepared: train.Prepared) -> None:
    from nomade import config
    with pytest.raises(NomadeError, match="all three"):
        train.fit_and_save(prepared, config.load(None), tmp_path, kinds=("gnn",), weights_mode="learned")


@pytest.mark.slurm
@pytest.mark.slow
def test_train_submit_runs_as_a_slurm_job(tmp_path: Path, slurm_cluster) -> None:
    from slurmtools import wait_final
    cfg = tmp_path / "nomade.toml"
    cfg.write_text("[ml]\nsequence_length = 8\n[ml.training]\nepochs = 2\npatience = 1\n")
    env = {**os.environ, "NOMADE_CONFIG": str(cfg), "OMP_NUM_THREADS": "1"}
    models = tmp_path / "models"
    out = _nomade("train", "--submit", "--synthetic", "150", "--json", "--models-dir", str(models),
                  "--data", str(tmp_path / "d.npz"), "--sbatch-option=--time=5", env=env)
    assert out.returncode == 0, out.stderr
    job = json.loads(out.stdout)
    final = wait_final(slurm_cluster.slurm, job["job_id"], 240)
    log = Path(job["log"])
    assert final.state == "COMPLETED", log.read_text() if log.exists() else final
    report = json.loads(log.read_text())
    assert set(report["models"]) == {"gnn", "lstm", "autoencoder"} and report["data"]["jobs"] == 150
    assert persist.read_metadata(models)["models"].keys() == {"gnn", "lstm", "autoencoder"}


def test_a_trace_without_samples_trains_without_lstm(tmp_path: Path) -> None:
    from nomade import config
    jobs, _ = train.synthetic_tables(300, seed=2)
    p = train.prepare(jobs, features.SampleTable.empty(), 30.0, 4, max_per_job=2, source="trace")
    cfg = config.load(None)
    cfg = dataclasses.replace(cfg, ml=dataclasses.replace(
        cfg.ml, training=dataclasses.replace(cfg.ml.training, epochs=2, patience=1)))
    report = train.fit_and_save(p, cfg, tmp_path, weights_mode="learned")
    assert set(report["models"]) == {"gnn", "autoencoder"} and report["weights"]["lstm"] == 0
    with pytest.raises(NomadeError, match="lstm"):
        train.fit_and_save(p, cfg, tmp_path, kinds=("lstm",))


def _quick_config(epochs: int = 3):
    from nomade import config
    cfg = config.load(None)
    return dataclasses.replace(cfg, ml=dataclasses.replace(
        cfg.ml, training=dataclasses.replace(cfg.ml.training, epochs=epochs, patience=2)))


def test_the_lstm_trained_in_its_own_process_is_the_one_trained_here(prepared: train.Prepared) -> None:
    p, cfg = prepared, _quick_config()
    d = train.build_data(p, features.Normalizer().fit(p.X, p.mask), 0.7, 5)
    seen: list[tuple[str, int]] = []
    apart, seconds = train.fit_models(train.PARTS, cfg, d, lambda k, e, n, s: seen.append((k, e)), parallel=True)
    here, _ = train.fit_models(train.PARTS, cfg, d, parallel=False)
    assert list(apart) == list(train.PARTS) and set(seconds) == set(train.PARTS)
    va = p.rows("validation")
    for kind in train.PARTS:
        assert apart[kind].history_ == here[kind].history_
    got, want = (m["lstm"].predict_proba(d.Sn[va], p.lengths[va]) for m in (apart, here))
    assert np.isfinite(got).any() and np.array_equal(got, want, equal_nan=True)
    assert [e for k, e in seen if k == "lstm"] == list(range(1, len(here["lstm"].history_) + 1))


def test_an_lstm_that_cannot_train_in_its_process_is_a_clear_error() -> None:
    jobs, _ = train.synthetic_tables(200, seed=3)
    p = train.prepare(jobs, features.SampleTable.empty(), 30.0, 4, max_per_job=2, source="trace")
    d = train.build_data(p, features.Normalizer().fit(p.X, p.mask), 0.7, 5)
    with pytest.raises(NomadeError, match="cannot train the lstm model: no example has a sample"):
        train.fit_models(("gnn", "lstm"), _quick_config(1), d, parallel=True)


def test_a_dead_lstm_process_is_an_error_not_a_hang(tmp_path: Path) -> None:
    # no `if __name__ == "__main__"` guard: the spawned process runs the script again
    # and dies bootstrapping, before it reads its work
    script = tmp_path / "unguarded.py"
    script.write_text("import dataclasses\nfrom nomade import config, features\nfrom nomade.ml import train\n"
                      "jobs, samples = train.synthetic_tables(150, seed=1)\n"
                      "p = train.prepare(jobs, samples, 30.0, 4, max_per_job=2)\n"
                      "d = train.build_data(p, features.Normalizer().fit(p.X, p.mask), 0.7, 5)\n"
                      "train.fit_models(('gnn', 'lstm'), config.load(None), d, parallel=True)\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=False,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=tmp_path)
    assert out.returncode != 0
    assert "cannot train the lstm model: its training process ended without a model (exit code 1)" in out.stderr


def test_prepare_adds_thinned_copies_of_training_examples_that_keep_each_job_once() -> None:
    """Samples every 3 s: training and validation examples are also computed from the
    samples thinned to 6, 15 and 30 s (one model for any sampling interval); test examples
    are the samples as recorded; every job's examples still weigh 1 in all."""
    from nomade import features
    jobs, samples = train.synthetic_tables(60, seed=2, samples_per_job=12)
    # the same jobs sampled every 3 s over their first 10 minutes
    n = len(jobs)
    k = np.arange(200)
    job = np.repeat(np.arange(n), len(k))
    ts = jobs.start_ts[job] + 3.0 * np.tile(k + 1, n)
    keep = ts < jobs.end_ts[job]
    dense = features.SampleTable(job[keep], ts[keep], {"mem_bytes": 1e6 * (ts[keep] - jobs.start_ts[job[keep]]),
                                                       "mem_limit_bytes": np.full(keep.sum(), 4e9)})
    p = train.prepare(jobs, dense, 30.0, 8, max_per_job=4)
    assert p.summary["augment_intervals_s"] == [6.0, 15.0, 30.0]
    assert p.summary["grid"] == {"step_s": features.GRID_STEP_S, "length": 8}
    weight = np.bincount(p.job, weights=p.w, minlength=n)
    np.testing.assert_allclose(weight[np.unique(p.job)], 1.0, rtol=1e-5)
    test = p.rows("test")
    assert len(np.unique(np.stack([p.job[test], p.t[test]]), axis=1)[0]) == len(test)  # no copies in test
    tr = p.rows("train")
    assert len(tr) == 4 * len(np.unique(np.stack([p.job[tr], p.t[tr]]), axis=1)[0])
