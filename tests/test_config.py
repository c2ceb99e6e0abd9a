"""nomade.config: defaults, every kind of error, file precedence, resolved paths."""

from __future__ import annotations

import dataclasses

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib
from pathlib import Path

import pytest

from nomade import config
from nomade.config import Config, ConfigError, load
from nomade.errors import NomadeError

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "nomade.example.toml"


def write(tmp_path: Path, text: str, name: str = "nomade.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(path: Path) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        load(path)
    return {p.key: p.text for p in info.value.problems}


@pytest.fixture(autouse=True)
def no_env_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOMADE_CONFIG", raising=False)


def test_defaults_documented_values() -> None:
    cfg = Config()
    assert cfg.ml.similarity_threshold == 0.7
    assert cfg.ml.retrain_interval_days == 7
    assert (cfg.ml.ensemble.gnn_weight, cfg.ml.ensemble.lstm_weight,
            cfg.ml.ensemble.autoencoder_weight) == (0.4, 0.35, 0.25)
    assert cfg.ml.alerts.high_risk_threshold == 0.75 and cfg.ml.alerts.alert_on_prediction is True
    t = cfg.ml.training
    assert (t.learning_rate, t.epochs, t.batch_size, t.hidden_dim, t.dropout) == (0.001, 100, 32, 64, 0.2)
    assert cfg.collector.interval_s == 30.0
    assert cfg.security.curve_enabled is True and cfg.security.insecure is False   # secure by default
    assert cfg.hooks.spool_dir == "/var/spool/nomade"


def test_example_file_equals_defaults() -> None:
    loaded = load(EXAMPLE)
    assert loaded == Config()
    assert loaded.source == EXAMPLE


def test_example_file_lists_every_key() -> None:
    with open(EXAMPLE, "rb") as handle:
        documented = tomllib.load(handle)
    assert documented == Config().to_dict()


def test_values_are_frozen_and_typed(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, "[ml]\nretrain_interval_days = 3\n[agent]\nspool_dirs = ['/a', '/b']\n"))
    assert cfg.ml.retrain_interval_days == 3.0 and isinstance(cfg.ml.retrain_interval_days, float)
    assert cfg.agent.spool_dirs == ("/a", "/b")
    assert cfg.ml.similarity_threshold == 0.7  # untouched keys keep defaults
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.ml.seed = 3  # type: ignore[misc]


def test_unknown_key_suggests_close_match(tmp_path: Path) -> None:
    path = write(tmp_path, "[ml]\nsimilarity_treshold = 0.8\n")
    with pytest.raises(ConfigError) as info:
        load(path)
    message = str(info.value)
    assert str(path) in message
    assert "ml.similarity_treshold = 0.8" in message
    assert "did you mean ml.similarity_threshold?" in message
    assert "valid keys in [ml]:" in message and "max_neighbors" in message


def test_unknown_key_in_nested_table_and_unknown_table(tmp_path: Path) -> None:
    found = problems_of(write(tmp_path, "[ml.ensemble]\ngnn_wieght = 0.5\n[colector]\ninterval_s = 1\n"))
    assert set(found) == {"ml.ensemble.gnn_wieght", "colector"}
    assert "did you mean ml.ensemble.gnn_weight?" in found["ml.ensemble.gnn_wieght"]
    assert "unknown table" in found["colector"] and "did you mean collector?" in found["colector"]


@pytest.mark.parametrize(("text", "key", "expected"), [
    ("[ml]\nseed = true", "ml.seed", "an integer"),           # bool is not an int
    ("[ml.training]\nepochs = 10.0", "ml.training.epochs", "an integer"),
    ("[ml]\nenabled = 1", "ml.enabled", "true or false"),
    ("[collector]\ninterval_s = '30'", "collector.interval_s", "a number"),
    ("[collector]\ninterval_s = false", "collector.interval_s", "a number"),
    ("[storage]\ndb_path = 3", "storage.db_path", "a string"),
    ("[agent]\nspool_dirs = ['/a', 1]", "agent.spool_dirs", "a list of strings"),
    ("ml = 3", "ml", "a table [ml]"),
    ("[ml]\nensemble = 0.4", "ml.ensemble", "a table [ml.ensemble]"),
])
def test_wrong_type(tmp_path: Path, text: str, key: str, expected: str) -> None:
    found = problems_of(write(tmp_path, text + "\n"))
    assert list(found) == [key]
    assert f"expected {expected}" in found[key]


def test_int_accepted_for_float(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, "[collector]\ninterval_s = 15\n"))
    assert cfg.collector.interval_s == 15.0 and isinstance(cfg.collector.interval_s, float)


