"""The run directory's durable state: journal + snapshot, the run lock, agent.json and the control inbox.

Crash safety. Every change is a JSON line appended to ``journal.jsonl`` and fsynced (one fsync per batch of
records written together). ``queue_state.json`` is a snapshot (temp file, fsync, ``os.replace``) that
carries the journal ``seq`` and byte offset it reflects; a reader loads it and replays only the journal tail,
so status stays cheap for 10,000 jobs and no transition rewrites the whole state (that would be quadratic). A
torn last journal line (crash mid-write) is ignored by readers and cut off by the next writer. Only ``flock``,
``fsync``, ``os.replace`` and ``O_EXCL`` are used, which NFS (v3 with lockd, v4) provides.

One writer. The scheduler holds ``agent.lock`` (``fcntl.flock``) for its whole life; a control command with no
scheduler takes it briefly; read-only commands never take it, so they cannot make a concurrent ``run`` fail.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
import uuid
from typing import Any, Dict, Iterator, List, Optional

from . import defaults
from .errors import AlreadyRunningError
from .spec import RunSpec
from .states import Job

JOURNAL = "journal.jsonl"
SNAPSHOT = "queue_state.json"
AGENT_JSON = "agent.json"
LOCK = "agent.lock"
CONTROL = "control"


def atomic_write_json(path: str, obj: Any, *, fsync: bool = True, indent: Optional[int] = None) -> None:
    """Write ``obj`` as JSON to ``path`` so a reader sees the old or the new file, never half of one."""
    tmp = f"{os.path.dirname(path) or '.'}/.{os.path.basename(path)}.{os.getpid()}.tmp"
    # json.dumps (the C encoder) then one write: json.dump's chunked path is several times slower.
    text = json.dumps(obj, separators=(",", ":") if indent is None else None, indent=indent)
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text + "\n")
        f.flush()
        if fsync:
            os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path: str) -> Optional[dict]:
    """A JSON object from ``path``, or None when missing or unreadable (e.g. caught mid-replace on NFS)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# --------------------------------------------------------------------------- journal + snapshot


