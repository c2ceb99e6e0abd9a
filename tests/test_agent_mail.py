"""Mail at high risk, against a real SMTP server on loopback (aiosmtpd) and a real agent:
the job's --mail-type and --mail-user decide (read through ``scontrol show job``, here a
stand-in that prints Slurm 22.05's record of each job), one message per level reached,
never two for one level, none for a job that asked for no mail; an MTA that is down costs
a count, never the tick; Slurm's MailProg is called with an argument list."""

from __future__ import annotations

import dataclasses
import email
import email.policy
import json
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agenttools import agent_config, free_port
from aiosmtpd.controller import Controller

from nomade import wire
from nomade.agent.daemon import Agent
from nomade.agent.mail import MailPolicy, recipient
from nomade.config import Config, MailConfig
from nomade.slurm import Slurm

T0 = 1_764_856_800.0   # 2025-12-04T14:00:00Z
#: ``scontrol show -o job`` as Slurm 22.05 prints it (cut after MailType), by job.
RECORD = ("JobId={id} JobName=train UserId={user}(1001) GroupId={user}(1001) MCS_label=N/A Priority=1 "
          "Nice=0 Account=nomade QOS=normal JobState=RUNNING Reason=None Dependency=(null) "
          "TRES=cpu=4,mem=4G,node=1,billing=4 Partition=cpu NodeList=n1 WorkDir=/home/{user} "
          "StdOut=/home/{user}/slurm-{id}.out Power= {mail}")
JOBS = {
    "11": ("alice", "MailUser=alice@example.org MailType=FAIL"),   # asked for failure mail
    "12": ("bob", ""),                                             # no --mail-type: no mail
    "13": ("carol", "MailUser=carol@example.org MailType=BEGIN,END"),   # not a failure type
    # --mail-type=ALL as scontrol shows it, no --mail-user: the user's name
    "14": ("dave", "MailUser=(null) MailType=INVALID_DEPEND,BEGIN,END,FAIL,REQUEUE,STAGE_OUT"),
}
SCONTROL = """#!{python}
import json, pathlib, sys
here = pathlib.Path(__file__).parent
with open(here / "calls", "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
records = json.loads((here / "records.json").read_text())
job = sys.argv[-1]
if job not in records:
    sys.exit("slurm_load_jobs error: Invalid job id specified")
print(records[job])
"""
MAILPROG = """#!{python}
import json, pathlib, sys
pathlib.Path(__file__).with_name("mailed.json").write_text(json.dumps({{"argv": sys.argv[1:], "stdin": sys.stdin.read()}}))
"""


class Inbox:
    """aiosmtpd handler that keeps every envelope it accepts."""

    def __init__(self) -> None:
        self.envelopes: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # aiosmtpd's hook name
        self.envelopes.append(envelope)
        return "250 Message accepted for delivery"

    def messages(self) -> list[tuple[list[str], email.message.EmailMessage]]:
        return [(list(e.rcpt_tos), email.message_from_bytes(e.content, policy=email.policy.default))
                for e in self.envelopes]


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int]]:
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield inbox, controller.port
    finally:
        controller.stop()