@pytest.mark.parametrize(("text", "key", "expected"), [
    ("[ml]\nsimilarity_threshold = 1.2", "ml.similarity_threshold", "a number in [0, 1]"),
    ("[ml.alerts]\nhigh_risk_threshold = -0.1", "ml.alerts.high_risk_threshold", "a number in [0, 1]"),
    ("[ml.training]\ndropout = 1.0", "ml.training.dropout", "a number in [0, 1)"),
    ("[ml.training]\nlearning_rate = 0", "ml.training.learning_rate", "a number > 0"),
    ("[ml.training]\nbatch_size = 0", "ml.training.batch_size", "an integer >= 1"),
    ("[collector]\ninterval_s = -5", "collector.interval_s", "a number > 0"),
    ("[collector]\nack_timeout_s = nan", "collector.ack_timeout_s", "a number > 0"),
    ("[ml]\nclass_balance = 'smote'", "ml.class_balance", 'one of "weights", "oversample", "none"'),
    ("[slurm]\nuse_pyslurm = 'always'", "slurm.use_pyslurm", 'one of "auto", "never"'),
    ("[collector]\nagent_endpoint = 'localhost:5555'", "collector.agent_endpoint", "a ZeroMQ endpoint"),
    ("[agent]\nmetrics_address = 'host:70000'", "agent.metrics_address", '"HOST:PORT"'),
    ("[hooks]\nspool_dir = ''", "hooks.spool_dir", "a non-empty string"),
])
def test_out_of_range(tmp_path: Path, text: str, key: str, expected: str) -> None:
    found = problems_of(write(tmp_path, text + "\n"))
    assert list(found) == [key]
    assert f"expected {expected}" in found[key]


def test_all_ensemble_weights_zero(tmp_path: Path) -> None:
    found = problems_of(write(tmp_path, "[ml.ensemble]\ngnn_weight = 0\nlstm_weight = 0\n"
                                        "autoencoder_weight = 0\n"))
    assert list(found) == ["ml.ensemble"]


def test_message_names_file_key_value_and_expectation(tmp_path: Path) -> None:
    path = write(tmp_path, "[ml.ensemble]\ngnn_weight = 1.5\n")
    with pytest.raises(ConfigError) as info:
        load(path)
    assert str(info.value) == f"{path}: ml.ensemble.gnn_weight = 1.5: expected a number in [0, 1]"
    assert isinstance(info.value, ValueError) and isinstance(info.value, NomadeError)
    assert info.value.path == path


def test_bad_toml(tmp_path: Path) -> None:
    path = write(tmp_path, "[ml\nseed = 1\n")
    with pytest.raises(ConfigError) as info:
        load(path)
    message = str(info.value)
    assert message.startswith(f"{path}: not valid TOML:") and "line 1" in message
    assert "\n" not in message


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b"[hooks]\nspool_dir = \"/var/sp\xf6ol\"\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(path)


def test_all_errors_reported_together(tmp_path: Path) -> None:
    path = write(tmp_path, "[ml]\nseed = -1\nbogus = 2\n[ml.training]\nepochs = 0\n"
                           "[collector]\ninterval_s = 'x'\n[security]\ncurve_enabled = 'yes'\n")
    with pytest.raises(ConfigError) as info:
        load(path)
    keys = [p.key for p in info.value.problems]
    assert keys == ["ml.seed", "ml.bogus", "ml.training.epochs", "collector.interval_s",
                    "security.curve_enabled"]
    lines = str(info.value).splitlines()
    assert len(lines) == 5 and all(line.startswith(f"{path}: ") for line in lines)


def test_missing_explicit_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load(tmp_path / "absent.toml")


def test_env_var_used_when_no_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from_env = write(tmp_path, "[ml]\nseed = 5\n", "env.toml")
    monkeypatch.setenv("NOMADE_CONFIG", str(from_env))
    cfg = load()
    assert cfg.ml.seed == 5 and cfg.source == from_env


def test_explicit_path_beats_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOMADE_CONFIG", str(write(tmp_path, "[ml]\nseed = 5\n", "env.toml")))
    explicit = write(tmp_path, "[ml]\nseed = 9\n", "explicit.toml")
    assert load(explicit).ml.seed == 9


def test_env_var_pointing_nowhere_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOMADE_CONFIG", str(tmp_path / "absent.toml"))
    with pytest.raises(ConfigError, match="absent.toml: no such file"):
        load()


def test_system_file_then_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    system = write(tmp_path, "[ml]\nseed = 7\n", "system.toml")
    monkeypatch.setattr(config, "SYSTEM_CONFIG", system)
    assert load().ml.seed == 7
    monkeypatch.setattr(config, "SYSTEM_CONFIG", tmp_path / "absent.toml")
    cfg = load()
    assert cfg == Config() and cfg.source is None


def test_to_dict_round_trips() -> None:
    data = Config().to_dict()
    assert data["ml"]["ensemble"]["gnn_weight"] == 0.4
    assert data["agent"]["spool_dirs"] == []
    assert "source" not in data


