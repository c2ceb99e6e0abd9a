"""``nomade job JOBID``: what NØMADE saw of one of your jobs, running or ended.

Asks the agent (``[agent] query_endpoint``) with a MUNGE credential, as Slurm's own
commands do; the agent answers only about the caller's own jobs (admins: every job).
See ``EPILOG`` for the page, the access rules and the exit codes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from nomade.config import Config, check_endpoint
from nomade.errors import NomadeError

NAME = "job"
HELP = "one job's request against use, risk over the run, levels crossed, advice given"
EPILOG = """\
example:
  $ nomade job 4711
  Job 4711  user alice  partition cpu  account phys  nodes cn01 (1)
  State   RUNNING since 14:02
  ...
          requested     used
  CPUs    8             2.1 busy on average (26%)
  Memory  16.0 GiB      peak 14.2 GiB (89%), now 12.1 GiB (at 16:39)
  Time    4h 00m        2h 38m used (66%), 1h 22m left
  ...
  Risk    316 predictions; highest 0.91 at 15:12; now 0.84 critical
   1.0 |              ▂▆██▇▇
   ...  one column per time slice: the highest risk predicted in it
  Levels  first reached: low 14:03, moderate 14:20, high 14:35, critical 15:02
  Advice  written to the job's Comment:
          14:36  risk high 0.74 at 14:36: Memory peak 89% of request ...

what it shows:
  used       CPUs busy on average (CPU seconds / elapsed), memory peak (sum of each
             node's peak) and now, time used and left, bytes read and written.
  Risk       NØMADE's predicted probability that the job fails, over the run.
  Levels     low < 0.3 <= moderate < 0.6 <= high < 0.8 <= critical.
  Advice     the text NØMADE put in the job's Comment (squeue -o %k shows it while
             the job runs) when the risk stayed above the alert threshold.
  Note       old jobs' samples are thinned, then dropped, by the store's retention:
             the page says so when its figures rest on fewer samples.

who sees what:
  You see your own jobs. root, the agent's user and [agent] query_admins see all.
  A job that is not yours is answered like a job NØMADE does not know.
  Who you are comes from MUNGE (munged must run here, with the cluster's key).
  With CURVE on ([security] curve_enabled, the default) the query is encrypted and
  only the agent whose public server.key you hold can answer: --server-key FILE, else
  [security] server_public_key_file (sites install a world-readable copy of the
  agent's server.key and name it there; it is public, its _secret twin is not).

exit status:
  0 shown; 1 no such job of yours; 2 bad job id, bad config, no MUNGE credential,
  or the agent refused the request; 3 the agent did not answer, or is busy: try again.
"""
EXIT_NOT_FOUND, EXIT_ERROR, EXIT_UNAVAILABLE = 1, 2, 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``JOBID [--json] [--endpoint E] [--server-key FILE] [--timeout S] [--ascii]``."""
    parser.epilog = EPILOG
    parser.add_argument("job_id", metavar="JOBID",
                        help="the Slurm job id; an array task by its own id (squeue -o %%A, "
                             "or $SLURM_JOB_ID inside the task), as NØMADE keeps it")
    parser.add_argument("--json", action="store_true",
                        help="print the agent's report as one JSON object (times: POSIX seconds)")
    parser.add_argument("--endpoint", metavar="E",
                        help="the agent's query socket (default: [agent] query_endpoint)")
    parser.add_argument("--server-key", type=Path, metavar="FILE",
                        help="the agent's public CURVE key (default: [security] "
                             "server_public_key_file; not used when curve_enabled is false)")
    parser.add_argument("--timeout", type=float, default=10.0, metavar="S",
                        help="seconds to wait for the agent (default 10)")
    parser.add_argument("--ascii", action="store_true",
                        help="draw the risk chart with ASCII characters only")


def run(args: argparse.Namespace, cfg: Config) -> int:
    """Ask, print; the exit status of ``EPILOG``."""
    from nomade import jobquery, jobview

    endpoint = args.endpoint or cfg.agent.query_endpoint
    if not endpoint:
        print("nomade: error: [agent] query_endpoint is \"\": the agent answers no queries "
              "(set it, or pass --endpoint)", file=sys.stderr)
        return EXIT_ERROR
    server_key = _server_key(args, cfg, endpoint)
    try:
        job = jobquery.ask(endpoint, jobquery.check_job_id(args.job_id.strip()),
                           server_key=server_key, timeout_s=args.timeout)
    except jobquery.QueryError as e:
        print(f"nomade: {'error: ' if e.code != 'not_found' else ''}{e}", file=sys.stderr)
        return {"not_found": EXIT_NOT_FOUND, "busy": EXIT_UNAVAILABLE,
                "unreachable": EXIT_UNAVAILABLE}.get(e.code, EXIT_ERROR)
    if args.json:
        json.dump(job, sys.stdout, indent=1, sort_keys=True)
        sys.stdout.write("\n")
        return 0
    encoding = (getattr(sys.stdout, "encoding", None) or "ascii").lower()
    ascii_only = args.ascii or "utf" not in encoding
    width = shutil.get_terminal_size((80, 24)).columns
    sys.stdout.write(jobview.render(job, width=width, ascii_only=ascii_only))
    return 0


def _server_key(args: argparse.Namespace, cfg: Config, endpoint: str) -> bytes | None:
    """The agent's public CURVE key: ``--server-key``, else the config's when CURVE is on;
    None without CURVE, which only a loopback endpoint allows (``check_endpoint``)."""
    from nomade import zmqkeys

    if args.server_key is None and not cfg.security.curve_enabled:
        check_endpoint(cfg, "--endpoint" if args.endpoint else "agent.query_endpoint", endpoint)
        return None
    path = args.server_key or cfg.security.key_files().server_public_key_file
    if not path.is_file():
        raise NomadeError(f"CURVE is on ([security] curve_enabled) and the agent's public key {path} "
                          "is not here (or not readable): ask your admins for it and pass "
                          "--server-key FILE, or set [security] server_public_key_file")
    return zmqkeys.load_public_key(path)
