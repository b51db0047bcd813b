-- The evidence store: attestation records, sealed evidence bundles, the outbox of
-- uploads to the object stores, and the append-only, hash-chained audit log.
--
-- Digests are lowercase hex SHA-256 (64 characters); evidence digests carry the
-- `sha256:` prefix the API and the CRDs use. Times are timestamptz (microseconds).

-- Sealed bundles: kept here until (and after) every object store has a copy, so that an
-- acknowledged bundle can always be uploaded again.
CREATE TABLE bundles (
    digest           text        PRIMARY KEY CHECK (digest ~ '^[0-9a-f]{64}$'),
    plaintext_sha256 text        NOT NULL CHECK (plaintext_sha256 ~ '^[0-9a-f]{64}$'),
    key_id           text        NOT NULL CHECK (key_id <> ''),
    ciphertext       bytea       NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now()
);

-- One verdict on one subject (a GPU node, or a model by digest).
CREATE TABLE attestation_records (
    id              bigserial   PRIMARY KEY,
    kind            text        NOT NULL CHECK (kind IN ('gpu-node', 'model')),
    subject         text        NOT NULL CHECK (subject <> ''),
    -- The custom resource that asked: `name` (cluster-scoped) or `namespace/name`.
    attestation     text        NOT NULL CHECK (attestation <> ''),
    verdict         text        NOT NULL CHECK (verdict IN ('Attested', 'Failed', 'Unknown')),
    reasons         jsonb       NOT NULL CHECK (jsonb_typeof(reasons) = 'array'),
    policy_digest   text        NOT NULL CHECK (policy_digest ~ '^sha256:[0-9a-f]{64}$'),
    evidence_digest text        NOT NULL CHECK (evidence_digest ~ '^sha256:[0-9a-f]{64}$'),
    bundle_digest   text        REFERENCES bundles (digest),
    token_id        text,
    observed_at     timestamptz NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now()
);

-- The audit API lists newest first, filtered by any of these.
CREATE INDEX attestation_records_subject ON attestation_records (kind, subject, id);
CREATE INDEX attestation_records_attestation ON attestation_records (attestation, id);
CREATE INDEX attestation_records_verdict ON attestation_records (verdict, id);
CREATE INDEX attestation_records_observed_at ON attestation_records (observed_at);

-- One row per bundle and object store: pending until `uploaded_at`/`location` are set.
CREATE TABLE outbox (
    id              bigserial   PRIMARY KEY,
    bundle_digest   text        NOT NULL REFERENCES bundles (digest),
    store           text        NOT NULL CHECK (store <> ''),
    attempts        integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text,
    uploaded_at     timestamptz,
    location        text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (bundle_digest, store),
    -- A copy is stored exactly when we know where.
    CHECK ((uploaded_at IS NULL) = (location IS NULL))
);

-- What the upload worker polls and the backlog metric counts: pending rows only.
CREATE INDEX outbox_pending ON outbox (store, next_attempt_at, id) WHERE uploaded_at IS NULL;

-- The audit log. `seq` is gapless (assigned under the chain-head lock, not from a
-- sequence, which leaves gaps on rollback), so that a missing number is a deleted row.
-- `hash` = SHA-256(prev_hash || canonical content), documented in src/db/chain.rs.
CREATE TABLE audit_log (
    seq       bigint      PRIMARY KEY CHECK (seq > 0),
    at        timestamptz NOT NULL,
    actor     text        NOT NULL,
    action    text        NOT NULL,
    subject   text        NOT NULL,
    record_id bigint      REFERENCES attestation_records (id),
    content   jsonb       NOT NULL,
    prev_hash bytea       NOT NULL CHECK (octet_length(prev_hash) = 32),
    hash      bytea       NOT NULL CHECK (octet_length(hash) = 32)
);

-- The chain head: one row, locked (SELECT ... FOR UPDATE) by every writer for the rest of
-- its transaction, so concurrent writers append one after the other and never fork the
-- chain. It also lets verification notice rows deleted from the end.
CREATE TABLE audit_chain_head (
    id   boolean PRIMARY KEY DEFAULT true CHECK (id),
    seq  bigint  NOT NULL CHECK (seq >= 0),
    hash bytea   NOT NULL CHECK (octet_length(hash) = 32)
);
INSERT INTO audit_chain_head (id, seq, hash) VALUES (true, 0, '\x0000000000000000000000000000000000000000000000000000000000000000');

-- Append-only in the database too, not only by convention of the code: UPDATE, DELETE
-- and TRUNCATE are refused for every role the triggers apply to. (A superuser can still
-- disable them; the hash chain is what makes that visible.)
CREATE FUNCTION audit_log_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER audit_log_append_only
    BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_refuse_change();

CREATE TRIGGER audit_log_no_truncate
    BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_refuse_change();

-- The chain head only moves forward: moving it back (or deleting it) would hide rows
-- deleted from the end of the log.
CREATE FUNCTION audit_chain_head_refuse_rewind() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.seq > OLD.seq THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'audit_chain_head only moves forward: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER audit_chain_head_forward_only
    BEFORE UPDATE OR DELETE ON audit_chain_head
    FOR EACH ROW EXECUTE FUNCTION audit_chain_head_refuse_rewind();

CREATE TRIGGER audit_chain_head_no_truncate
    BEFORE TRUNCATE ON audit_chain_head
    FOR EACH STATEMENT EXECUTE FUNCTION audit_chain_head_refuse_rewind();
