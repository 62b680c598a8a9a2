"""The pure scheduling step and exit classification, stepped by hand (no processes, no clock)."""

from __future__ import annotations

import pytest

from remote_agent import defaults
from remote_agent.gpus import GpuReading, Readings
from remote_agent.scheduler import Block, ExitInfo, Kill, Launch, Requeue, classify_exit, match_oom, tick
from remote_agent.spec import parse_spec
from remote_agent.states import Job, JobState, transition

S = JobState


def mkspec(jobs, **queue):
    q = {"gpus": "auto", "poll_interval": 0.1}
    q.update(queue)
    full = []
    for j in jobs:
        d = {"cmd": "true", "cwd": "/tmp", "gpus_per_job": 1}
        d.update(j)
        full.append(d)
    return parse_spec({"format": "aris-queue-runspec", "version": 1, "run_id": "r", "jobs": full, "queue": q})


def readings(*used, total=81559, error=None, na=()):
    gpus = [
        GpuReading(
            i,
            f"GPU-{i}",
            None if i in na else u,
            None if i in na else total,
            "nvidia-smi reports memory as [N/A]" if i in na else None,
        )
        for i, u in enumerate(used)
    ]
    return Readings(gpus, error, 0.0)


def jobs_of(spec):
    return [Job(id=j.id) for j in spec.jobs]


def launches(res):
    return [(d.job, d.gpus) for d in res.decisions if isinstance(d, Launch)]


def test_launches_ready_jobs_in_order_on_free_gpus():
    spec = mkspec([{"id": "a"}, {"id": "b"}, {"id": "c"}])
    res = tick(0.0, readings(3, 70000, 3), jobs_of(spec), spec)
    assert launches(res) == [("a", (0,)), ("b", (2,))]
    busy = next(g for g in res.gpu_status if g.index == 1)
    assert not busy.usable and "busy" in busy.reason


def test_held_gpu_is_not_reused_even_before_its_memory_shows():
    spec = mkspec([{"id": "a"}, {"id": "b"}])
    js = jobs_of(spec)
    transition(js[0], S.RUNNING, "launch", 0.0, gpus=[0], started_at=0.0)
    res = tick(0.1, readings(3, 3), js, spec)
    assert launches(res) == [("b", (1,))]
    assert next(g for g in res.gpu_status if g.index == 0).reason == "held by job a"


def test_gpu_list_threshold_and_multi_gpu_jobs():
    spec = mkspec(
        [{"id": "big", "gpus_per_job": 2}, {"id": "small"}], gpus=[1, 2, 3], gpu_free_threshold_mib=1000
    )
    res = tick(0.0, readings(0, 0, 900, 1000), jobs_of(spec), spec)
    # GPU 0 is not the queue's, GPU 3 is at the threshold: big takes 1+2, small waits.
    assert launches(res) == [("big", (1, 2))]
    assert res.waiting == {"gpus": 1}


def test_a_waiting_multi_gpu_job_reserves_free_gpus_so_small_jobs_cannot_starve_it():
    spec = mkspec(
        [
            {"id": "small0"},
            {"id": "big", "gpus_per_job": 2},
            {"id": "small1"},
            {"id": "cpu", "gpus_per_job": 0},
        ]
    )
    js = jobs_of(spec)
    transition(js[0], S.RUNNING, "launch", 0.0, gpus=[0], started_at=0.0)
    # One GPU free, big needs two: small1 must not take the free one; the CPU job still starts.
    res = tick(0.1, readings(3, 3), js, spec)
    assert launches(res) == [("cpu", ())]
    assert res.waiting == {"gpus": 2}
    transition(js[0], S.COMPLETED, "exit 0", 0.2)
    res = tick(0.3, readings(3, 3), js, spec)
    assert launches(res)[0] == ("big", (0, 1))


def test_a_job_needing_more_gpus_than_the_queue_has_is_blocked_not_left_waiting():
    spec = mkspec([{"id": "huge", "gpus_per_job": 3}, {"id": "ok"}], gpus=[0, 1])
    res = tick(0.0, readings(3, 3, 3, 3), jobs_of(spec), spec)
    blocks = [(d.job, d.reason) for d in res.decisions if isinstance(d, Block)]
    assert blocks == [("huge", "needs 3 GPUs but the queue has 2")]
    assert launches(res) == [("ok", (0,))]
    # While nvidia-smi fails nothing is known about capacity: wait, do not block.
    res = tick(0.0, readings(error="nvidia-smi not found"), jobs_of(spec), spec)
    assert not [d for d in res.decisions if isinstance(d, Block)]


