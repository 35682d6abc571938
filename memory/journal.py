"""The journal: a SQLite database (WAL mode) that records every conversation and every
turn — the user's text, the reply, the persona that answered, timings and timestamps —
so nothing said in the app is lost. A turn is written *before* generation starts (status
`pending`) and completed afterwards (`ok`, or `error` with whatever partial reply there
was), so even a crash mid-reply keeps the user's message.

The schema is versioned with `PRAGMA user_version`; `MIGRATIONS[i]` upgrades version i to
i+1 inside a transaction. A database newer than this code is refused, never rewritten."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from .errors import JournalError

MIGRATIONS: list[str] = [
    # v0 -> v1: conversations and turns.
    """
    CREATE TABLE conversations (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        title       TEXT NOT NULL DEFAULT '',
        created_at  TEXT NOT NULL,
        updated_at  TEXT NOT NULL
    );
    CREATE TABLE turns (
        id                 INTEGER PRIMARY KEY AUTOINCREMENT,
        conversation_id    INTEGER NOT NULL REFERENCES conversations(id),
        user_text          TEXT NOT NULL,
        reply              TEXT NOT NULL DEFAULT '',
        persona            TEXT NOT NULL,
        status             TEXT NOT NULL DEFAULT 'pending'
                           CHECK (status IN ('pending', 'ok', 'error')),
        error              TEXT,
        ttft_ms            REAL,
        total_ms           REAL,
        tokens             INTEGER,
        tokens_per_s       REAL,
        prompt_tokens      INTEGER,
        prompt_eval_tokens INTEGER,
        created_at         TEXT NOT NULL,
        completed_at       TEXT
    );
    CREATE INDEX turns_by_conversation ON turns(conversation_id, id);
    """,
    # v1 -> v2: scene memory. Imports are recorded so an import that was killed midway
    # can be rolled back on the next start; the names the user is known by ("me") persist
    # so every import agrees on who "me" is; each turn keeps the scenes it was given.
    """
    CREATE TABLE imports (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        source       TEXT NOT NULL,
        kind         TEXT NOT NULL DEFAULT '',
        status       TEXT NOT NULL DEFAULT 'running'
                     CHECK (status IN ('running', 'ok', 'failed', 'interrupted')),
        scenes_added INTEGER NOT NULL DEFAULT 0,
        error        TEXT,
        started_at   TEXT NOT NULL,
        finished_at  TEXT
    );
    CREATE TABLE me_names (
        name      TEXT PRIMARY KEY,
        added_at  TEXT NOT NULL
    );
    ALTER TABLE turns ADD COLUMN sources TEXT NOT NULL DEFAULT '[]';
    """,
    # v2 -> v3: personas. Which adapter version answered and why the router chose the
    # persona; the user's manual persona choices, which the router learns from.
    """
    ALTER TABLE turns ADD COLUMN adapter TEXT NOT NULL DEFAULT '';
    ALTER TABLE turns ADD COLUMN route_reason TEXT NOT NULL DEFAULT '';
    CREATE TABLE route_overrides (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        message     TEXT NOT NULL,
        persona     TEXT NOT NULL,
        routed_to   TEXT NOT NULL DEFAULT '',
        created_at  TEXT NOT NULL
    );
    """,
    # v3 -> v4: the user's verdict on a reply. Approved and edited replies become training
    # targets (the edit replaces the reply); edits and rejections also become preference pairs.
    """
    ALTER TABLE turns ADD COLUMN feedback TEXT CHECK (feedback IN ('approved', 'edited', 'rejected'));
    ALTER TABLE turns ADD COLUMN edited_text TEXT;
    ALTER TABLE turns ADD COLUMN feedback_at TEXT;
    CREATE INDEX turns_by_feedback ON turns(feedback, id);
    """,
    # v4 -> v5: background training. Each scheduled run is recorded (so a restart neither
    # loses nor repeats work); `watermark` is the last feedback turn a finished run covered.
    """
    CREATE TABLE training_runs (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        persona     TEXT NOT NULL,
        status      TEXT NOT NULL CHECK (status IN ('running', 'done', 'failed', 'cancelled', 'interrupted')),
        trigger     TEXT NOT NULL DEFAULT 'schedule',
        run_dir     TEXT NOT NULL DEFAULT '',
        watermark   INTEGER NOT NULL DEFAULT 0,
        version     INTEGER,
        promoted    INTEGER,
        summary     TEXT NOT NULL DEFAULT '{}',
        error       TEXT,
        started_at  TEXT NOT NULL,
        finished_at TEXT
    );
    CREATE INDEX training_runs_by_persona ON training_runs(persona, id);
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class Conversation:
    id: int
    title: str
    created_at: str
    updated_at: str
    turns: int = 0


