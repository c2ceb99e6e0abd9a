"""The corpus file (``nomade.corpus``): store -> corpus -> tables equals store -> tables,
and a damaged file is refused with the file and the column named."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from nomade import corpus, features, history, wire
from nomade.store import JOB_SAMPLE_FIELDS, Store

T0 = 1.7e9


def _msgs() -> list[wire.Message]:
    """Four jobs of two users on three nodes (one job on two), with gaps, unknown values,
    a failure, an OOM and a job that ran without samples."""
    out = []
    for job, user, nodes, state, n in (("11", "alice", ("n1",), "COMPLETED", 6),
                                       ("12", "bob", ("n1", "n2"), "OUT_OF_MEMORY", 5),
                                       ("13", "alice", ("n3",), "FAILED", 3),
                                       ("14", None, ("n2",), "TIMEOUT", 0)):
        k = int(job) - 10
        out.append(wire.make("job.start", "ctld", 0, {
            "job_id": job, "user": user, "nodes": list(nodes), "num_nodes": len(nodes),
            "req_cpus": k, "req_mem_bytes": k << 28, "time_limit_s": 60.0 * k,
            "submit_ts": T0 + k, "start_ts": T0 + 10 * k}, T0 + 10 * k))
        for i in range(n):
            for node in nodes:
                ts = T0 + 10 * k + 3.0 * i + (0.5 if node == "n2" else 0.0)
                out.append(wire.make("job.sample", node, 0, {
                    "job_id": job, "node": node, "ts": ts, "alloc_cpus": k,
                    "cpu_user_s": 0.7 * i, "cpu_system_s": None if i == 2 else 0.1 * i,
                    "mem_bytes": (i + 1) << 24, "mem_limit_bytes": k << 28,
                    "write_bytes": i * 4096, "nprocs": 1 + i, "io_pressure": 0.25 * i}, ts))
        out.append(wire.make("job.end", "ctld", 0, {"job_id": job, "end_ts": T0 + 10 * k + 40,
                                                    "exit_code": 0, "state": state}, T0 + 10 * k + 40))
    for i in range(20):
        for node, w in (("n1", 1.0), ("n2", None), ("n3", 7.5)):
            out.append(wire.make("node.sample", node, 0, {"node": node, "ts": T0 + 5.0 * i,
                                                         "iowait_pct": w if i % 3 else 2.0 * i}, T0))
    return out


META = {"11": {"shape": "compute", "variant": "compute", "plan_index": 0, "seed": 1, "user": "alice"},
        "12": {"shape": "multinode", "variant": "mem_grow", "plan_index": 1, "seed": 1, "user": "bob"},
        "13": {"shape": "crash", "variant": "crash", "plan_index": 2, "seed": 1, "user": "alice"},
        "14": {"shape": "stall", "variant": "stall", "plan_index": 3, "seed": 1, "user": "carol"}}


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "s.db"
    with Store(path) as store:
        store.write_batch("n1", 1, _msgs())
    return path


def _assert_tables_equal(a: tuple[features.JobTable, features.SampleTable],
                         b: tuple[features.JobTable, features.SampleTable]) -> None:
    (ja, sa), (jb, sb) = a, b
    for name in ("job_id", "user", "state"):
        assert getattr(ja, name).tolist() == getattr(jb, name).tolist(), name
    for name in ("req_cpus", "req_mem_bytes", "req_gpus", "time_limit_s", "submit_ts", "start_ts",
                 "end_ts", "label"):
        np.testing.assert_array_equal(getattr(ja, name), getattr(jb, name), err_msg=name)
    np.testing.assert_array_equal(sa.job_index, sb.job_index)
    np.testing.assert_array_equal(sa.ts, sb.ts)
    assert sa.cols.keys() == sb.cols.keys()
    for name in sa.cols:
        np.testing.assert_array_equal(sa.cols[name], sb.cols[name], err_msg=name)


def test_store_to_corpus_to_tables_equals_store_to_tables(db: Path, tmp_path: Path) -> None:
    header = corpus.export_store(db, tmp_path / "c.npz", META, made_by={"seed": 1})
    got = corpus.read(tmp_path / "c.npz")
    assert header["counts"]["jobs"] == 4 and got.header == json.loads(json.dumps(header))
    assert got.header["counts"]["by_shape"]["multinode"] == {"OUT_OF_MEMORY": 1}
    assert got.meta == META
    direct = history.tables(history.rows_from_store(db))
    _assert_tables_equal(history.tables(got.rows), direct)
    assert len(direct[1]) == 6 + 5 * 2 + 3                      # the table is not empty
    assert np.isfinite(direct[1].iowait_pct).any()              # node samples joined
    # the rows themselves come back as the store gives them (ints stay ints, None stays None)
    assert got.rows.job_samples == history.rows_from_store(db).job_samples
    assert got.rows.jobs == history.rows_from_store(db).jobs


def test_only_the_jobs_the_metadata_names_are_exported(db: Path, tmp_path: Path) -> None:
    meta = {k: v for k, v in META.items() if k != "12"}
    corpus.export_store(db, tmp_path / "c.npz", meta)
    got = corpus.read(tmp_path / "c.npz")
    assert [j["job_id"] for j in got.rows.jobs] == ["11", "13", "14"]
    assert {r[0] for r in got.rows.job_samples} == {"11", "13"}


def test_a_corpus_mixed_with_a_store_keeps_both_apart(db: Path, tmp_path: Path) -> None:
    corpus.export_store(db, tmp_path / "c.npz", META)
    rows = history.rows_from_store(db)
    rows.extend(corpus.read(tmp_path / "c.npz").rows.prefixed("corpus:"))
    jobs, samples = history.tables(rows)
    assert len(jobs) == 8 and len(set(jobs.job_id.tolist())) == 8
    own, other = samples.job_index < 4, samples.job_index >= 4
    np.testing.assert_array_equal(samples.iowait_pct[own], samples.iowait_pct[other])


def test_an_export_after_an_earlier_corpus_holds_both_in_order_and_refuses_a_shared_job_id(
        db: Path, tmp_path: Path) -> None:
    """A recording that continued a shipped corpus (``record --after``) exports that
    corpus's rows first, then its own, with both metadata; a job id in both is refused."""
    first = {k: v for k, v in META.items() if k in ("11", "12")}
    corpus.export_store(db, tmp_path / "a.npz", first)
    earlier = corpus.read(tmp_path / "a.npz")
    later = {k: v for k, v in META.items() if k not in first}
    corpus.export_store(db, tmp_path / "ab.npz", later, after=earlier)
    both = corpus.read(tmp_path / "ab.npz")
    assert [j["job_id"] for j in both.rows.jobs] == ["11", "12", "13", "14"] and both.meta == META
    assert both.rows.job_samples == history.rows_from_store(db).job_samples
    assert both.header["counts"]["jobs"] == 4
    with pytest.raises(corpus.CorpusError, match=r"job ids already in the earlier corpus: \['12'\]"):
        corpus.export_store(db, tmp_path / "bad.npz", {k: META[k] for k in ("12", "13")}, after=earlier)


