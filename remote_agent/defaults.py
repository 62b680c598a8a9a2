"""Every tunable of the agent in one place, each with a one-line meaning.

Values the run spec carries (``queue.poll_interval``, ``queue.kill_grace``, ...) override the matching
defaults here; the rest can be overridden for a whole agent process with the environment variable
``ARIS_AGENT_TUNABLES`` holding a JSON object (tests shorten them that way), see :func:`tunable`.
"""

from __future__ import annotations

import json
import os

# --- spec defaults (used when spec.json leaves a queue field out)
POLL_INTERVAL = 2.0
"""Seconds between GPU readings and checks of adopted jobs (the loop also wakes at once on a child exit)."""
KILL_GRACE = 10.0
"""Seconds between SIGTERM and SIGKILL to a job's process group."""
GPU_FREE_THRESHOLD_MIB = 500
"""A GPU whose memory.used is at or above this many MiB is busy."""
LAUNCHER = "process"
"""How jobs are started: ``process`` (child of the agent), ``screen`` or ``tmux`` (attachable)."""

# --- agent-internal tunables
NVIDIA_SMI_TIMEOUT = 5.0
"""Seconds an nvidia-smi call may take before it counts as failing."""
GPU_READING_MAX_AGE = 0.5
"""A reading older than this is refreshed before launching a GPU job."""
MAX_LOST = 3
"""A job lost this many times (process gone without exit code) becomes stuck."""
SNAPSHOT_EVERY_RECORDS = 1000
"""Write queue_state.json after this many journal records..."""
SNAPSHOT_EVERY_SECONDS = 2.0
"""...or when this many seconds passed since the last snapshot and something changed."""
SNAPSHOT_COST_FACTOR = 100.0
"""The snapshot interval is at least this many times the last snapshot's write time, so snapshots take at
most ~1% of the scheduler's time (a 10,000-job snapshot costs ~60 ms: one every ~6 s; status no longer
reads it while the scheduler runs, digest.json serves that)."""
HEARTBEAT_EVERY = 1.0
"""Seconds between heartbeats written to agent.json."""
HEARTBEAT_STALE = 30.0
"""A scheduler on another host whose heartbeat is older than this is reported not alive."""
CONTROL_TIMEOUT = 10.0
"""Seconds a control command waits for the scheduler's answer."""
LOCK_WAIT = 3.0
"""Seconds ``run`` waits for the lock while a control command holds it briefly."""
DETACH_TIMEOUT = 30.0
"""Seconds ``run --detach`` waits for the detached scheduler to report that it holds the lock."""
LOG_TAIL_BYTES = 64 * 1024
"""Bytes of an attempt's log read to classify its exit."""
LOG_TAIL_LINES = 200
"""Lines of an attempt's log searched for OOM signatures."""
FAILURE_LINES = 5
"""Log lines kept with a failed job for the status digest."""
OUTPUT_MTIME_SLACK = 2.0
"""An output_check file counts when modified at most this many seconds before its attempt started (clock skew,
coarse NFS timestamps)."""
PID_FILE_WAIT = 1.0
"""Seconds to wait for a wrapper to fill its freshly created pid file."""
FSYNC = True
"""fsync the journal after each batch of records (turn off only for benchmarks on throwaway directories)."""
STATUS_RUNNING_MAX = 20
"""Running jobs listed in the status digest."""
STATUS_FAILURE_GROUPS = 10
"""Failure groups listed in the status digest."""
STATUS_GROUP_JOBS = 5
"""Job ids (and log lines) per failure group in the status digest."""
STATUS_LIMIT = 50
"""Default page size of ``status --jobs``."""
LOGS_TAIL = 100
"""Default ``logs --tail``."""


def tunable(name: str):
    """The value of tunable ``name``: ``ARIS_AGENT_TUNABLES`` (JSON object) overrides the module default."""
    raw = os.environ.get("ARIS_AGENT_TUNABLES")
    if raw:
        try:
            over = json.loads(raw)
        except ValueError:
            over = {}
        if isinstance(over, dict) and name in over:
            return over[name]
    return globals()[name]
