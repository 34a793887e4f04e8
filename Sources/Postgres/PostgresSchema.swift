import Foundation

/// The tables, as migrations: version N is `migrations[N - 1]`, applied once, in order, and
/// recorded in `schema_migrations`. Never edit one that has shipped; append a new one.
///
/// Nested values (an offer, a request, an instance, tags, node lists) are `jsonb`, written by
/// the same encoding as SQLite's columns (Codable, dates in milliseconds since 1970); dates are
/// `timestamptz`.
enum PostgresSchema {
    struct Migration {
        var name: String
        var statements: [String]
    }

    static func newOwnerID() -> String { UUID().uuidString.lowercased().prefix(12).description }

    // Computed: the owner id statement makes a new id for each database.
    static var migrations: [Migration] { [
        Migration(name: "state", statements: [
            "CREATE TABLE meta (key text PRIMARY KEY, value text NOT NULL)",
            // The owner id: created once, with the schema (reconcile's ownership tag).
            "INSERT INTO meta(key, value) VALUES ('owner', '\(newOwnerID())')",
            // When this store was created, by the database's clock (seconds since 1970).
            "INSERT INTO meta(key, value) VALUES ('createdAt', extract(epoch FROM clock_timestamp())::text)",
            """
            CREATE TABLE cluster (
                id text PRIMARY KEY,
                name text NOT NULL,
                status text NOT NULL,
                request jsonb NOT NULL,
                offer jsonb,
                spot boolean NOT NULL,
                nodes bigint NOT NULL,
                price_per_hour double precision,
                intent_key text,
                created_at timestamptz NOT NULL,
                ready_at timestamptz,
                terminated_at timestamptz,
                last_error text,
                idle_minutes bigint
            )
            """,
            // One live cluster per name; finished ones are kept as history.
            "CREATE UNIQUE INDEX cluster_live_name ON cluster(name) WHERE status IN ('provisioning', 'running', 'terminating')",
            "CREATE INDEX cluster_name ON cluster(name, created_at)",
            "CREATE INDEX cluster_created ON cluster(created_at)",
            """
            CREATE TABLE intent (
                key text PRIMARY KEY,
                cluster_id text NOT NULL,
                provider text NOT NULL,
                offer jsonb NOT NULL,
                count bigint NOT NULL,
                spot boolean NOT NULL,
                tags jsonb NOT NULL,
                status text NOT NULL,
                created_at timestamptz NOT NULL,
                updated_at timestamptz NOT NULL,
                error text,
                pid bigint NOT NULL
            )
            """,
            "CREATE INDEX intent_cluster ON intent(cluster_id)",
            "CREATE INDEX intent_status ON intent(status)",
            """
            CREATE TABLE instance (
                provider text NOT NULL,
                id text NOT NULL,
                cluster_id text NOT NULL,
                intent_key text NOT NULL,
                state text NOT NULL,
                price_per_hour double precision,
                launched_at timestamptz NOT NULL,
                terminated_at timestamptz,
                instance jsonb NOT NULL,
                PRIMARY KEY (provider, id)
            )
            """,
            "CREATE INDEX instance_cluster ON instance(cluster_id)",
            """
            CREATE TABLE event (
                id bigserial PRIMARY KEY,
                time timestamptz NOT NULL,
                cluster_id text,
                job_id text,
                kind text NOT NULL,
                message text NOT NULL
            )
            """,
            "CREATE INDEX event_cluster ON event(cluster_id, id)",
            "CREATE INDEX event_job ON event(job_id, id)",
            """
            CREATE TABLE offer_cache (
                provider text NOT NULL,
                request_key text NOT NULL,
                fetched_at timestamptz NOT NULL,
                offers jsonb NOT NULL,
                PRIMARY KEY (provider, request_key)
            )
            """,
            """
            CREATE TABLE job (
                id text PRIMARY KEY,
                name text NOT NULL,
                status text NOT NULL,
                spec text NOT NULL,
                spec_folder text NOT NULL,
                settings text NOT NULL,
                cluster_name text NOT NULL,
                owns_cluster boolean NOT NULL,
                storage text NOT NULL,
                attempt bigint NOT NULL,
                restarts bigint NOT NULL,
                latest_checkpoint bigint,
                created_at timestamptz NOT NULL,
                started_at timestamptz,
                finished_at timestamptz,
                last_error text,
                controller_pid bigint,
                metrics text,
                controller_fence bigint,
                controller_holder text
            )
            """,
            "CREATE INDEX job_created ON job(created_at)",
            "CREATE INDEX job_status ON job(status, created_at)",
            "CREATE INDEX job_name ON job(name, created_at)",
            """
            CREATE TABLE job_attempt (
                job_id text NOT NULL,
                attempt bigint NOT NULL,
                outcome text NOT NULL,
                nodes jsonb NOT NULL,
                master_address text NOT NULL,
                master_port bigint NOT NULL,
                resume_step bigint,
                started_at timestamptz NOT NULL,
                ended_at timestamptz,
                failure_kind text,
                failed_node bigint,
                exit_code bigint,
                message text,
                PRIMARY KEY (job_id, attempt)
            )
            """,
            """
            CREATE TABLE checkpoint (
                job_id text NOT NULL,
                step bigint NOT NULL,
                attempt bigint NOT NULL,
                bytes bigint NOT NULL,
                committed_at timestamptz NOT NULL,
                deleted boolean NOT NULL,
                PRIMARY KEY (job_id, step)
            )
            """,
            """
            CREATE TABLE api_token (
                id text PRIMARY KEY,
                name text NOT NULL,
                hash text NOT NULL UNIQUE,
                created_at timestamptz NOT NULL,
                revoked_at timestamptz,
                last_used_at timestamptz
            )
            """,
            "CREATE INDEX api_token_name ON api_token(name)",
        ]),
        Migration(name: "leases", statements: [
            // PostgresLeases: one row per lock name, kept after release so the fence only grows.
            """
            CREATE TABLE lease (
                name text PRIMARY KEY,
                holder text,
                fence bigint NOT NULL,
                expires_at timestamptz
            )
            """,
        ]),
        Migration(name: "telemetry", statements: [
            // The newest telemetry sample per job and node (PostgresTelemetry).
            """
            CREATE TABLE telemetry (
                job_id text NOT NULL,
                node bigint NOT NULL,
                attempt bigint NOT NULL,
                sampled_at timestamptz NOT NULL,
                sample jsonb NOT NULL,
                PRIMARY KEY (job_id, node)
            )
            """,
        ]),
        Migration(name: "outbox", statements: PostgresStateStore.outboxMigration),
    ] }
}
