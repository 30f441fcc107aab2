"""Ordered, named migrations of the SQLite store; each is applied once and recorded in `_migrations`."""

from __future__ import annotations

from typing import NamedTuple


class Migration(NamedTuple):
    name: str
    sql: str


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        "0001_events_jobs_outbox",
        """
        CREATE TABLE events (
            id            INTEGER PRIMARY KEY,
            job_id        TEXT    NOT NULL,
            last_updated  INTEGER NOT NULL,
            status        TEXT    NOT NULL,
            account_id    TEXT    NOT NULL,
            job_type      TEXT    NOT NULL,
            created       INTEGER NOT NULL,
            attempts      INTEGER,
            error_code    TEXT,
            error_message TEXT,
            body          TEXT    NOT NULL,
            received_at   INTEGER NOT NULL,
            UNIQUE (job_id, last_updated, status)
        );
        CREATE TABLE jobs (
            job_id        TEXT PRIMARY KEY,
            account_id    TEXT    NOT NULL,
            job_type      TEXT    NOT NULL,
            status        TEXT    NOT NULL,
            created       INTEGER NOT NULL,
            last_updated  INTEGER NOT NULL,
            attempts      INTEGER,
            error_code    TEXT,
            error_message TEXT,
            event_id      INTEGER NOT NULL REFERENCES events (id)
        ) WITHOUT ROWID;
        CREATE TABLE outbox (
            id              INTEGER PRIMARY KEY,
            event_id        INTEGER NOT NULL REFERENCES events (id),
            job_id          TEXT    NOT NULL,
            status          TEXT    NOT NULL,
            previous_status TEXT,
            created_at      INTEGER NOT NULL,
            processed_at    INTEGER
        );
        CREATE INDEX outbox_unprocessed ON outbox (id) WHERE processed_at IS NULL;
        CREATE TABLE heartbeat (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            at INTEGER NOT NULL
        );
        """,
    ),
    Migration(
        "0002_deliveries",
        """
        CREATE TABLE deliveries (
            id              INTEGER PRIMARY KEY,
            outbox_id       INTEGER NOT NULL REFERENCES outbox (id),
            job_id          TEXT    NOT NULL,
            status          TEXT    NOT NULL,
            rule            TEXT    NOT NULL,
            target          TEXT    NOT NULL,
            title           TEXT    NOT NULL,
            body            TEXT    NOT NULL,
            notify_type     TEXT    NOT NULL,
            state           TEXT    NOT NULL,
            attempts        INTEGER NOT NULL DEFAULT 0,
            next_attempt_at INTEGER,
            lease_until     INTEGER,
            created_at      INTEGER NOT NULL,
            sent_at         INTEGER,
            UNIQUE (outbox_id, rule, target)
        );
        CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE state IN ('pending', 'retrying');
        CREATE INDEX deliveries_job ON deliveries (job_id);
        CREATE TABLE delivery_attempts (
            id          INTEGER PRIMARY KEY,
            delivery_id INTEGER NOT NULL REFERENCES deliveries (id),
            at          INTEGER NOT NULL,
            ok          INTEGER NOT NULL,
            error       TEXT
        );
        CREATE INDEX delivery_attempts_delivery ON delivery_attempts (delivery_id);
        """,
    ),
    Migration(
        "0003_poll_state",
        """
        CREATE TABLE poll_jobs (
            account_id       TEXT    NOT NULL,
            job_id           TEXT    NOT NULL,
            job_type         TEXT    NOT NULL,
            last_seen_status TEXT,
            last_updated     INTEGER,
            done_at          INTEGER,
            added_at         INTEGER NOT NULL,
            PRIMARY KEY (account_id, job_id)
        ) WITHOUT ROWID;
        CREATE INDEX poll_jobs_open ON poll_jobs (account_id) WHERE done_at IS NULL;
        """,
    ),
    Migration(
        "0004_history_indexes",
        """
        -- Every index on jobs is maintained on every event: measured, each costs ingest dearly, so only
        -- the recency walk and a partial index of finished jobs (in-flight upserts skip it) exist.
        CREATE INDEX jobs_recent ON jobs (last_updated, job_id);
        CREATE INDEX jobs_finished ON jobs (status, last_updated, job_id)
            WHERE status IN ('Succeeded', 'Failed', 'Cancelled');
        CREATE INDEX deliveries_state ON deliveries (state, id);
        """,
    ),
    Migration(
        "0005_flood_control",
        """
        -- A digest is a delivery with no single job: job_id and outbox_id NULL, its transitions listed in
        -- digest_members. SQLite cannot relax NOT NULL in place, so the table is rebuilt (ids kept).
        CREATE TABLE deliveries_new (
            id              INTEGER PRIMARY KEY,
            outbox_id       INTEGER REFERENCES outbox (id),
            job_id          TEXT,
            status          TEXT    NOT NULL,
            rule            TEXT    NOT NULL,
            target          TEXT    NOT NULL,
            title           TEXT    NOT NULL,
            body            TEXT    NOT NULL,
            notify_type     TEXT    NOT NULL,
            state           TEXT    NOT NULL,
            attempts        INTEGER NOT NULL DEFAULT 0,
            next_attempt_at INTEGER,
            lease_until     INTEGER,
            created_at      INTEGER NOT NULL,
            sent_at         INTEGER,
            group_key       TEXT,
            window_end      INTEGER,
            sealed          INTEGER NOT NULL DEFAULT 1,
            UNIQUE (outbox_id, rule, target)
        );
        INSERT INTO deliveries_new (id, outbox_id, job_id, status, rule, target, title, body, notify_type, state,
                                    attempts, next_attempt_at, lease_until, created_at, sent_at)
            SELECT id, outbox_id, job_id, status, rule, target, title, body, notify_type, state,
                   attempts, next_attempt_at, lease_until, created_at, sent_at FROM deliveries;
        DROP TABLE deliveries;
        ALTER TABLE deliveries_new RENAME TO deliveries;
        CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE state IN ('pending', 'retrying');
        CREATE INDEX deliveries_job ON deliveries (job_id);
        CREATE INDEX deliveries_state ON deliveries (state, id);
        -- The latest digest of a group: the open one to join, or the window the next one follows.
        CREATE INDEX deliveries_group ON deliveries (rule, target, group_key, window_end)
            WHERE group_key IS NOT NULL;
        -- At most one open digest per group, even with several writers (a PostgreSQL store's replicas).
        CREATE UNIQUE INDEX deliveries_open_group ON deliveries (rule, target, group_key) WHERE sealed = 0;
        CREATE TABLE digest_members (
            digest_id INTEGER NOT NULL REFERENCES deliveries (id),
            outbox_id INTEGER NOT NULL REFERENCES outbox (id),
            job_id    TEXT    NOT NULL,
            PRIMARY KEY (digest_id, outbox_id)
        );
        CREATE INDEX digest_members_job ON digest_members (job_id);
        -- Sends to a target in the last minute (rate_limit) are counted from here.
        CREATE INDEX delivery_attempts_at ON delivery_attempts (at);
        """,
    ),
)
