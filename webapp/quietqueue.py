"""Gradio's event queue without its idle polling. Gradio 6's `Queue` looks for work by
sleeping 1 ms and checking again, forever (`start_processing`), and for progress updates
every 10 ms (`start_progress_updates`), whether or not anything is queued or running:
about a thousand event-loop wake-ups a second, nearly all of an idle app's CPU.
`QuietQueue` dispatches exactly as Gradio does (the dispatch step is copied from Gradio
6.31.0, the version constraints.txt pins) but, with nothing to dispatch, waits on an
`asyncio.Event` that `push` and the end of every job set, and polls progress only while a
job runs. Both waits give up after `IDLE_CHECK_S` and look again, a safety net that costs
two wake-ups a second. `quiet_queue(blocks)` swaps it in after `blocks.queue(...)`,
keeping every setting Gradio computed."""

from __future__ import annotations

import asyncio
import contextlib
import time

from gradio.queueing import Queue
from gradio.utils import run_coro_in_background, set_task_name

IDLE_CHECK_S = 1.0


class QuietQueue(Queue):
    """A `gradio.queueing.Queue` whose background loops sleep until there is work."""

    _work: asyncio.Event | None = None  # set when an event is queued or a job ends
    _busy: asyncio.Event | None = None  # set when a job starts

    def start(self):
        # Fresh events per start: an asyncio.Event belongs to the loop that first waits
        # on it, and a restarted server runs a new loop.
        self._work, self._busy = asyncio.Event(), asyncio.Event()
        super().start()

    @staticmethod
    async def _wait(event: asyncio.Event) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(IDLE_CHECK_S):
                await event.wait()

    def _wake(self) -> None:
        if self._work is not None:
            self._work.set()

    async def push(self, *args, **kwargs):
        result = await super().push(*args, **kwargs)
        self._wake()
        return result

    async def process_events(self, *args, **kwargs) -> None:
        try:
            await super().process_events(*args, **kwargs)
        finally:
            self._wake()  # a worker and a concurrency slot are free again

    async def start_processing(self) -> None:
        try:
            while not self.stopped:
                self._work.clear()
                batch = None
                if len(self) and None in self.active_jobs:
                    async with self.delete_lock:
                        batch = self.get_events()
                if batch is None:
                    await self._wait(self._work)
                    continue
                self._dispatch(*batch)
        finally:
            self.stopped = True
            self._cancel_asyncio_tasks()

    def _dispatch(self, events, batch, concurrency_id) -> None:
        """Start one batch of events: Gradio's `start_processing` body, unchanged."""
        self.active_jobs[self.active_jobs.index(None)] = events
        event_queue = self.event_queue_per_concurrency_id[concurrency_id]
        event_queue.current_concurrency += 1
        start_time = time.time()
        fn = events[0].fn
        event_queue.start_times_per_fn[fn].add(start_time)
        for event in events:
            if (a := self.event_analytics.get(event._id)) is not None:
                a["status"] = "processing"
        task = run_coro_in_background(self.process_events, events, batch, start_time, fn)
        set_task_name(task, events[0].session_hash, fn._id, events[0]._id, batch)
        self._asyncio_tasks.add(task)
        task.add_done_callback(self._asyncio_tasks.discard)
        if self.live_updates:
            self.broadcast_estimations(concurrency_id)
        self._busy.set()

    async def start_progress_updates(self) -> None:
        while not self.stopped:
            events = [evt for job in self.active_jobs if job is not None for evt in job]
            if not events:
                self._busy.clear()
                await self._wait(self._busy)
                continue
            for event in events:
                if event.progress_pending and event.progress:
                    event.progress_pending = False
                    self.send_message(event, event.progress)
            await asyncio.sleep(self.progress_update_sleep_when_free)


def quiet_queue(blocks) -> QuietQueue:
    """Make the queue `blocks.queue(...)` created a QuietQueue (same instance, same settings)."""
    queue = blocks._queue
    if not isinstance(queue, QuietQueue):
        queue.__class__ = QuietQueue
    return queue