def test_na_gpu_is_skipped_with_reason():
    spec = mkspec([{"id": "a"}, {"id": "b"}])
    res = tick(0.0, readings(3, 3, na=(0,)), jobs_of(spec), spec)
    assert launches(res) == [("a", (1,))]
    g0 = next(g for g in res.gpu_status if g.index == 0)
    assert not g0.usable and "[N/A]" in g0.reason


def test_nvidia_smi_failure_stalls_only_gpu_jobs():
    spec = mkspec([{"id": "g"}, {"id": "c", "gpus_per_job": 0}])
    res = tick(0.0, Readings([], "nvidia-smi not found on PATH", 0.0), jobs_of(spec), spec)
    assert launches(res) == [("c", ())]
    assert res.waiting == {"gpu_error": 1}
    spec_list = mkspec([{"id": "g"}], gpus=[0])
    res = tick(
        0.0, Readings([], "nvidia-smi exited 9: NVIDIA-SMI has failed", 0.0), jobs_of(spec_list), spec_list
    )
    assert launches(res) == [] and "NVIDIA-SMI has failed" in res.gpu_status[0].reason


def test_cpu_only_queue_uses_max_parallel_slots_and_no_gpus():
    spec = mkspec([{"id": f"j{i}"} for i in range(5)], gpus=[], max_parallel=2)
    res = tick(0.0, Readings([], "unused", 0.0), jobs_of(spec), spec)
    assert launches(res) == [("j0", ()), ("j1", ())]
    assert res.gpu_status == []
    spec = mkspec([{"id": f"j{i}"} for i in range(5)], gpus=[])
    res = tick(0.0, Readings([], None, 0.0), jobs_of(spec), spec, cpu_count=3)
    assert len(launches(res)) == 3


def test_max_parallel_caps_gpu_jobs():
    spec = mkspec([{"id": f"j{i}"} for i in range(4)], max_parallel=1)
    res = tick(0.0, readings(3, 3, 3, 3), jobs_of(spec), spec)
    assert launches(res) == [("j0", (0,))]


def test_dependencies_wait_for_completed_and_block_transitively():
    spec = mkspec([{"id": "p"}, {"id": "c", "depends_on": ["p"]}, {"id": "g", "depends_on": ["c"]}])
    js = {j.id: j for j in jobs_of(spec)}
    res = tick(0.0, readings(3, 3, 3), list(js.values()), spec)
    assert launches(res) == [("p", (0,))]
    js["p"].status = S.COMPLETED
    assert launches(tick(0.0, readings(3, 3, 3), list(js.values()), spec)) == [("c", (0,))]
    js["p"].status = S.STUCK
    res = tick(0.0, readings(3, 3, 3), list(js.values()), spec)
    blocks = [(d.job, d.reason) for d in res.decisions if isinstance(d, Block)]
    assert blocks == [("c", "dependency p is stuck"), ("g", "dependency c is blocked")]
    assert launches(res) == [] and res.done


def test_failed_jobs_requeue_when_their_delay_passes_and_relaunch_in_the_same_tick():
    spec = mkspec([{"id": "a"}])
    (a,) = jobs_of(spec)
    a.status, a.retry_at = S.FAILED_OOM, 10.0
    res = tick(5.0, readings(3), [a], spec)
    assert res.decisions == [] and res.wake_at == 10.0 and not res.done
    res = tick(10.0, readings(3), [a], spec)
    assert res.decisions == [Requeue("a", "retry after failed_oom"), Launch("a", (0,))]


def test_timeout_kill_and_wake_time():
    spec = mkspec([{"id": "a", "timeout": 5}])
    (a,) = jobs_of(spec)
    transition(a, S.RUNNING, "launch", 100.0, started_at=100.0, gpus=[0])
    assert tick(102.0, readings(3), [a], spec).wake_at == 105.0
    assert Kill("a", "timeout after 5s") in tick(105.0, readings(3), [a], spec).decisions
    assert tick(105.0, readings(3), [a], spec, killing={"a"}).decisions == []


def test_higher_priority_starts_first_ties_keep_spec_order():
    spec = mkspec(
        [
            {"id": "a"},
            {"id": "b", "priority": 1},
            {"id": "c"},
            {"id": "d", "priority": 5},
            {"id": "e", "priority": 1},
        ]
    )
    res = tick(0.0, readings(3, 3, 3, 3, 3), jobs_of(spec), spec)
    assert launches(res) == [("d", (0,)), ("b", (1,)), ("e", (2,)), ("a", (3,)), ("c", (4,))]
    res = tick(0.0, readings(3, 3), jobs_of(spec), spec)
    assert launches(res) == [("d", (0,)), ("b", (1,))] and res.waiting == {"gpus": 3}