def _scontrol(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tool = bin_dir / "scontrol"
    tool.write_text(SCONTROL.format(python=sys.executable))
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    (bin_dir / "records.json").write_text(json.dumps(
        {job: RECORD.format(id=job, user=user, mail=mail) for job, (user, mail) in JOBS.items()}))
    return bin_dir


def _config(tmp_path: Path, **mail: Any) -> Config:
    cfg = agent_config(tmp_path)
    return dataclasses.replace(cfg, mail=MailConfig(**{"enabled": True, "smtp_host": "127.0.0.1", **mail}))


def _agent(tmp_path: Path, **mail: Any) -> tuple[Agent, Path]:
    bin_dir = _scontrol(tmp_path)
    agent = Agent(_config(tmp_path, **mail), slurm=Slurm(bin_dir=str(bin_dir)), name="agent0")
    agent.state.apply([wire.make("job.start", "ctld", 0, {
        "job_id": job, "user": user, "partition": "cpu", "nodes": ["n1"], "req_cpus": 4,
        "start_ts": T0}, T0) for job, (user, _) in JOBS.items()])
    return agent, bin_dir


def _tick(agent: Agent, k: int, levels: dict[str, tuple[str, float]]) -> int:
    """One tick's predictions (each through the wire's validation) handed to the agent's mail step."""
    factor = {"name": "mem_peak_frac", "value": 0.97, "normal": 0.4, "ratio": 2.4,
              "text": "Memory peak near its limit (97%): request more memory"}
    predictions = [wire.make("prediction", "agent0", 0, {
        "job_id": job, "user": JOBS[job][0], "partition": "cpu", "nodes": ["n1"], "risk": risk, "level": level,
        "parts": {"gnn": risk}, "factors": [factor], "ts": T0 + 30 * k}, T0 + 30 * k).body
        for job, (level, risk) in levels.items()]
    return agent.send_mail(predictions, [r.job_id for r in agent.state.scorable()])


def test_one_mail_per_level_to_the_jobs_that_asked_and_none_again(tmp_path: Path, smtp: tuple[Inbox, int]) -> None:
    inbox, port = smtp
    agent, bin_dir = _agent(tmp_path, smtp_port=port, from_address="nomade@cluster.example.org")
    try:
        all_critical = {job: ("critical", 0.93) for job in JOBS}
        assert _tick(agent, 0, all_critical) == 0          # not confirmed yet (confirm_predictions = 2)
        assert _tick(agent, 1, all_critical) == 2          # 11 (FAIL) and 14 (ALL); 12 and 13 asked for none
        assert _tick(agent, 2, all_critical) == 0          # the same level: never twice
        assert _tick(agent, 3, {job: ("high", 0.7) for job in JOBS}) == 0
        assert _tick(agent, 4, all_critical) == 0          # back to critical: already mailed
        assert _tick(agent, 5, all_critical) == 0
        got = inbox.messages()
        assert sorted(to for to, _ in got) == [["alice@example.org"], ["dave"]]
        to, msg = next(m for m in got if m[0] == ["alice@example.org"])
        assert msg["Subject"] == "NOMADE: job 11 at critical risk of failing (0.93)"
        assert msg["From"] == "nomade@cluster.example.org" and msg["To"] == "alice@example.org"
        body = msg.get_content()
        assert "Job 11 (user alice, partition cpu) is at critical risk of failing: 0.93 at 2025-12-04 14:00:30 UTC" in body
        assert "Advice: Memory peak near its limit (97%): request more memory" in body
        assert "squeue -j 11 -o %k" in body
        # Slurm is asked once per job, however many ticks
        calls = [json.loads(line) for line in (bin_dir / "calls").read_text().splitlines()]
        assert sorted(c[-1] for c in calls) == ["11", "12", "13", "14"]
        assert all(c[:3] == ["show", "-o", "job"] for c in calls)
        assert agent.metrics.mail_sent_total == 2 and agent.metrics.mail_failed_total == 0
        assert "nomade_agent_mail_sent_total 2.0" in agent.metrics.render()
    finally:
        agent.close()


def test_each_level_from_min_level_up_gets_its_one_message(tmp_path: Path, smtp: tuple[Inbox, int]) -> None:
    inbox, port = smtp
    agent, _ = _agent(tmp_path, smtp_port=port, min_level="high")
    try:
        for k, level in enumerate(["moderate", "high", "high", "high", "critical", "critical", "high", "critical"]):
            _tick(agent, k, {"11": (level, {"moderate": 0.4, "high": 0.7, "critical": 0.9}[level])})
        subjects = [m["Subject"] for _, m in inbox.messages()]
        assert subjects == ["NOMADE: job 11 at high risk of failing (0.70)",
                            "NOMADE: job 11 at critical risk of failing (0.90)"]
    finally:
        agent.close()


def test_an_mta_that_is_down_is_retried_then_counted_and_the_tick_goes_on(tmp_path: Path) -> None:
    agent, _ = _agent(tmp_path, smtp_port=free_port(), timeout_s=2.0)   # nothing listens there
    try:
        sent = [_tick(agent, k, {"11": ("critical", 0.95), "14": ("critical", 0.95)}) for k in range(7)]
        assert sent == [0] * 7
        # tick 0 confirms nothing; each tick stops at its first failure: 11 fails on ticks 1-3
        # and is dropped, then 14 on ticks 4-6
        assert agent.metrics.mail_failed_total == 2 and agent.mailer is not None
        assert agent.mailer.policy.mailed("11") == "critical" == agent.mailer.policy.mailed("14")
    finally:
        agent.close()


def test_slurms_mailprog_gets_an_argument_list_and_the_text_on_stdin(tmp_path: Path) -> None:
    prog = tmp_path / "mailprog"
    prog.write_text(MAILPROG.format(python=sys.executable))
    prog.chmod(prog.stat().st_mode | stat.S_IXUSR)
    agent, _ = _agent(tmp_path, mail_prog=str(prog))
    try:
        _tick(agent, 0, {"11": ("critical", 0.91)})
        assert _tick(agent, 1, {"11": ("critical", 0.92)}) == 1
        mailed = json.loads((tmp_path / "mailed.json").read_text())
        assert mailed["argv"] == ["-s", "NOMADE: job 11 at critical risk of failing (0.92)", "alice@example.org"]
        assert "Job 11 (user alice, partition cpu) is at critical risk of failing: 0.92" in mailed["stdin"]
    finally:
        agent.close()


def test_mail_is_off_unless_the_site_turns_it_on(tmp_path: Path) -> None:
    agent = Agent(agent_config(tmp_path), slurm=Slurm(bin_dir=str(_scontrol(tmp_path))), name="agent0")
    try:
        assert agent.mailer is None and agent.send_mail([], []) == 0
    finally:
        agent.close()


@pytest.mark.parametrize(("fields", "to"), [
    ({"MailType": "FAIL", "MailUser": "a@b.org"}, "a@b.org"),
    ({"MailType": "BEGIN,ALL", "MailUser": "a@b.org"}, "a@b.org"),
    ({"MailType": "END", "MailUser": "a@b.org"}, None),
    ({"MailUser": "a@b.org"}, None),                                    # no MailType: Slurm sends none
    ({"MailType": "NONE"}, None),
    ({"MailType": "FAIL", "UserId": "erin(1005)"}, "erin"),
    ({"MailType": "FAIL", "MailUser": "a@b.org\nBcc: x@y.org"}, None),   # not one address: never mailed
    ({"MailType": "FAIL", "MailUser": "a@b.org, x@y.org"}, None),
])
def test_the_recipient_is_read_from_the_jobs_mail_settings(fields: dict[str, str], to: str | None) -> None:
    assert recipient({"UserId": "u(1)", **fields}, ("ALL", "FAIL")) == to


def test_a_site_that_wants_only_all_gets_the_jobs_slurm_shows_with_every_part_of_all() -> None:
    every = "INVALID_DEPEND,BEGIN,END,FAIL,REQUEUE,STAGE_OUT"
    assert recipient({"MailType": every, "MailUser": "a@b.org"}, ("ALL",)) == "a@b.org"
    assert recipient({"MailType": "FAIL", "MailUser": "a@b.org"}, ("ALL",)) is None


def test_the_policy_forgets_ended_jobs() -> None:
    policy = MailPolicy("critical", confirm=1)
    p = {"job_id": "5", "risk": 0.9, "level": "critical", "ts": T0}
    assert [a.job_id for a in policy.decide([p], running=["5"])] == ["5"]
    policy.sent("5", "critical")
    assert policy.decide([p], running=["5"]) == []
    policy.retain([])
    assert policy.mailed("5") is None


def test_a_fall_is_not_mailed_and_a_jump_is_mailed_at_once() -> None:
    policy = MailPolicy("high", confirm=2)
    def levels(*names: str) -> list[list[str]]:
        out = []
        for k, name in enumerate(names):
            alerts = policy.decide([{"job_id": "5", "risk": 0.9, "level": name, "ts": T0 + k}], running=["5"])
            for a in alerts:
                policy.sent(a.job_id, a.level)
            out.append([a.level for a in alerts])
        return out
    # critical is confirmed on its second tick; the fall to high and the return are not mailed
    assert levels("moderate", "critical", "critical", "high", "high", "critical") == [[], [], ["critical"], [], [], []]