@dataclass(frozen=True)
class Turn:
    id: int
    conversation_id: int
    user_text: str
    reply: str
    persona: str
    status: str
    error: str | None
    ttft_ms: float | None
    total_ms: float | None
    tokens: int | None
    tokens_per_s: float | None
    prompt_tokens: int | None
    prompt_eval_tokens: int | None
    created_at: str
    completed_at: str | None
    sources: str = "[]"  # JSON list of the scenes given to the prompt
    adapter: str = ""  # "<persona>/v<N>" of the LoRA that answered, "" = prompt-only
    route_reason: str = ""  # why Auto mode chose this persona ("" = chosen by hand)
    feedback: str | None = None  # 'approved' | 'edited' | 'rejected'
    edited_text: str | None = None
    feedback_at: str | None = None

    @property
    def source_list(self) -> list[dict]:
        return json.loads(self.sources or "[]")


class Journal:
    """Thread-safe access to the journal; one connection guarded by a lock (Gradio runs
    handlers on worker threads; SQLite writes are serialised anyway)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
            self._db.row_factory = sqlite3.Row
            self._check_version()  # before WAL: switching modes rewrites the file header
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise JournalError(f"Cannot open the journal {self.path}: {exc}") from None

    # -- schema -------------------------------------------------------------------------
    def _check_version(self) -> int:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            self._db.close()
            raise JournalError(
                f"The journal {self.path} has schema v{version}, newer than this app (v{SCHEMA_VERSION}). "
                "Upgrade alterego; the journal was left untouched."
            )
        return version

    def _migrate(self) -> None:
        version = self._check_version()
        for target in range(version + 1, SCHEMA_VERSION + 1):
            with self.transaction() as db:
                db.executescript_in_tx(MIGRATIONS[target - 1])  # type: ignore[attr-defined]
                db.execute(f"PRAGMA user_version = {target}")

    @property
    def schema_version(self) -> int:
        return self._db.execute("PRAGMA user_version").fetchone()[0]

    @contextmanager
    def transaction(self) -> Iterator["_Tx"]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield _Tx(self._db)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            else:
                self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def integrity_check(self) -> str:
        with self._lock:
            return self._db.execute("PRAGMA integrity_check").fetchone()[0]

    # -- conversations ------------------------------------------------------------------
    def create_conversation(self, title: str = "") -> int:
        ts = now_iso()
        with self.transaction() as db:
            cur = db.execute(
                "INSERT INTO conversations(title, created_at, updated_at) VALUES (?, ?, ?)", (title, ts, ts)
            )
            return int(cur.lastrowid)

    def get_conversation(self, conversation_id: int) -> Conversation | None:
        with self._lock:
            row = self._db.execute(
                "SELECT c.*, (SELECT COUNT(*) FROM turns t WHERE t.conversation_id = c.id) AS turns "
                "FROM conversations c WHERE c.id = ?",
                (conversation_id,),
            ).fetchone()
        return Conversation(**dict(row)) if row else None

    def list_conversations(self, limit: int = 50) -> list[Conversation]:
        with self._lock:
            rows = self._db.execute(
                "SELECT c.*, (SELECT COUNT(*) FROM turns t WHERE t.conversation_id = c.id) AS turns "
                "FROM conversations c ORDER BY c.updated_at DESC, c.id DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [Conversation(**dict(r)) for r in rows]

    # -- turns --------------------------------------------------------------------------
    def start_turn(self, conversation_id: int, user_text: str, persona: str, route_reason: str = "") -> int:
        ts = now_iso()
        with self.transaction() as db:
            cur = db.execute(
                "INSERT INTO turns(conversation_id, user_text, persona, route_reason, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (conversation_id, user_text, persona, route_reason, ts),
            )
            # The first message names the conversation in the sidebar.
            db.execute(
                "UPDATE conversations SET updated_at = ?, "
                "title = CASE WHEN title = '' THEN ? ELSE title END WHERE id = ?",
                (ts, _title_from(user_text), conversation_id),
            )
            return int(cur.lastrowid)

    def finish_turn(
        self,
        turn_id: int,
        reply: str,
        *,
        status: str = "ok",
        error: str | None = None,
        timings: dict | None = None,
        sources: list[dict] | None = None,
    ) -> None:
        t = timings or {}
        with self.transaction() as db:
            db.execute(
                "UPDATE turns SET reply = ?, status = ?, error = ?, ttft_ms = ?, total_ms = ?, tokens = ?, "
                "tokens_per_s = ?, prompt_tokens = ?, prompt_eval_tokens = ?, completed_at = ?, sources = ?, "
                "adapter = ? WHERE id = ?",
                (
                    reply, status, error, t.get("ttft_ms"), t.get("total_ms"), t.get("tokens"),
                    t.get("tokens_per_s"), t.get("prompt_tokens"), t.get("prompt_eval_tokens"),
                    now_iso(), json.dumps(sources or [], ensure_ascii=False), t.get("adapter", ""), turn_id,
                ),
            )

    def interrupt_pending_turns(self, error: str = "interrupted: the app stopped before the reply was finished") -> int:
        """Mark turns still `pending` — their process died mid-reply (kill -9, power loss)
        — as `error`, so no one waits for them and the UI shows them interrupted. A turn
        another live process is still generating is finished by that process later
        (finish_turn overwrites the status), so marking it here loses nothing."""
        with self.transaction() as db:
            cur = db.execute(
                "UPDATE turns SET status = 'error', error = ?, completed_at = ? WHERE status = 'pending'",
                (error, now_iso()),
            )
            return cur.rowcount

    def get_turn(self, turn_id: int) -> Turn | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM turns WHERE id = ?", (turn_id,)).fetchone()
        return Turn(**dict(row)) if row else None

    def turns(self, conversation_id: int) -> list[Turn]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM turns WHERE conversation_id = ? ORDER BY id", (conversation_id,)
            ).fetchall()
        return [Turn(**dict(r)) for r in rows]

    def count_turns(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM turns").fetchone()[0]

    def set_feedback(self, turn_id: int, feedback: str, edited_text: str | None = None) -> Turn:
        if feedback not in ("approved", "edited", "rejected"):
            raise ValueError(feedback)
        with self.transaction() as db:
            cur = db.execute(
                "UPDATE turns SET feedback = ?, edited_text = ?, feedback_at = ? WHERE id = ? AND status = 'ok'",
                (feedback, edited_text, now_iso(), turn_id),
            )
            if cur.rowcount != 1:
                raise JournalError(f"No completed turn {turn_id} to give feedback on")
        return self.get_turn(turn_id)  # type: ignore[return-value]

    def turns_with_feedback(self, persona: str | None = None) -> list[Turn]:
        sql = "SELECT * FROM turns WHERE feedback IS NOT NULL"
        params: tuple = ()
        if persona:
            sql += " AND persona = ?"
            params = (persona,)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY id", params).fetchall()
        return [Turn(**dict(r)) for r in rows]

    def feedback_counts(self) -> dict[str, dict[str, int]]:
        """persona -> {approved, edited, rejected, pending} (pending = completed, no verdict)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT persona, COALESCE(feedback, 'pending') AS f, COUNT(*) FROM turns "
                "WHERE status = 'ok' GROUP BY persona, f"
            ).fetchall()
        out: dict[str, dict[str, int]] = {}
        for persona, f, n in rows:
            out.setdefault(persona, {"approved": 0, "edited": 0, "rejected": 0, "pending": 0})[f] = n
        return out

    def pending_turns(self, limit: int = 200) -> list[Turn]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM turns WHERE status = 'ok' AND feedback IS NULL ORDER BY id DESC LIMIT ?", (limit,)
            ).fetchall()
        return [Turn(**dict(r)) for r in rows]

    def recent_turns(self, limit: int = 200) -> list[Turn]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM turns ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        return [Turn(**dict(r)) for r in rows]

    # -- background training ------------------------------------------------------------
    def verdicts_since(self, persona: str, watermark: int) -> tuple[int, int]:
        """(count, newest id) of a persona's turns with a verdict (approved, edited or
        rejected: each one trains, see `tuning.dataset`) after `watermark`."""
        with self._lock:
            row = self._db.execute(
                "SELECT COUNT(*), COALESCE(MAX(id), 0) FROM turns WHERE persona = ? AND id > ? "
                "AND feedback IN ('approved', 'edited', 'rejected')",
                (persona, watermark),
            ).fetchone()
        return int(row[0]), int(row[1])

    def watermark(self, persona: str) -> int:
        with self._lock:
            row = self._db.execute(
                "SELECT COALESCE(MAX(watermark), 0) FROM training_runs WHERE persona = ? AND status = 'done'",
                (persona,),
            ).fetchone()
        return int(row[0])

    def start_run(self, persona: str, watermark: int, trigger: str) -> int:
        with self.transaction() as db:
            cur = db.execute(
                "INSERT INTO training_runs(persona, status, trigger, watermark, started_at) VALUES (?, 'running', ?, ?, ?)",
                (persona, trigger, watermark, now_iso()),
            )
            return int(cur.lastrowid)

    def update_run(self, run_id: int, **fields) -> None:
        allowed = {"status", "run_dir", "version", "promoted", "summary", "error"}
        cols = {k: v for k, v in fields.items() if k in allowed}
        if "summary" in cols and not isinstance(cols["summary"], str):
            cols["summary"] = json.dumps(cols["summary"], ensure_ascii=False)
        if cols.get("status") in ("done", "failed", "cancelled", "interrupted"):
            cols["finished_at"] = now_iso()
        sets = ", ".join(f"{k} = ?" for k in cols)
        with self.transaction() as db:
            db.execute(f"UPDATE training_runs SET {sets} WHERE id = ?", (*cols.values(), run_id))

    def runs(self, persona: str | None = None, limit: int = 50) -> list[dict]:
        sql, params = "SELECT * FROM training_runs", ()
        if persona:
            sql, params = sql + " WHERE persona = ?", (persona,)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY id DESC LIMIT ?", (*params, limit)).fetchall()
        return [dict(r) for r in rows]

    # -- router overrides ---------------------------------------------------------------
    def record_override(self, message: str, persona: str, routed_to: str) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO route_overrides(message, persona, routed_to, created_at) VALUES (?, ?, ?, ?)",
                (message, persona, routed_to, now_iso()),
            )

    def overrides(self, limit: int = 2000) -> list[tuple[str, str]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT message, persona FROM route_overrides ORDER BY id DESC LIMIT ?", (limit,)
            ).fetchall()
        return [(r[0], r[1]) for r in rows]

    # -- imports and identity (scene memory) --------------------------------------------
    def begin_import(self, source: str, kind: str) -> int:
        with self.transaction() as db:
            cur = db.execute(
                "INSERT INTO imports(source, kind, started_at) VALUES (?, ?, ?)", (source, kind, now_iso())
            )
            return int(cur.lastrowid)

    def finish_import(self, import_id: int, status: str, scenes_added: int = 0, error: str | None = None) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE imports SET status = ?, scenes_added = ?, error = ?, finished_at = ? WHERE id = ?",
                (status, scenes_added, error, now_iso(), import_id),
            )

    def running_imports(self) -> list[int]:
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT id FROM imports WHERE status = 'running'")]

    def me_names(self) -> set[str]:
        with self._lock:
            return {r[0] for r in self._db.execute("SELECT name FROM me_names")}

    def add_me_names(self, names: set[str]) -> None:
        with self.transaction() as db:
            for name in names:
                db.execute("INSERT OR IGNORE INTO me_names(name, added_at) VALUES (?, ?)", (name, now_iso()))


class _Tx:
    """The connection as seen inside a transaction. `executescript` would COMMIT the open
    transaction, so migrations run statement by statement instead."""

    def __init__(self, db: sqlite3.Connection):
        self._db = db

    def execute(self, sql: str, params: tuple = ()) -> sqlite3.Cursor:
        return self._db.execute(sql, params)

    def executescript_in_tx(self, script: str) -> None:
        for statement in _split_sql(script):
            self._db.execute(statement)


def _split_sql(script: str) -> list[str]:
    statements, buf = [], ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            statements.append(buf.strip())
            buf = ""
    if buf.strip():
        statements.append(buf.strip())
    return statements


def _title_from(text: str, limit: int = 60) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1].rstrip() + "…"