def test_equal_priorities_everywhere_keep_spec_order():
    spec = mkspec([{"id": f"j{i}", "priority": 3} for i in range(4)])
    assert spec.start_rank is None
    assert [j for j, _ in launches(tick(0.0, readings(3, 3), jobs_of(spec), spec))] == ["j0", "j1"]


def test_priority_with_max_parallel_takes_the_highest_and_counts_the_rest():
    spec = mkspec(
        [{"id": "a"}, {"id": "b"}, {"id": "c", "priority": 2}, {"id": "d", "priority": 1}], max_parallel=2
    )
    res = tick(0.0, readings(3, 3, 3, 3), jobs_of(spec), spec)
    assert launches(res) == [("c", (0,)), ("d", (1,))]
    assert res.waiting == {"max_parallel": 2}
    cpu = mkspec([{"id": "a"}, {"id": "b", "priority": 1}], gpus=[], max_parallel=1)
    assert launches(tick(0.0, Readings([], None, 0.0), jobs_of(cpu), cpu)) == [("b", ())]


def test_priority_never_jumps_a_dependency():
    spec = mkspec(
        [
            {"id": "p"},
            {"id": "child", "depends_on": ["p"], "priority": 100},
            {"id": "x", "priority": 1},
            {"id": "y"},
        ],
        max_parallel=2,
    )
    js = {j.id: j for j in jobs_of(spec)}
    res = tick(0.0, readings(3, 3, 3, 3), list(js.values()), spec)
    assert launches(res) == [("x", (0,)), ("p", (1,))]  # child is not ready: its priority does not matter yet
    js["p"].status = S.COMPLETED
    js["x"].status = S.COMPLETED
    res = tick(1.0, readings(3, 3, 3, 3), list(js.values()), spec)
    assert launches(res) == [("child", (0,)), ("y", (1,))]  # once ready it goes first


def test_reservation_follows_priority_order():
    # The big job comes last in the spec but first by priority: it reserves the one free GPU.
    spec = mkspec([{"id": "small0"}, {"id": "small1"}, {"id": "big", "gpus_per_job": 2, "priority": 1}])
    js = jobs_of(spec)
    transition(js[0], S.RUNNING, "launch", 0.0, gpus=[0], started_at=0.0)
    res = tick(0.1, readings(3, 3), js, spec)
    assert launches(res) == [] and res.waiting == {"gpus": 2}
    transition(js[0], S.COMPLETED, "exit 0", 0.2)
    assert launches(tick(0.3, readings(3, 3), js, spec)) == [("big", (0, 1))]
    # Without the priority small1 takes the free GPU first (spec order), as before.
    spec = mkspec([{"id": "small0"}, {"id": "small1"}, {"id": "big", "gpus_per_job": 2}])
    js = jobs_of(spec)
    transition(js[0], S.RUNNING, "launch", 0.0, gpus=[0], started_at=0.0)
    assert launches(tick(0.1, readings(3, 3), js, spec)) == [("small1", (1,))]


def test_draining_starts_nothing():
    spec = mkspec([{"id": "a"}])
    res = tick(0.0, readings(3), jobs_of(spec), spec, draining=True)
    assert launches(res) == [] and res.waiting == {"draining": 1}


# --------------------------------------------------------------------------- exits

TORCH_OOM = (
    'Traceback (most recent call last):\n  File "train.py", line 3, in <module>\n'
    "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of "
    "79.65 GiB of which 3.12 GiB is free.\n"
)


@pytest.mark.parametrize(
    ("text", "name"),
    [
        (TORCH_OOM, "torch.OutOfMemoryError"),
        ("RuntimeError: CUDA out of memory. Tried to allocate 2.00 MiB", "CUDA out of memory"),
        (
            "RuntimeError: CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
            "CUBLAS_STATUS_ALLOC_FAILED",
        ),
        ("RuntimeError: cuDNN error: CUDNN_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED"),
        (
            "jaxlib.xla_extension.XlaRuntimeError: RESOURCE_EXHAUSTED: Out of memory while trying to "
            "allocate 17179869184 bytes.",
            "XLA RESOURCE_EXHAUSTED",
        ),
        (
            "tensorflow.python.framework.errors_impl.ResourceExhaustedError: OOM when allocating tensor with "
            "shape[1024,1024]",
            "tf.errors.ResourceExhaustedError",
        ),
        ("cudaErrorMemoryAllocation: out of memory", "cudaErrorMemoryAllocation"),
        ("ValueError: bad split", None),
    ],
)
def test_oom_signatures(text, name):
    assert match_oom(text) == name


def test_extra_oom_signature_from_the_spec():
    assert match_oom("MyAllocator: arena exhausted", [r"arena exhausted"]) == "arena exhausted"