def test_a_truncated_file_is_refused_naming_it(db: Path, tmp_path: Path) -> None:
    path = tmp_path / "c.npz"
    corpus.export_store(db, path, META)
    data = path.read_bytes()
    for cut in (len(data) // 2, len(data) - 30, 10):
        bad = tmp_path / f"cut{cut}.npz"
        bad.write_bytes(data[:cut])
        with pytest.raises(corpus.CorpusError, match=f"{bad}: not a readable corpus file"):
            corpus.read(bad)


def test_a_corrupt_column_or_a_missing_one_is_named(db: Path, tmp_path: Path) -> None:
    path = tmp_path / "c.npz"
    corpus.export_store(db, path, META)
    with np.load(path) as z:
        cols = {k: z[k] for k in z.files}
    short = dict(cols, **{"samples/mem_bytes": cols["samples/mem_bytes"][:-1]})
    np.savez_compressed(tmp_path / "short.npz", **short)
    with pytest.raises(corpus.CorpusError, match="samples columns differ in length"):
        corpus.read(tmp_path / "short.npz")
    np.savez_compressed(tmp_path / "gone.npz", **{k: v for k, v in cols.items() if k != "jobs/state"})
    with pytest.raises(corpus.CorpusError, match="'jobs/state' is missing"):
        corpus.read(tmp_path / "gone.npz")
    newer = dict(cols, header=np.frombuffer(json.dumps({"format": corpus.FORMAT, "version": 99}).encode(),
                                            dtype=np.uint8))
    np.savez_compressed(tmp_path / "newer.npz", **newer)
    with pytest.raises(corpus.CorpusError, match="version 99"):
        corpus.read(tmp_path / "newer.npz")
    # bytes flipped inside a deflated member: the zip's CRC or zlib refuses it
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("samples/ts.npy")
    mid = info.header_offset + 30 + len(info.filename) + info.compress_size // 2
    raw[mid:mid + 8] = b"\xff" * 8
    (tmp_path / "flip.npz").write_bytes(bytes(raw))
    with pytest.raises(corpus.CorpusError, match="flip.npz"):
        corpus.read(tmp_path / "flip.npz")
    with pytest.raises(corpus.CorpusError, match="no such corpus file"):
        corpus.read(tmp_path / "absent.npz")


def test_a_version_1_file_reads_the_later_columns_as_unknown(db: Path, tmp_path: Path) -> None:
    path = tmp_path / "c.npz"
    corpus.export_store(db, path, META)
    with np.load(path) as z:
        cols = {k: z[k] for k in z.files}
    header = json.loads(cols["header"].tobytes().decode())
    v1 = {k: v for k, v in cols.items() if corpus.ADDED_IN.get(k, 1) <= 1}
    v1["header"] = np.frombuffer(json.dumps({**header, "version": 1}).encode(), dtype=np.uint8)
    np.savez_compressed(tmp_path / "v1.npz", **v1)
    old, new = corpus.read(tmp_path / "v1.npz"), corpus.read(path)
    at = JOB_SAMPLE_FIELDS.index("fs_used_pct")
    assert len(old.rows.job_samples) == len(new.rows.job_samples) > 0
    assert {r[at] for r in old.rows.job_samples} == {None}
    assert [r[:at] for r in old.rows.job_samples] == [r[:at] for r in new.rows.job_samples]
    gone = dict(v1, **{"header": cols["header"]})            # a version-2 file must have it
    np.savez_compressed(tmp_path / "gone.npz", **gone)
    with pytest.raises(corpus.CorpusError, match="'samples/fs_used_pct' is missing"):
        corpus.read(tmp_path / "gone.npz")


def _cli(tmp_path: Path, *args: str) -> int:
    from nomade import cli
    cfg = tmp_path / "nomade.toml"
    cfg.write_text(f'[storage]\ndb_path = "{tmp_path}/site.db"\n[ml]\nmodels_dir = "{tmp_path}/models"\n')
    return cli.main(["--config", str(cfg), *args])


def test_train_prepares_from_a_corpus_alone_or_mixed_with_the_store(db: Path, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    corpus.export_store(db, tmp_path / "c.npz", META)
    with Store(tmp_path / "site.db") as store:   # the site's own store: two of the same jobs
        store.write_batch("n1", 1, [m for m in _msgs() if m.body.get("job_id") in ("11", "12")
                                    or m.kind == "node.sample"])
    data = str(tmp_path / "p.npz")
    assert _cli(tmp_path, "train", "--prepare", "--json", "--corpus", str(tmp_path / "c.npz"), "--data", data) == 0
    alone = json.loads(capsys.readouterr().out)
    assert alone["jobs"] == 4 and alone["source"] == str(tmp_path / "c.npz")
    assert _cli(tmp_path, "train", "--prepare", "--json", "--corpus", str(tmp_path / "c.npz"),
                "--with-store", "--data", data) == 0
    mixed = json.loads(capsys.readouterr().out)
    assert mixed["jobs"] == 6 and str(tmp_path / "site.db") in mixed["source"]
    assert _cli(tmp_path, "train", "--prepare", "--corpus", str(tmp_path / "c.npz"), "--db", str(db)) == 2
    assert "--with-store" in capsys.readouterr().err
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 truncated")
    assert _cli(tmp_path, "train", "--prepare", "--corpus", str(tmp_path / "bad.npz"), "--data", data) == 2
    assert "bad.npz: not a readable corpus file" in capsys.readouterr().err


def test_corpus_info_prints_counts_by_shape_and_state(db: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    corpus.export_store(db, tmp_path / "c.npz", META, made_by={"seed": 7})
    assert _cli(tmp_path, "corpus", "info", str(tmp_path / "c.npz")) == 0
    out = capsys.readouterr().out
    assert "4 jobs, 19 job samples" in out and "seed: 7" in out
    row = next(line.split() for line in out.splitlines() if line.startswith("multinode"))
    states = next(line.split() for line in out.splitlines() if line.startswith("shape"))[2:]
    assert dict(zip(states, map(int, row[2:]), strict=True)) == {"COMPLETED": 0, "OUT_OF_MEMORY": 1, "FAILED": 0, "TIMEOUT": 0}
    assert _cli(tmp_path, "corpus", "info", "--json", str(tmp_path / "c.npz")) == 0
    assert json.loads(capsys.readouterr().out)["counts"]["by_state"]["TIMEOUT"] == 1