def test_paths_resolve_xdg(tmp_path: Path) -> None:
    env = {"XDG_DATA_HOME": str(tmp_path / "data"), "XDG_STATE_HOME": str(tmp_path / "state"),
           "XDG_CONFIG_HOME": str(tmp_path / "conf")}
    paths = Config().paths(env)
    assert paths.models_dir == tmp_path / "data" / "nomade" / "models"
    assert paths.db_path == tmp_path / "state" / "nomade" / "nomade.db"
    assert paths.outbox_dir == tmp_path / "state" / "nomade" / "outbox"
    assert paths.collector_spool_dir == Path("/var/spool/nomade")
    assert paths.node_name and "." not in paths.node_name


def test_paths_default_to_home_when_xdg_unset_or_relative() -> None:
    paths = Config().paths({"XDG_STATE_HOME": "relative/dir"})
    assert paths.models_dir == Path.home() / ".local/share/nomade/models"
    assert paths.db_path == Path.home() / ".local/state/nomade/nomade.db"


def test_explicit_paths_win(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, f"[ml]\nmodels_dir = '{tmp_path}/m'\n[storage]\ndb_path = '~/x.db'\n"
                               "[collector]\nnode_name = 'n1'\nspool_dir = '/s'\n"))
    paths = cfg.paths({})
    assert paths.models_dir == tmp_path / "m"
    assert paths.db_path == Path.home() / "x.db"
    assert paths.node_name == "n1" and paths.collector_spool_dir == Path("/s")


def test_key_files_derive_from_keys_dir(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, f"[security]\nkeys_dir = '{tmp_path}/k'\n"
                               "client_secret_key_file = '/elsewhere/me.key_secret'\n"))
    keys = cfg.security.key_files({})
    assert keys.server_public_key_file == tmp_path / "k" / "server.key"
    assert keys.server_secret_key_file == tmp_path / "k" / "server.key_secret"
    assert keys.client_public_key_file == tmp_path / "k" / "client.key"
    assert keys.client_secret_key_file == Path("/elsewhere/me.key_secret")
    assert keys.authorized_clients_dir == tmp_path / "k" / "authorized_clients"


def test_keys_dir_default_depends_on_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path)}
    monkeypatch.setattr(config.os, "geteuid", lambda: 1000)
    assert Config().security.key_files(env).keys_dir == tmp_path / "nomade" / "keys"
    monkeypatch.setattr(config.os, "geteuid", lambda: 0)
    assert Config().security.key_files(env).keys_dir == Path("/etc/nomade/keys")


@pytest.mark.parametrize(("endpoint", "local"), [
    ("tcp://127.0.0.1:5555", True), ("tcp://127.3.4.5:1", True), ("tcp://localhost:5555", True),
    ("tcp://[::1]:5555", True), ("ipc:///run/nomade.sock", True), ("inproc://x", True),
    ("tcp://0.0.0.0:5555", False), ("tcp://*:5555", False), ("tcp://10.0.0.1:5555", False),
    ("tcp://agent.cluster:5555", False), ("tcp://127.0.0.1.evil.org:1", False),
    ("tcp://eth0;127.0.0.1:1", True), ("ws://127.0.0.1:1", False)])
def test_loopback_endpoints(endpoint: str, local: bool) -> None:
    from nomade.config import is_loopback

    assert is_loopback(endpoint) is local


def test_no_curve_off_loopback_without_saying_insecure(tmp_path: Path) -> None:
    from nomade.config import check_endpoint

    path = write(tmp_path, "[security]\ncurve_enabled = false\n")
    cfg = load(path)
    check_endpoint(cfg, "agent.ingest_endpoint", "tcp://127.0.0.1:5555")
    with pytest.raises(NomadeError) as info:
        check_endpoint(cfg, "agent.ingest_endpoint", "tcp://0.0.0.0:5555")
    text = str(info.value)
    assert str(path) in text and "agent.ingest_endpoint" in text and "insecure = true" in text
    check_endpoint(load(write(tmp_path, "[security]\ncurve_enabled = false\ninsecure = true\n")),
                   "agent.ingest_endpoint", "tcp://0.0.0.0:5555")
    check_endpoint(Config(), "agent.ingest_endpoint", "tcp://0.0.0.0:5555")   # CURVE on: allowed


@pytest.mark.parametrize("shipped", ["agent/agent.toml", "collector/collector.toml",
                                     "docs/nomade.example.toml"])
def test_every_shipped_config_has_curve_on(shipped: str) -> None:
    cfg = load(Path(__file__).resolve().parent.parent / shipped)
    assert cfg.security.curve_enabled is True and cfg.security.insecure is False
    off = dataclasses.replace(cfg, security=dataclasses.replace(cfg.security, curve_enabled=False))
    for key, endpoint in (("agent.ingest_endpoint", cfg.agent.ingest_endpoint),
                          ("collector.agent_endpoint", cfg.collector.agent_endpoint)):
        if not config.is_loopback(endpoint):   # the shipped network endpoints need CURVE
            with pytest.raises(NomadeError, match=key):
                config.check_endpoint(off, key, endpoint)