def _running(spec, jid="a"):
    job = Job(id=jid)
    transition(job, S.RUNNING, "launch", 0.0, attempts=1, started_at=0.0, gpus=[0])
    return job, spec.by_id[jid]


def test_classify_completed_and_missing_output():
    spec = mkspec([{"id": "a", "output_check": "ckpt/*.pt"}, {"id": "b"}])
    job, js = _running(spec)
    dec = classify_exit(job, js, ExitInfo(0, outputs=["ckpt/x.pt"]), 1.0)
    assert dec.to == S.COMPLETED and dec.fields["outputs"] == ["ckpt/x.pt"]
    dec = classify_exit(job, js, ExitInfo(0, outputs=[]), 1.0)
    assert dec.to == S.STUCK and dec.signature == "missing_output" and "output_check" in dec.reason
    job, js = _running(spec, "b")
    assert classify_exit(job, js, ExitInfo(0), 1.0).to == S.COMPLETED  # no output_check: exit code decides


def test_oom_retries_with_delay_then_stuck():
    spec = mkspec([{"id": "a", "oom_retry": {"delay": 30, "max_attempts": 3}}])
    job, js = _running(spec)
    seen = []
    for attempt in range(1, 4):
        dec = classify_exit(job, js, ExitInfo(1, log_tail=TORCH_OOM), 100.0)
        transition(job, dec.to, dec.reason, 100.0, **dec.fields)
        seen.append((job.status, job.retry_at, job.signature))
        if attempt < 3:
            transition(job, S.PENDING, "retry", 130.0)
            transition(job, S.RUNNING, "launch", 130.0, attempts=attempt + 1)
    assert seen == [
        (S.FAILED_OOM, 130.0, "torch.OutOfMemoryError"),
        (S.FAILED_OOM, 130.0, "torch.OutOfMemoryError"),
        (S.STUCK, None, "torch.OutOfMemoryError"),
    ]
    assert job.oom_failures == 3 and "3/3" in job.reason


def test_other_failures_use_the_retry_policy_and_name_the_exception():
    spec = mkspec([{"id": "a", "retry": {"delay": 0, "max_attempts": 2}}])
    job, js = _running(spec)
    dec = classify_exit(job, js, ExitInfo(1, log_tail="Traceback:\nValueError: nope\n"), 5.0)
    assert (dec.to, dec.signature, dec.fields["retry_at"]) == (S.FAILED_OTHER, "ValueError", 5.0)
    job.other_failures = 1
    assert classify_exit(job, js, ExitInfo(139), 5.0).signature == "SIGSEGV"


def test_timeout_is_a_failure_and_lost_counts_attempts():
    spec = mkspec([{"id": "a", "timeout": 5}])
    job, js = _running(spec)
    dec = classify_exit(job, js, ExitInfo(143, timed_out=True), 5.0)
    assert dec.to == S.STUCK and dec.signature == "timeout" and "timeout after 5s" in dec.reason
    for n in range(1, int(defaults.MAX_LOST) + 1):
        dec = classify_exit(job, js, ExitInfo(None, lost_reason="host rebooted"), 5.0)
        assert dec.fields["lost"] == n
        job.lost = n
    assert dec.to == S.STUCK and "lost 3 times" in dec.reason
    job.lost = 0
    assert classify_exit(job, js, ExitInfo(None), 5.0).to == S.PENDING


def test_prelude_failure_signature():
    spec = mkspec([{"id": "a"}])
    job, js = _running(spec)
    tail = "aris-queue: prelude line 2 failed (exit 1): conda activate nope\n"
    assert classify_exit(job, js, ExitInfo(98, log_tail=tail), 1.0).signature == "prelude_failed"


def test_a_multi_gpu_job_that_cannot_fit_now_does_not_hold_back_the_queue():
    # GPU 3 reads [N/A]: the 4-GPU job waits (the GPU may come back) but reserves nothing.
    spec = mkspec([{"id": "big", "gpus_per_job": 4}, {"id": "s1"}, {"id": "s2"}])
    res = tick(0.0, readings(0, 0, 0, 0, na=(3,)), jobs_of(spec), spec)
    assert launches(res) == [("s1", (0,)), ("s2", (1,))]
    assert res.waiting == {"gpus": 1}
    # The queue lists GPUs the host does not have: a job needing more than the host's GPUs is blocked.
    spec = mkspec([{"id": "big", "gpus_per_job": 4}, {"id": "s1"}], gpus=[0, 1, 2, 3])
    res = tick(0.0, readings(0, 0), jobs_of(spec), spec)
    assert [(d.job, d.reason) for d in res.decisions if isinstance(d, Block)] == [
        ("big", "needs 4 GPUs but the queue has 2")
    ]
    assert launches(res) == [("s1", (0,))]