class Store:
    """Jobs of one run, loaded from snapshot + journal tail; the writer appends records and snapshots."""

    def __init__(self, run_dir: str, spec: RunSpec, *, writer: bool = False) -> None:
        self.run_dir = run_dir
        self.spec = spec
        self.writer = writer
        self.jobs: Dict[str, Job] = {}
        self.seq = 0
        self.offset = 0  # journal bytes reflected in self.jobs
        self.meta: Dict[str, Any] = {"started_at": None, "finished_at": None}
        self._fh: Any = None
        self._records_since_snapshot = 0
        self._last_snapshot = 0.0
        self._snapshot_cost = 0.0
        self._load()
        if writer:
            self._open_for_append()

    @property
    def journal_path(self) -> str:
        return os.path.join(self.run_dir, JOURNAL)

    @property
    def snapshot_path(self) -> str:
        return os.path.join(self.run_dir, SNAPSHOT)

    # --- loading
    def _fresh_jobs(self) -> Dict[str, Job]:
        return {j.id: Job(id=j.id, phase=j.phase) for j in self.spec.jobs}

    def _load(self) -> None:
        self.jobs = self._fresh_jobs()
        snap = read_json(self.snapshot_path)
        size = _size(self.journal_path)
        if snap and snap.get("run_id") == self.spec.run_id and int(snap.get("journal_offset", 0)) <= size:
            for d in snap.get("jobs", []):
                if d.get("id") in self.jobs:
                    self.jobs[d["id"]] = Job.from_dict(d)
            self.seq = int(snap.get("seq", 0))
            self.offset = int(snap.get("journal_offset", 0))
            self.meta["started_at"] = snap.get("started_at")
            self.meta["finished_at"] = snap.get("finished_at")
        self._replay_from(self.offset)

    def _replay_from(self, offset: int) -> None:
        for rec, end in iter_journal(self.journal_path, offset):
            if int(rec.get("seq", 0)) > self.seq:
                self._apply(rec)
                self.seq = int(rec["seq"])
            self.offset = end

    def refresh(self) -> None:
        """Read records appended since the last load (cheap: only the new tail)."""
        self._replay_from(self.offset)

    def _apply(self, rec: Dict[str, Any]) -> None:
        job = self.jobs.get(rec.get("job") or "")
        if job is not None and isinstance(rec.get("set"), dict):
            job.apply(rec["set"])
        if rec.get("event") == "agent":
            if rec.get("state") == "running" and self.meta["started_at"] is None:
                self.meta["started_at"] = rec.get("t")
            if rec.get("state") == "running":
                self.meta["finished_at"] = None
            if rec.get("state") == "finished":
                self.meta["finished_at"] = rec.get("t")

    # --- writing
    def _open_for_append(self) -> None:
        # A crash mid-append can leave a torn last line; cut it so the next record starts on a line boundary.
        if _size(self.journal_path) > self.offset:
            with open(self.journal_path, "r+b") as f:
                f.truncate(self.offset)
        self._fh = open(self.journal_path, "ab")  # noqa: SIM115 - kept open for the scheduler's life

    def append(self, records: List[Dict[str, Any]]) -> None:
        """Append ``records`` (already applied to the jobs by states.transition/update) with one fsync."""
        if not records:
            return
        assert self._fh is not None, "store opened read-only"
        lines = []
        for rec in records:
            self.seq += 1
            rec["seq"] = self.seq
            if rec.get("event") == "agent":  # job records were applied by transition()/update()
                self._apply(rec)
            lines.append(json.dumps(rec, separators=(",", ":"), default=str) + "\n")
        data = "".join(lines).encode("utf-8")
        self._fh.write(data)
        self._fh.flush()
        if defaults.tunable("FSYNC"):
            os.fsync(self._fh.fileno())
        self.offset += len(data)
        self._records_since_snapshot += len(records)

    def maybe_snapshot(self, now: float, force: bool = False) -> bool:
        """Write the snapshot when forced, after SNAPSHOT_EVERY_RECORDS records, or when changes are older
        than an interval that grows with the snapshot's own cost (so 10,000-job runs do not live in it)."""
        if not self._records_since_snapshot and not force:
            return False
        interval = max(
            defaults.tunable("SNAPSHOT_EVERY_SECONDS"), self._snapshot_cost * defaults.SNAPSHOT_COST_FACTOR
        )
        # A snapshot costs O(jobs); taking one at most every max(N, 2 x jobs) records keeps the amortized cost
        # per record constant, so a whole run stays linear in its number of transitions.
        every = max(int(defaults.tunable("SNAPSHOT_EVERY_RECORDS")), 2 * len(self.jobs))
        if not (force or self._records_since_snapshot >= every or now - self._last_snapshot >= interval):
            return False
        t0 = time.monotonic()
        atomic_write_json(self.snapshot_path, self.snapshot_dict(now))
        self._snapshot_cost = time.monotonic() - t0
        self._last_snapshot = now
        self._records_since_snapshot = 0
        return True

    def snapshot_dict(self, now: float) -> Dict[str, Any]:
        return {
            "version": 1,
            "run_id": self.spec.run_id,
            "project": self.spec.project,
            "seq": self.seq,
            "journal_offset": self.offset,
            "updated_at": now,
            "started_at": self.meta["started_at"],
            "finished_at": self.meta["finished_at"],
            "jobs": [j.to_dict() for j in self.jobs.values()],
        }

    def close(self, now: Optional[float] = None) -> None:
        if self._fh is not None:
            self.maybe_snapshot(time.time() if now is None else now, force=True)
            self._fh.close()
            self._fh = None


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def iter_journal(path: str, offset: int = 0) -> Iterator[tuple]:
    """``(record, end offset)`` of each complete journal line from ``offset``; a torn last line is skipped."""
    try:
        f = open(path, "rb")  # noqa: SIM115
    except FileNotFoundError:
        return
    with f:
        f.seek(offset)
        pos = offset
        for line in f:
            if not line.endswith(b"\n"):
                return  # being written (or torn by a crash): not a record yet
            pos += len(line)
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict):
                yield rec, pos


def last_seq(run_dir: str) -> int:
    """The sequence number of the last complete journal record (reads only the file's tail)."""
    path = os.path.join(run_dir, JOURNAL)
    size = _size(path)
    if not size:
        return 0
    with open(path, "rb") as f:
        f.seek(max(0, size - 65536))
        lines = f.read().split(b"\n")
    for line in reversed(lines[:-1]):  # the part after the last newline is torn or empty
        try:
            return int(json.loads(line)["seq"])
        except (ValueError, KeyError, TypeError):
            continue
    return 0


