"""Ordered, named migrations of the PostgreSQL store; each is applied once and recorded in `_migrations`.

The same tables, columns and indexes as the SQLite store (`receiver.store.schema`), so the history
queries and the JSON shapes are shared; epoch milliseconds are BIGINT, ids are identities.
"""

from __future__ import annotations

from receiver.store.schema import Migration

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        "0001_events_jobs_outbox",
        """
        CREATE TABLE events (
            id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            job_id        TEXT    NOT NULL,
            last_updated  BIGINT  NOT NULL,
            status        TEXT    NOT NULL,
            account_id    TEXT    NOT NULL,
            job_type      TEXT    NOT NULL,
            created       BIGINT  NOT NULL,
            attempts      INTEGER,
            error_code    TEXT,
            error_message TEXT,
            body          TEXT    NOT NULL,
            received_at   BIGINT  NOT NULL,
            UNIQUE (job_id, last_updated, status)
        );
        CREATE TABLE jobs (
            job_id        TEXT PRIMARY KEY,
            account_id    TEXT    NOT NULL,
            job_type      TEXT    NOT NULL,
            status        TEXT    NOT NULL,
            created       BIGINT  NOT NULL,
            last_updated  BIGINT  NOT NULL,
            attempts      INTEGER,
            error_code    TEXT,
            error_message TEXT,
            event_id      BIGINT  NOT NULL
        );
        CREATE TABLE outbox (
            id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            event_id        BIGINT  NOT NULL,
            job_id          TEXT    NOT NULL,
            status          TEXT    NOT NULL,
            previous_status TEXT,
            created_at      BIGINT  NOT NULL,
            processed_at    BIGINT
        );
        CREATE INDEX outbox_unprocessed ON outbox (id) WHERE processed_at IS NULL;
        CREATE TABLE heartbeat (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            at BIGINT NOT NULL
        );
        """,
    ),
    Migration(
        "0002_deliveries",
        """
        CREATE TABLE deliveries (
            id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            outbox_id       BIGINT  NOT NULL REFERENCES outbox (id),
            job_id          TEXT    NOT NULL,
            status          TEXT    NOT NULL,
            rule            TEXT    NOT NULL,
            target          TEXT    NOT NULL,
            title           TEXT    NOT NULL,
            body            TEXT    NOT NULL,
            notify_type     TEXT    NOT NULL,
            state           TEXT    NOT NULL,
            attempts        INTEGER NOT NULL DEFAULT 0,
            next_attempt_at BIGINT,
            lease_until     BIGINT,
            created_at      BIGINT  NOT NULL,
            sent_at         BIGINT,
            UNIQUE (outbox_id, rule, target)
        );
        CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE state IN ('pending', 'retrying');
        CREATE INDEX deliveries_job ON deliveries (job_id);
        CREATE TABLE delivery_attempts (
            id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            delivery_id BIGINT  NOT NULL REFERENCES deliveries (id),
            at          BIGINT  NOT NULL,
            ok          INTEGER NOT NULL,  -- 0 or 1, as in SQLite, so statements are shared
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
            last_updated     BIGINT,
            done_at          BIGINT,
            added_at         BIGINT  NOT NULL,
            PRIMARY KEY (account_id, job_id)
        );
        CREATE INDEX poll_jobs_open ON poll_jobs (account_id) WHERE done_at IS NULL;
        """,
    ),
    Migration(
        "0004_history_indexes",
        """
        CREATE INDEX jobs_recent ON jobs (last_updated, job_id);
        CREATE INDEX jobs_finished ON jobs (status, last_updated, job_id)
            WHERE status IN ('Succeeded', 'Failed', 'Cancelled');
        CREATE INDEX deliveries_state ON deliveries (state, id);
        """,
    ),
    Migration(
        "0005_flood_control",
        """
        -- A digest is a delivery with no single job (job_id and outbox_id NULL); its transitions are listed
        -- in digest_members. Unlike SQLite, PostgreSQL relaxes NOT NULL in place.
        ALTER TABLE deliveries ALTER COLUMN outbox_id DROP NOT NULL;
        ALTER TABLE deliveries ALTER COLUMN job_id DROP NOT NULL;
        ALTER TABLE deliveries ADD COLUMN group_key TEXT;
        ALTER TABLE deliveries ADD COLUMN window_end BIGINT;
        ALTER TABLE deliveries ADD COLUMN sealed INTEGER NOT NULL DEFAULT 1;
        CREATE INDEX deliveries_group ON deliveries (rule, target, group_key, window_end)
            WHERE group_key IS NOT NULL;
        -- At most one open digest per group, whichever replica opens it.
        CREATE UNIQUE INDEX deliveries_open_group ON deliveries (rule, target, group_key) WHERE sealed = 0;
        CREATE TABLE digest_members (
            digest_id BIGINT NOT NULL REFERENCES deliveries (id),
            outbox_id BIGINT NOT NULL REFERENCES outbox (id),
            job_id    TEXT   NOT NULL,
            PRIMARY KEY (digest_id, outbox_id)
        );
        CREATE INDEX digest_members_job ON digest_members (job_id);
        CREATE INDEX delivery_attempts_at ON delivery_attempts (at);
        """,
    ),
)
