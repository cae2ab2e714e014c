"""The RQ worker class behind ``cpflow-worker``: RQ's forking worker with bounded shutdown.

RQ alone waits for the running job on SIGTERM (up to the job timeout, 24 h by default) and
joins its command-channel thread without a bound when it stops (a race leaves it waiting out
the thread's 60 s poll). Here:

- SIGTERM (warm shutdown) lets the job run for ``shutdown_grace_s`` more seconds; a job still
  running then is handed back: its work horse is killed and the job goes back to the front of
  the queue, so another worker starts it again (the record says queued, not failed).
- A second SIGTERM hands the job back at once (RQ would drop it as failed).
- Stopping the command-channel thread waits at most a second.
- A job whose record vanished or left "running" under it (Redis restarted without its data,
  lease expired) stops without publishing; RQ would log it as "Job OK": it is failed as lost.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType

from rq import Worker
from rq.executions import Execution
from rq.job import Job
from rq.queue import Queue

__all__ = ["GracefulWorker", "JobLost"]

log = logging.getLogger("cpflow.worker")

_CHANNEL_STOP_S = 1.0
_LOST = "abandoned"
"""What training.jobs.run_with_recorder returns when the job's record was lost under it."""


class JobLost(RuntimeError):
    """The job's record vanished or left "running" while the job ran; nothing was published."""


class GracefulWorker(Worker):
    """An ``rq.Worker`` that exits within ``shutdown_grace_s`` of SIGTERM, handing its job back
    through ``hand_back(job_id)`` when the job would outlast the grace (both set on the
    instance after construction)."""

    shutdown_grace_s: float = 20.0
    """Seconds a running job may go on after SIGTERM before it is handed back."""
    hand_back: Callable[[str], object] | None = None
    """Puts a job id taken back from its work horse back on the queue (JobQueue.hand_back)."""

    _job_id: str | None = None
    _taken_back: str | None = None
    _grace_timer: threading.Timer | None = None

    # -- signals -------------------------------------------------------------------------
    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        """Warm shutdown: stop after the job, or hand it back once the grace has passed."""
        if self.horse_pid and self._grace_timer is None:
            log.info(
                "SIGTERM: job %s may run %.0f s more, then it is handed back",
                self._job_id,
                self.shutdown_grace_s,
            )
            self._grace_timer = threading.Timer(self.shutdown_grace_s, self.take_back_job)
            self._grace_timer.daemon = True
            self._grace_timer.start()
        super().request_stop(signum, frame)

    def request_force_stop(self, signum: int, frame: FrameType | None) -> None:
        """A second SIGTERM during a job hands it back now; the worker exits right after."""
        if self.horse_pid:
            self.take_back_job()
            return
        super().request_force_stop(signum, frame)

    def take_back_job(self) -> None:
        """Kill the running job's work horse; :meth:`execute_job` then hands the job back."""
        job_id = self._job_id
        if not self.horse_pid or job_id is None or self._taken_back == job_id:
            return
        self._taken_back = job_id
        log.warning("shutting down: stopping job %s to hand it back to the queue", job_id)
        self.kill_horse(signal.SIGKILL)

    # -- job execution -------------------------------------------------------------------
    def execute_job(self, job: Job, queue: Queue) -> None:
        """Run ``job`` in a work horse; requeue it if shutdown took it back."""
        self._job_id = job.id
        try:
            super().execute_job(job, queue)
        finally:
            self._job_id = None
        if self._taken_back == job.id and self.hand_back is not None:
            self.hand_back(job.id)
            log.warning("job %s handed back to the queue", job.id)

    def _finalize_success(
        self, job: Job, queue: Queue, execution: Execution, return_value: object
    ) -> None:
        """RQ's bookkeeping of a job that returned; a job that lost its record is failed."""
        if not (isinstance(return_value, dict) and return_value.get("status") == _LOST):
            super()._finalize_success(job, queue, execution, return_value)
            return
        log.error("job %s lost: its record vanished or left running; nothing published", job.id)
        try:
            raise JobLost(
                f"job {job.id} lost: its record vanished or left 'running' while it ran (Redis "
                "restarted without its data, or the lease expired); nothing was published"
            )
        except JobLost:
            self._finalize_failure(job, queue, execution, sys.exc_info())

    def teardown(self) -> None:
        if self._grace_timer is not None:
            self._grace_timer.cancel()
        super().teardown()

    def unsubscribe(self) -> None:
        """Leave the command channel, waiting at most a second for its thread."""
        if self.pubsub_thread and self.pubsub is not None:
            self.log.info("Worker %s: unsubscribing from channel", self.name)
            self.pubsub.unsubscribe()
            self.pubsub_thread.stop(timeout=_CHANNEL_STOP_S)
            self.pubsub.close()
