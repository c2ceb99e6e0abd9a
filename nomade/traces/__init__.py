"""Job history from accounting logs: SWF traces and ``sacct`` output → :class:`Trace`.

What becomes a feature is only what is known at submit or start: requested CPUs,
memory, GPUs, time limit, user (and group, executable, queue, partition, account as
categorical codes), submit and start time. Runtime, used CPU/memory and the final
state are kept only for labels and evaluation (``end_ts``, ``state``, ``label``);
see ``../shared/data/traces/README.md`` on leakage. Slurm's job completion logs
(``jobcomp/filetxt``, ``jobcomp/elasticsearch``) are read by ``nomade.jobcomp``.

Files are taken as they come, and strictly: a line or record that cannot be read (a
wrong field count, a number or time that is not one, a truncated gzip or JSON) raises
``NomadeError`` naming the file, the line and the record, before anything is written
anywhere. With ``partial=True`` such records are skipped and counted instead
(``Trace.skipped``; a truncated file keeps what was read before the cut,
``Trace.truncated`` says where). Lines that are well formed but not jobs (job steps,
a pending array's ``123_[1-5]`` range) are counted in ``Trace.ignored``.

A job with a final state and no start never ran (cancelled while pending): its start
is None (NaN), which keeps it out of every training and test example (``ml.train``);
``Trace.never_ran`` counts them.

**SWF** (Standard Workload Format, https://www.cs.huji.ac.il/labs/parallel/workload/swf.html):
18 whitespace-separated fields per line, ``;`` header comments, -1 unknown (any field),
optionally gzip-compressed. Times are seconds since the header's ``UnixStartTime``
(0 if absent). Status (field 11) → state: 1 COMPLETED, 0 FAILED, 5 CANCELLED,
3 COMPLETED and 4 FAILED (last part of a checkpointed job), 2 PARTIAL (a part that
continues: no label), -1 unknown (no label). A job with no run time (0 or -1) that
was cancelled, or got no processors, never ran. A job that ran but whose wait (field
3) is unknown has no known start: it is placed as if it started on submission (its
as-of moment is its submit time, its end submit + run time, the earliest it can have
ended); ``Trace.start_unknown`` counts them.

**sacct**: ``sacct --parsable2`` with a header line naming the fields (any order, extra
fields ignored; :data:`SACCT_FORMAT` order is assumed without one), or ``sacct --json``.
Job steps (``123.batch``, ``123.extern``, ``123.0``) are skipped: a step is part of its
job. A job is named by Slurm's own id (``JobIDRaw``, the JSON ``job_id``; ``JobID`` only
where the text has no ``JobIDRaw``), the id the hooks and cgroups use, so imported
history merges with what the agent recorded. Shapes read, by Slurm version:

- ``--parsable2``, 20.11 .. 25.11: ``ReqMem`` with a ``c``/``n`` suffix (per CPU / per
  node, older releases) or without (the job's request), ``Start`` ``Unknown`` or ``None``
  for a job that never started, ``NodeList`` ``None assigned``, ``State``
  ``CANCELLED by UID``; hetjob components ``123+0`` are jobs.
- ``--json`` 21.08 and 22.05 (``openapi/dbv0.0.37``, ``dbv0.0.38``): plain numbers,
  ``state.current`` a string, ``required.memory`` in MiB (per CPU when bit 63 is set).
- ``--json`` 23.02 .. 25.11 (``data_parser`` v0.0.39 .. v0.0.44): numbers as
  ``{"set", "infinite", "number"}``, ``state.current`` a list, ``required.memory_per_cpu``
  and ``memory_per_node``, ``exit_code.signal.id``. (20.11's ``sacct`` has no ``--json``.)

Produce the text with::

    sacct --allusers --allocations --parsable2 --starttime 2024-01-01 \\
          --format=JobID,User,Partition,Account,ReqCPUS,ReqMem,ReqTRES,AllocTRES,Timelimit,Submit,Start,End,State,ExitCode,NNodes,NodeList

The package: ``trace`` (``Trace``, ``Issues``, reading files), ``swf``, ``sacct``
(``--parsable2``), ``sacct_json``, ``fields`` (Slurm's text fields) and ``records``
(records to a trace, a trace to messages).
"""

from __future__ import annotations

from nomade.traces.fields import tres_gpus, tres_mem
from nomade.traces.records import END_KEYS, START_KEYS, message_fields, messages, trace_from_records
from nomade.traces.sacct import parse_sacct_lines, read_sacct
from nomade.traces.sacct_json import json_items, parse_sacct_json_text
from nomade.traces.swf import read_swf
from nomade.traces.trace import (
           CATEGORIES,
           PROGRESS_LINES,
           SACCT_FORMAT,
           SWF_STATUS,
           Issues,
           Progress,
           Trace,
           numbered_lines,
)

__all__ = ["CATEGORIES", "END_KEYS", "PROGRESS_LINES", "SACCT_FORMAT", "START_KEYS", "SWF_STATUS", "Issues",
           "Progress", "Trace", "json_items", "message_fields", "messages", "numbered_lines", "parse_sacct_json_text",
           "parse_sacct_lines", "read_sacct", "read_swf", "trace_from_records", "tres_gpus", "tres_mem"]
