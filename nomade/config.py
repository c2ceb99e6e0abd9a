"""Typed configuration (``nomade.toml``): schema, defaults, validation, resolved paths.

``load(path)`` reads ``path``, else ``$NOMADE_CONFIG``, else ``/etc/nomade/nomade.toml``
when it exists, else returns the defaults. Every table is a frozen dataclass; each
field's metadata gives its allowed range or choices. A file is checked completely
before anything is returned: all problems (unknown keys with close matches, wrong
types, out-of-range values) are reported together in one ``ConfigError``.

Empty strings in path-like fields mean "the standard place"; ``Config.paths()``
resolves them (XDG directories, the short host name) at call time.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import socket
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

from nomade.errors import NomadeError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    import tomli as tomllib

SYSTEM_CONFIG = Path("/etc/nomade/nomade.toml")
ENV_VAR = "NOMADE_CONFIG"

_ENDPOINT = re.compile(r"^(tcp|ipc|inproc|pgm|epgm|ws|wss)://\S+$")
_HOST_PORT = re.compile(r"^\S+:(\d{1,5})$")


def _opt(default: Any, **rules: Any) -> Any:
    """A field with a default and validation rules (ge, gt, le, lt, choices, check)."""
    return field(default=default, metadata=rules)


def _table(cls: type) -> Any:
    """A field holding a nested table (a sub-dataclass with its own defaults)."""
    return field(default_factory=cls)


@dataclass(frozen=True)
class _Check:
    """A string rule: ``test(value)`` must hold; ``expected`` says so in an error."""

    test: Callable[[str], bool]
    expected: str


def _valid_host_port(value: str) -> bool:
    match = _HOST_PORT.match(value)
    return value == "" or (match is not None and 0 < int(match.group(1)) < 65536)


_ENDPOINT_CHECK = _Check(lambda v: bool(_ENDPOINT.match(v)),
                         'a ZeroMQ endpoint such as "tcp://127.0.0.1:5555"')
_HOST_PORT_CHECK = _Check(_valid_host_port, '"HOST:PORT" (PORT 1-65535), or "" to disable')
_ENDPOINT_OR_OFF_CHECK = _Check(lambda v: v == "" or bool(_ENDPOINT.match(v)),
                                'a ZeroMQ endpoint such as "tcp://127.0.0.1:5557", or "" to disable')
_NON_EMPTY = _Check(lambda v: v != "", "a non-empty string")


@dataclass(frozen=True)
class EnsembleConfig:
    """``[ml.ensemble]``: default weights of the three models (renormalised per job)."""

    gnn_weight: float = _opt(0.4, ge=0.0, le=1.0)
    lstm_weight: float = _opt(0.35, ge=0.0, le=1.0)
    autoencoder_weight: float = _opt(0.25, ge=0.0, le=1.0)


@dataclass(frozen=True)
class AlertsConfig:
    """``[ml.alerts]``: when a prediction counts as an alert."""

    high_risk_threshold: float = _opt(0.75, ge=0.0, le=1.0)
    """Risk from which a job's Comment gets advice. 0.75: on the shipped starter's
    validation split (224 lab corpus jobs) the threshold at which at most 5 % of the
    completed jobs would have been commented is 0.76; at 0.7 it was 11 % (15 of 136), a
    healthy job in ten told it may fail. A site whose own models rank better may lower it."""
    alert_on_prediction: bool = _opt(True)
    confirm_predictions: int = _opt(2, ge=1)
    """Consecutive predictions at or above the threshold before the Comment is written
    (1: the first). One tick's spike (a job's first tick, before any runtime sample, is
    scored from its request and history alone) is not worth a message to its user."""


@dataclass(frozen=True)
class TrainingConfig:
    """``[ml.training]``: optimiser and network hyper-parameters."""

    learning_rate: float = _opt(0.001, gt=0.0)
    epochs: int = _opt(100, ge=1)
    batch_size: int = _opt(32, ge=1)
    hidden_dim: int = _opt(64, ge=1)
    dropout: float = _opt(0.2, ge=0.0, lt=1.0)
    patience: int = _opt(10, ge=1)


@dataclass(frozen=True)
class MLConfig:
    """``[ml]``: graph, sequence and training-schedule settings, plus sub-tables."""

    enabled: bool = _opt(True)
    similarity_threshold: float = _opt(0.7, ge=0.0, le=1.0)
    max_neighbors: int = _opt(10, ge=1)
    retrain_interval_days: float = _opt(7.0, gt=0.0)
    sequence_length: int = _opt(32, ge=1)
    class_balance: str = _opt("weights", choices=("weights", "oversample", "none"))
    seed: int = _opt(0, ge=0)
    models_dir: str = _opt("")
    starter: bool = _opt(True)
    """Score with the starter model shipped with nomade while the site has no models of
    its own, or its own did not beat it on their validation jobs (``nomade.ml.starter``)."""
    ensemble: EnsembleConfig = _table(EnsembleConfig)
    alerts: AlertsConfig = _table(AlertsConfig)
    training: TrainingConfig = _table(TrainingConfig)


@dataclass(frozen=True)
class CollectorConfig:
    """``[collector]``: the per-node sampler and its outbox."""

    agent_endpoint: str = _opt("tcp://127.0.0.1:5555", check=_ENDPOINT_CHECK)
    interval_s: float = _opt(30.0, gt=0.0)
    jitter_s: float = _opt(5.0, ge=0.0)
    node_name: str = _opt("")
    cgroup_root: str = _opt("/sys/fs/cgroup", check=_NON_EMPTY)
    outbox_dir: str = _opt("")
    outbox_max_mb: int = _opt(64, ge=1)
    ack_timeout_s: float = _opt(10.0, gt=0.0)
    spool_dir: str = _opt("")


@dataclass(frozen=True)
class AgentConfig:
    """``[agent]``: ingest, publish, metrics and final-state polling."""

    ingest_endpoint: str = _opt("tcp://127.0.0.1:5555", check=_ENDPOINT_CHECK)
    publish_endpoint: str = _opt("tcp://127.0.0.1:5556", check=_ENDPOINT_CHECK)
    metrics_address: str = _opt("127.0.0.1:9464", check=_HOST_PORT_CHECK)
    interval_s: float = _opt(30.0, gt=0.0)
    spool_dirs: tuple[str, ...] = _opt(())
    final_state_timeout_s: float = _opt(300.0, gt=0.0)
    max_round_mb: int = _opt(16, ge=1)
    """Most frame bytes taken from the ingest socket before they are stored and acked
    together (the rest waits in ZeroMQ's queue for the next round)."""
    max_sender_round_mb: int = _opt(4, ge=1)
    """Most frame bytes of one sender in one round; its frames beyond are dropped unacked
    (it resends after its ack timeout), so one node cannot take a round."""
    receive_hwm: int = _opt(16, ge=1)
    """ZeroMQ receive high-water mark of the ingest socket: messages queued per peer."""
    max_nodes_per_job: int = _opt(16384, ge=1)
    max_running_jobs: int = _opt(100_000, ge=1)
    """Jobs tracked in memory (started or awaiting their start); a job beyond is not
    scored (its data is still stored)."""
    max_orphan_jobs: int = _opt(10_000, ge=1)
    """Jobs with samples but no start yet kept in memory (each until orphan_ttl)."""
    max_final_state_jobs: int = _opt(100_000, ge=1)
    """Ended jobs the final-state poller watches at once; the next ones wait in the store."""
    running_check_interval_s: float = _opt(300.0, gt=0.0)
    """How often started jobs are checked against Slurm; those it no longer lists end."""
    query_endpoint: str = _opt("tcp://127.0.0.1:5557", check=_ENDPOINT_OR_OFF_CHECK)
    """Where the agent answers ``nomade job`` ("" = nowhere). Every query carries a MUNGE
    credential: a user sees only their own jobs. Under CURVE like the other sockets (any
    client key; clients hold the agent's public key); without CURVE, loopback only."""
    query_admins: tuple[str, ...] = _opt(())
    """Users who see every job in ``nomade job`` (root and the agent's own user always do)."""
    query_max_per_s: float = _opt(20.0, gt=0.0)
    """Most ``nomade job`` queries the agent checks a second; more are answered "busy"."""
    summary_admin_comment: bool = _opt(True)
    """Write each ended job's summary (highest risk and when, levels crossed, CPU and
    memory use, advice) into its Slurm AdminComment, where ``sacct -o AdminComment``
    shows it (``nomade.agent.summary``). Needs the agent to run as root or SlurmUser."""


@dataclass(frozen=True)
class KeyFiles:
    """Resolved CURVE key file locations (see ``SecurityConfig.key_files``)."""

    keys_dir: Path
    server_public_key_file: Path
    server_secret_key_file: Path
    client_public_key_file: Path
    client_secret_key_file: Path
    authorized_clients_dir: Path


@dataclass(frozen=True)
class SecurityConfig:
    """``[security]``: CURVE encryption and authentication between collector and agent.

    CURVE is on by default. Without it a daemon uses only loopback endpoints (tcp to
    127.0.0.0/8, ::1 or localhost; ipc; inproc), unless ``insecure`` says otherwise
    (``check_endpoint``).

    Empty file names derive from ``keys_dir``: ``server.key``/``server.key_secret``,
    ``client.key``/``client.key_secret`` and the directory ``authorized_clients/``
    (client public ``*.key`` files the agent accepts).
    """

    curve_enabled: bool = _opt(True)
    insecure: bool = _opt(False)
    """True lets a daemon bind or connect without CURVE on an address other than loopback:
    then anyone who reaches the port writes into the store and reads every prediction."""
    keys_dir: str = _opt("")
    server_public_key_file: str = _opt("")
    server_secret_key_file: str = _opt("")
    client_public_key_file: str = _opt("")
    client_secret_key_file: str = _opt("")
    authorized_clients_dir: str = _opt("")

    def key_files(self, env: Mapping[str, str] | None = None) -> KeyFiles:
        """Resolve every key location; ``keys_dir`` "" is /etc/nomade/keys for root,
        else ``$XDG_CONFIG_HOME/nomade/keys`` (default ``~/.config``)."""
        env = os.environ if env is None else env
        if self.keys_dir:
            keys = _expand(self.keys_dir)
        elif os.geteuid() == 0:
            keys = Path("/etc/nomade/keys")
        else:
            keys = _xdg(env, "XDG_CONFIG_HOME", ".config") / "nomade" / "keys"

        def pick(value: str, default: str) -> Path:
            return _expand(value) if value else keys / default

        return KeyFiles(
            keys_dir=keys,
            server_public_key_file=pick(self.server_public_key_file, "server.key"),
            server_secret_key_file=pick(self.server_secret_key_file, "server.key_secret"),
            client_public_key_file=pick(self.client_public_key_file, "client.key"),
            client_secret_key_file=pick(self.client_secret_key_file, "client.key_secret"),
            authorized_clients_dir=pick(self.authorized_clients_dir, "authorized_clients"),
        )


def is_loopback(endpoint: str) -> bool:
    """True for an endpoint only this host can reach: ipc://, inproc://, or tcp:// to
    127.0.0.0/8, [::1] or localhost (``*`` and 0.0.0.0 are every interface: False)."""
    transport, _, rest = endpoint.partition("://")
    if transport in ("ipc", "inproc"):
        return True
    if transport != "tcp":
        return False
    host = rest.rsplit(":", 1)[0].split(";")[-1]
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return host in ("localhost", "::1") or re.fullmatch(r"127(\.\d{1,3}){3}", host) is not None


def check_endpoint(cfg: Config, key: str, endpoint: str) -> None:
    """Refuse (``NomadeError`` naming the file and key) to use ``endpoint``, the value of
    the dotted ``key``, without CURVE unless it is loopback or ``[security] insecure``."""
    security = cfg.security
    if security.curve_enabled or security.insecure or is_loopback(endpoint):
        return
    where = cfg.source if cfg.source is not None else "the built-in defaults"
    raise NomadeError(
        f"{where}: {key} = {endpoint!r} is not a loopback address and [security] "
        f"curve_enabled = false: nothing on it is encrypted or authenticated, so anyone who "
        f"reaches it could write into the store, read every prediction or pose as the agent. "
        f"Turn CURVE on (nomade keys setup), use a loopback address, or "
        f"accept the risk with [security] insecure = true")


@dataclass(frozen=True)
class SlurmConfig:
    """``[slurm]``: where the Slurm tools are and how long a call may take."""

    bin_dir: str = _opt("")
    use_pyslurm: str = _opt("auto", choices=("auto", "never"))
    command_timeout_s: float = _opt(30.0, gt=0.0)


@dataclass(frozen=True)
class StorageConfig:
    """``[storage]``: the agent's SQLite database and how long it keeps what.

    Job samples are most of the file: 10,000 running jobs sampled every 30 s store
    28.8 M rows a day; a row takes ~70 bytes on disk with small counter values
    (``python -m bench prune`` measures it) and up to ~150 with large ones: 2-4 GB a day.
    Ended jobs younger than ``full_samples_days`` keep every sample; older
    ones keep at most ``thin_samples_to`` per node, evenly spaced in time, always the
    first and the last (240 covers a 2-hour job at 30 s in full and is 15 windows of the
    LSTM's default 8 minutes); after ``sample_retention_days`` a job's
    samples go and its row (requests, times, final state, label) stays for good. With the
    defaults the samples of the last 14 days dominate: 30-60 GB at that site, plus 240 rows
    per ended job a year. Running jobs are never touched. ``prune_interval_s`` is how often
    the agent prunes (0: never; ``nomade db prune`` then does it by hand).
    """

    db_path: str = _opt("")
    full_samples_days: float = _opt(14.0, gt=0.0)
    thin_samples_to: int = _opt(240, ge=2)
    sample_retention_days: float = _opt(365.0, gt=0.0)
    node_sample_retention_days: float = _opt(30.0, gt=0.0)
    prediction_retention_days: float = _opt(180.0, gt=0.0)
    prune_interval_s: float = _opt(3600.0, ge=0.0)


_LEVELS_ABOVE_LOW = ("moderate", "high", "critical")


@dataclass(frozen=True)
class MailConfig:
    """``[mail]``: mail to a job's user when its risk reaches ``min_level`` (off by default).

    Only jobs whose ``--mail-type`` includes one of ``job_mail_types`` get mail, at their
    ``--mail-user`` (else the user's name, as Slurm does); one message per level reached
    on the way up, never two for one level. Sent through the site's MTA (``smtp_host``, ``smtp_port``)
    or, when ``mail_prog`` is set, through that program (Slurm's MailProg, called as
    ``mail_prog -s SUBJECT ADDRESS`` with the text on its standard input)."""

    enabled: bool = _opt(False)
    smtp_host: str = _opt("localhost", check=_NON_EMPTY)
    smtp_port: int = _opt(25, ge=1, le=65535)
    from_address: str = _opt("nomade@localhost", check=_NON_EMPTY)
    mail_prog: str = _opt("")
    min_level: str = _opt("critical", choices=_LEVELS_ABOVE_LOW)
    job_mail_types: tuple[str, ...] = _opt(("ALL", "FAIL"))
    """Slurm mail types that mean "yes": a failure warning is what ``FAIL`` asks for."""
    max_per_tick: int = _opt(20, ge=1)
    timeout_s: float = _opt(10.0, gt=0.0)


@dataclass(frozen=True)
class HooksConfig:
    """``[hooks]``: the local spool directory that Slurm hooks write into."""

    spool_dir: str = _opt("/var/spool/nomade", check=_NON_EMPTY)


@dataclass(frozen=True)
class Paths:
    """Every path-like setting resolved to a concrete value (see ``Config.paths``)."""

    models_dir: Path
    db_path: Path
    outbox_dir: Path
    collector_spool_dir: Path
    hooks_spool_dir: Path
    node_name: str
    keys: KeyFiles


@dataclass(frozen=True)
class Config:
    """The whole configuration; ``source`` is the file it came from (None: defaults)."""

    ml: MLConfig = _table(MLConfig)
    collector: CollectorConfig = _table(CollectorConfig)
    agent: AgentConfig = _table(AgentConfig)
    security: SecurityConfig = _table(SecurityConfig)
    slurm: SlurmConfig = _table(SlurmConfig)
    storage: StorageConfig = _table(StorageConfig)
    hooks: HooksConfig = _table(HooksConfig)
    mail: MailConfig = _table(MailConfig)
    source: Path | None = field(default=None, compare=False, metadata={"internal": True})

    def to_dict(self) -> dict[str, Any]:
        """Nested plain dict of the settings (TOML/JSON-ready; no ``source``)."""
        return _to_dict(self)

    def paths(self, env: Mapping[str, str] | None = None) -> Paths:
        """Resolve the "" defaults against ``env`` (default ``os.environ``) now."""
        env = os.environ if env is None else env
        state = _xdg(env, "XDG_STATE_HOME", ".local/state") / "nomade"
        data = _xdg(env, "XDG_DATA_HOME", ".local/share") / "nomade"
        hooks_spool = _expand(self.hooks.spool_dir)
        return Paths(
            models_dir=_expand(self.ml.models_dir) if self.ml.models_dir else data / "models",
            db_path=_expand(self.storage.db_path) if self.storage.db_path else state / "nomade.db",
            outbox_dir=_expand(self.collector.outbox_dir) if self.collector.outbox_dir else state / "outbox",
            collector_spool_dir=_expand(self.collector.spool_dir) if self.collector.spool_dir else hooks_spool,
            hooks_spool_dir=hooks_spool,
            node_name=self.collector.node_name or socket.gethostname().split(".")[0],
            keys=self.security.key_files(env),
        )


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a config file: the dotted key ("" for the whole file) and
    ``text``, the line shown after the file name (key, value found, what was expected)."""

    key: str
    text: str

    def __str__(self) -> str:
        return self.text


class ConfigError(NomadeError, ValueError):
    """A config file that cannot be used; ``problems`` lists everything wrong in it.

    The message has one line per problem, each naming the file, the dotted key,
    the value found and what was expected.
    """

    def __init__(self, path: str | os.PathLike[str], problems: list[Problem]) -> None:
        self.path = Path(path)
        self.problems = list(problems)
        super().__init__("\n".join(f"{self.path}: {problem}" for problem in self.problems))


def load(path: str | os.PathLike[str] | None = None) -> Config:
    """Load and validate the config: ``path``, else $NOMADE_CONFIG, else
    /etc/nomade/nomade.toml if it exists, else the defaults. Raises ConfigError."""
    chosen = _choose_file(path)
    if chosen is None:
        return Config()
    return _parse(chosen, _read_toml(chosen))


def _choose_file(path: str | os.PathLike[str] | None) -> Path | None:
    if path is not None and str(path) != "":
        return Path(path)
    from_env = os.environ.get(ENV_VAR, "")
    if from_env:
        return Path(from_env)
    return SYSTEM_CONFIG if SYSTEM_CONFIG.is_file() else None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(path, [Problem("", "no such file")]) from None
    except OSError as exc:
        raise ConfigError(path, [Problem("", f"cannot read: {exc.strerror or exc}")]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, [Problem("", f"not valid TOML: {exc}")]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(path, [Problem("", f"not valid TOML: not UTF-8 ({exc.reason})")]) from None


def _parse(path: Path, data: dict[str, Any]) -> Config:
    problems: list[Problem] = []
    config = _build(Config, data, "", problems)
    _check_weights(config.ml.ensemble, problems)
    _check_retention(config.storage, problems)
    if problems:
        raise ConfigError(path, problems)
    return dataclasses.replace(config, source=path)


def _settable_fields(cls: type) -> dict[str, dataclasses.Field[Any]]:
    return {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}


def _build(cls: type, data: Mapping[str, Any], prefix: str, problems: list[Problem]) -> Any:
    """Instantiate ``cls`` from ``data``, appending every problem; bad keys keep defaults."""
    fields = _settable_fields(cls)
    hints = get_type_hints(cls)
    values: dict[str, Any] = {}
    for key, raw in data.items():
        dotted = f"{prefix}.{key}" if prefix else key
        spec = fields.get(key)
        if spec is None:
            problems.append(_unknown_key(dotted, raw, prefix, list(fields)))
            continue
        kind = hints[key]
        if isinstance(kind, type) and dataclasses.is_dataclass(kind):
            if isinstance(raw, dict):
                values[key] = _build(kind, raw, dotted, problems)
            else:
                problems.append(Problem(dotted, f"{dotted} = {_show(raw)}: expected a table [{dotted}]"))
            continue
        converted = _convert(raw, kind, spec.metadata)
        if isinstance(converted, _Rejected):
            problems.append(Problem(dotted, f"{dotted} = {_show(raw)}: expected {converted.expected}"))
        else:
            values[key] = converted
    return cls(**values)


@dataclass(frozen=True)
class _Rejected:
    expected: str


def _convert(raw: Any, kind: Any, rules: Mapping[str, Any]) -> Any:
    """Return the typed value, or _Rejected(what was expected)."""
    expected = _expectation(kind, rules)
    if kind is bool:
        ok = isinstance(raw, bool)
    elif kind is int:
        ok = isinstance(raw, int) and not isinstance(raw, bool) and _in_range(raw, rules)
    elif kind is float:
        ok = (isinstance(raw, (int, float)) and not isinstance(raw, bool)
              and math.isfinite(raw) and _in_range(raw, rules))
        raw = float(raw) if ok else raw
    elif kind is str:
        ok = isinstance(raw, str) and _string_ok(raw, rules)
    else:  # tuple[str, ...]
        ok = isinstance(raw, list) and all(isinstance(item, str) for item in raw)
        raw = tuple(raw) if ok else raw
    return raw if ok else _Rejected(expected)


def _in_range(value: float, rules: Mapping[str, Any]) -> bool:
    return not (("ge" in rules and value < rules["ge"]) or ("gt" in rules and value <= rules["gt"])
                or ("le" in rules and value > rules["le"]) or ("lt" in rules and value >= rules["lt"]))


def _string_ok(value: str, rules: Mapping[str, Any]) -> bool:
    if "choices" in rules and value not in rules["choices"]:
        return False
    return "check" not in rules or rules["check"].test(value)


def _expectation(kind: Any, rules: Mapping[str, Any]) -> str:
    if kind is bool:
        return "true or false"
    if kind in (int, float):
        noun = "an integer" if kind is int else "a number"
        low = [(key, rules[key]) for key in ("ge", "gt") if key in rules]
        high = [(key, rules[key]) for key in ("le", "lt") if key in rules]
        if low and high:
            (lk, lv), (hk, hv) = low[0], high[0]
            return f"{noun} in {'[' if lk == 'ge' else '('}{_num(lv)}, {_num(hv)}{']' if hk == 'le' else ')'}"
        ops = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
        return " ".join([noun] + [f"{ops[key]} {_num(value)}" for key, value in low + high])
    if kind is str:
        if "choices" in rules:
            return "one of " + ", ".join(json.dumps(choice) for choice in rules["choices"])
        if "check" in rules:
            return rules["check"].expected
        return "a string"
    return "a list of strings"


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _unknown_key(dotted: str, raw: Any, prefix: str, valid: list[str]) -> Problem:
    import difflib  # only on this error path: 0.2 MB of RSS a running collector keeps

    name = dotted.rsplit(".", 1)[-1]
    where = f"[{prefix}]" if prefix else "the top level"
    close = [f"{prefix}.{match}" if prefix else match
             for match in difflib.get_close_matches(name, valid, n=3, cutoff=0.6)]
    hint = f" (did you mean {' or '.join(close)}?)" if close else ""
    what = f"[{dotted}]: unknown table" if isinstance(raw, dict) else f"{dotted} = {_show(raw)}: unknown key"
    return Problem(dotted, f"{what}{hint}; valid keys in {where}: {', '.join(valid)}")


def _check_weights(ensemble: EnsembleConfig, problems: list[Problem]) -> None:
    if ensemble.gnn_weight + ensemble.lstm_weight + ensemble.autoencoder_weight <= 0:
        problems.append(Problem("ml.ensemble", "ml.ensemble: all three weights are 0: expected at least one > 0"))


def _check_retention(storage: StorageConfig, problems: list[Problem]) -> None:
    if storage.full_samples_days > storage.sample_retention_days:
        problems.append(Problem("storage.full_samples_days", (
            f"storage.full_samples_days = {_num(storage.full_samples_days)}: expected at most "
            f"storage.sample_retention_days ({_num(storage.sample_retention_days)})")))


def _show(value: Any) -> str:
    """Render a value the way it looks in TOML (strings quoted, booleans lower case)."""
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _to_dict(obj: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in _settable_fields(type(obj)):
        value = getattr(obj, name)
        if dataclasses.is_dataclass(value):
            out[name] = _to_dict(value)
        elif isinstance(value, tuple):
            out[name] = list(value)
        else:
            out[name] = value
    return out


def _expand(value: str) -> Path:
    return Path(value).expanduser()


def _xdg(env: Mapping[str, str], var: str, fallback: str) -> Path:
    """An XDG base directory: the variable when set and absolute, else ~/fallback."""
    value = env.get(var, "")
    if value and os.path.isabs(value):
        return Path(value)
    return Path.home() / fallback
