"""The background retraining job: an APScheduler `BackgroundScheduler` that, on an
interval, looks at the user's verdicts and retrains a persona when enough are new.

Each tick (one at a time: `max_instances=1`, `coalesce=True`):
1. for every persona, count approved, edited and rejected turns newer than its
   watermark (each kind trains: SFT pairs and the KTO stage; the newest
   feedback turn a finished run covered, kept in the journal);
2. if a persona has at least `tuning.min_new_approvals` new ones, run the tuning
   pipeline for it (harvest → train in a low-priority subprocess → export → evaluate →
   promote if it wins); the running engine picks a promoted adapter up on its next turn;
3. record the run in the journal and only then advance the watermark (the run row holds
   it), so a crash or restart neither loses approvals nor trains twice on them.
A failed run is recorded with its log and retried after `tuning.retry_minutes`, never in
a tight loop. Only one run exists per data root, across processes (`tuning.runlock`): a
tick that finds another process training reports "busy" and tries again next time. Runs
still 'running' when the app starts, with nobody holding that lock, were cut off by a
restart; they are marked interrupted and their approvals are picked up again."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from memory.journal import Journal
from personas.adapters import AdapterLibrary
from personas.catalog import PersonaCatalog

from .config import TuningConfig
from .errors import NotEnoughDataError, TuningUserError
from .pipeline import cancel as cancel_run
from .pipeline import read_status, train_persona
from .runlock import TrainingLock

log = logging.getLogger(__name__)
JOB_ID = "retrain"


@dataclass
class Deps:
    home: Path
    config: TuningConfig
    catalog: PersonaCatalog
    journal: Journal
    library: AdapterLibrary
    store_for: Callable[[str], object]  # persona -> scene store (or None)
    model_path: str = ""
    on_promoted: Callable[[str], None] | None = None


class RetrainScheduler:
    def __init__(self, deps: Deps):
        self.deps = deps
        self._scheduler = None
        self._lock = threading.Lock()  # one run at a time, also for "retrain now"
        self.current: dict | None = None  # {"persona", "run_id", "run_dir"} while a run is active
        self._recover()

    def _recover(self) -> None:
        """Runs still 'running' while nobody holds the training lock were cut off by a
        restart or a crash: mark them interrupted so their approvals are picked up again.
        While another alterego process (e.g. `alterego scheduler`) holds it, its run is left."""
        probe = TrainingLock(self.deps.home)
        if not probe.acquire():
            return
        try:
            for run in self.deps.journal.runs(limit=100):
                if run["status"] == "running":
                    self.deps.journal.update_run(run["id"], status="interrupted", error="the app stopped during the run")
        finally:
            probe.release()

    # -- scheduling -----------------------------------------------------------------------
    def start(self, interval_s: float | None = None) -> None:
        from apscheduler.schedulers.background import BackgroundScheduler

        seconds = interval_s if interval_s is not None else self.deps.config.schedule_minutes * 60
        self._scheduler = BackgroundScheduler(daemon=True)
        self._scheduler.add_job(
            self.tick, "interval", seconds=seconds, id=JOB_ID, max_instances=1, coalesce=True,
            next_run_time=datetime.now(timezone.utc) + timedelta(seconds=min(seconds, 60)),
        )
        self._scheduler.start()
        log.info("retraining job every %.0f s", seconds)

    def shutdown(self) -> None:
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
            self._scheduler = None

    @property
    def running(self) -> bool:
        return self._scheduler is not None and self._scheduler.running

    def next_run(self) -> datetime | None:
        job = self._scheduler.get_job(JOB_ID) if self._scheduler else None
        return job.next_run_time if job else None

    # -- the job --------------------------------------------------------------------------
    def due(self) -> list[tuple[str, int, int]]:
        """(persona, new verdicts, newest feedback id) for personas ready to retrain."""
        cfg, journal = self.deps.config, self.deps.journal
        ready = []
        for persona in self.deps.catalog.names():
            new, newest = journal.verdicts_since(persona, journal.watermark(persona))
            if new < cfg.min_new_approvals or self._backing_off(persona):
                continue
            ready.append((persona, new, newest))
        return ready

    def _backing_off(self, persona: str) -> bool:
        last = next(iter(self.deps.journal.runs(persona, limit=1)), None)
        if not last or last["status"] not in ("failed", "interrupted") or not last.get("finished_at"):
            return False
        finished = datetime.fromisoformat(last["finished_at"])
        return datetime.now(timezone.utc) - finished < timedelta(minutes=self.deps.config.retry_minutes)

    def tick(self) -> list[dict]:
        """One pass of the job; returns what it did (for tests and the UI)."""
        done = []
        for persona, new, newest in self.due():
            done.append(self.run(persona, newest, trigger=f"schedule: {new} new verdicts"))
        return done

    def run(self, persona: str, watermark: int | None = None, trigger: str = "manual", max_steps: int | None = None) -> dict:
        """Train one persona now (the job, or the UI's "retrain now")."""
        d = self.deps
        if watermark is None:
            watermark = d.journal.verdicts_since(persona, 0)[1]
        if not self._lock.acquire(blocking=False):
            return {"persona": persona, "status": "busy", "error": "another training run is in progress"}
        file_lock = TrainingLock(d.home)
        if not file_lock.acquire():  # another alterego process is training on this data
            self._lock.release()
            return {"persona": persona, "status": "busy", "error": "another alterego process is training on this data"}
        run_id = d.journal.start_run(persona, watermark, trigger)
        try:
            current = self.current = {"persona": persona, "run_id": run_id, "run_dir": None}

            def started(run_dir: Path) -> None:
                current["run_dir"] = str(run_dir)
                d.journal.update_run(run_id, run_dir=str(run_dir))

            outcome = train_persona(
                d.home, d.config, d.catalog.get(persona), journal=d.journal, store=d.store_for(persona),
                library=d.library, model_path=d.model_path, max_steps=max_steps, on_run_dir=started, lock_held=True,
            )
            summary = outcome.as_dict()
            if outcome.result.get("state") == "cancelled":
                d.journal.update_run(run_id, status="cancelled", run_dir=str(outcome.run_dir), summary=summary)
                return {"persona": persona, "status": "cancelled", "run_id": run_id}
            d.journal.update_run(
                run_id, status="done", run_dir=str(outcome.run_dir), version=summary["version"],
                promoted=int(summary["promoted"]), summary=summary,
            )
            if summary["promoted"] and d.on_promoted:
                d.on_promoted(persona)
            return {"persona": persona, "status": "done", "run_id": run_id, **summary}
        except NotEnoughDataError as exc:
            # Not a crash: nothing to learn from yet. Recorded as done so it isn't retried
            # until more approvals arrive.
            d.journal.update_run(run_id, status="done", error=str(exc))
            return {"persona": persona, "status": "skipped", "run_id": run_id, "error": str(exc)}
        except (TuningUserError, Exception) as exc:  # noqa: BLE001 — the job must survive any run
            log.exception("training %s failed", persona)
            d.journal.update_run(run_id, status="failed", error=str(exc))
            return {"persona": persona, "status": "failed", "run_id": run_id, "error": str(exc)}
        finally:
            self.current = None
            file_lock.release()
            self._lock.release()

    def cancel(self) -> bool:
        current = self.current
        if current and current.get("run_dir"):
            cancel_run(Path(current["run_dir"]))
            return True
        return False

    def progress(self) -> dict | None:
        current = self.current
        if not current or not current.get("run_dir"):
            return None
        status = read_status(Path(current["run_dir"]))
        return {**(status or {}), "persona": current["persona"]}