# --------------------------------------------------------------------------- the run lock


class RunLock:
    """``flock`` on ``agent.lock``; the holder writes ``{"pid", "host", "started_at", "role"}`` into it."""

    def __init__(self, run_dir: str) -> None:
        self.path = os.path.join(run_dir, LOCK)
        self.fd: Optional[int] = None

    def try_acquire(self, role: str) -> bool:
        """Take the lock without waiting; False when another process holds it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started_at": time.time(), "role": role}
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(info) + "\n").encode())
        self.fd = fd
        return True

    def acquire(self, role: str, wait: float = 0.0) -> None:
        """Take the lock, waiting up to ``wait`` s while a control command holds it; else already_running."""
        deadline = time.monotonic() + wait
        while not self.try_acquire(role):
            holder = self.holder()
            if holder.get("role") == "control" and time.monotonic() < deadline:
                time.sleep(0.05)
                continue
            raise AlreadyRunningError(
                f"a scheduler already runs this queue (pid {holder.get('pid')} on {holder.get('host')}); "
                "use status/retry/cancel/drain instead of starting another",
                pid=holder.get("pid"),
                host=holder.get("host"),
            )

    def holder(self) -> Dict[str, Any]:
        return read_json(self.path) or {}

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = None


# --------------------------------------------------------------------------- agent.json


def write_agent_json(run_dir: str, info: Dict[str, Any]) -> None:
    """Replace agent.json (pid, proc_start, host, version, state, heartbeat_at, gpu view) atomically."""
    atomic_write_json(os.path.join(run_dir, AGENT_JSON), info, fsync=False)


def read_agent_json(run_dir: str) -> Dict[str, Any]:
    return read_json(os.path.join(run_dir, AGENT_JSON)) or {}


# --------------------------------------------------------------------------- control inbox
#
# A request is control/<id>.json (written atomically). Whoever renames it to <id>.claimed first applies it:
# the scheduler, or the command itself when the scheduler went away meanwhile. The answer is <id>.done.json.


def post_request(run_dir: str, request: Dict[str, Any]) -> str:
    """Put a control request into the inbox; return its id."""
    cdir = os.path.join(run_dir, CONTROL)
    os.makedirs(cdir, mode=0o700, exist_ok=True)
    rid = uuid.uuid4().hex
    request = dict(request, id=rid, posted_at=time.time())
    atomic_write_json(os.path.join(cdir, rid + ".json"), request)
    return rid


def claim_request(run_dir: str, rid: str) -> Optional[Dict[str, Any]]:
    """Claim request ``rid`` (atomic rename); None when someone else claimed it first."""
    src = os.path.join(run_dir, CONTROL, rid + ".json")
    dst = os.path.join(run_dir, CONTROL, rid + ".claimed")
    try:
        os.rename(src, dst)
    except FileNotFoundError:
        return None
    return read_json(dst)


def inbox(run_dir: str) -> List[str]:
    """Ids of unclaimed requests, oldest first."""
    cdir = os.path.join(run_dir, CONTROL)
    try:
        names = [n for n in os.listdir(cdir) if n.endswith(".json") and not n.endswith(".done.json")]
    except FileNotFoundError:
        return []
    names = [n for n in names if not n.startswith(".")]

    def mtime(n: str) -> float:
        try:
            return os.path.getmtime(os.path.join(cdir, n))
        except OSError:
            return 0.0

    return [n[: -len(".json")] for n in sorted(names, key=mtime)]


def answer_request(run_dir: str, rid: str, result: Dict[str, Any]) -> None:
    atomic_write_json(os.path.join(run_dir, CONTROL, rid + ".done.json"), result)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(run_dir, CONTROL, rid + ".claimed"))


def take_answer(run_dir: str, rid: str) -> Optional[Dict[str, Any]]:
    """The answer to ``rid`` if there is one (removed once read)."""
    path = os.path.join(run_dir, CONTROL, rid + ".done.json")
    res = read_json(path)
    if res is not None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    return res
