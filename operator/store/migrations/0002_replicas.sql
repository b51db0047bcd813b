-- What operator replicas share so that any of them can serve the evidence API.
--
-- consumed_nonces: single use of a challenge across replicas. A nonce carries its own
-- proof (node binding, expiry, MAC), so any replica can check it without state; using it
-- is an INSERT here, and the replica whose INSERT adds no row knows it is a replay. Rows
-- are pruned once expired: an expired nonce is refused before this table is consulted.
CREATE TABLE consumed_nonces (
    nonce       bytea       PRIMARY KEY CHECK (octet_length(nonce) = 32),
    node        text        NOT NULL CHECK (node <> ''),
    expires_at  timestamptz NOT NULL,
    consumed_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX consumed_nonces_expires_at ON consumed_nonces (expires_at);

-- node_evidence: the newest accepted evidence of each node, whichever replica accepted
-- it; the leader loads it (at start, and on every NOTIFY lotabots_evidence whose payload
-- is the node) into the controller's memory. `digest` is `sha256:` over the document's
-- RFC 8785 canonical JSON, as the API returned it in the receipt.
CREATE TABLE node_evidence (
    node        text        PRIMARY KEY CHECK (node <> ''),
    nonce       bytea       NOT NULL CHECK (octet_length(nonce) = 32),
    digest      text        NOT NULL CHECK (digest ~ '^sha256:[0-9a-f]{64}$'),
    evidence    jsonb       NOT NULL CHECK (jsonb_typeof(evidence) = 'object'),
    received_at timestamptz NOT NULL
);
