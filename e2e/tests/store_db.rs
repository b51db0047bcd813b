//! The evidence store's PostgreSQL half (`lotabots_store::db`) against a real PostgreSQL
//! 15 from the harness: migrations under the advisory lock, a record with its audit row,
//! bundle and outbox rows committed together or not at all, the hash chain verified and
//! every kind of tampering found at the right link, concurrent writers, the outbox as the
//! upload worker drives it, listing, and clear errors for bad connections.
//!
//! Every scenario works in a database of its own (they run in parallel); tampering goes
//! around the append-only triggers deliberately, as a superuser would, through psql.

use std::{
    os::unix::fs::MetadataExt,
    path::Path,
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use jiff::{SignedDuration, Timestamp};
use lotabots_crds::gpu_attestation::Verdict;
use lotabots_e2e::{ControlPlane, pki::Pki, ports, scenario, stores::Postgres, suite::Ctx};
use lotabots_store::{
    OutboxQueue, SealedBundle,
    db::{
        BreakReason, CopyState, Database, DbOptions, NewAuditEvent, NewRecord, Page, RecordFilter,
        RecordId, RecordKind, SslMode,
    },
};
use sha2::{Digest, Sha256};

fn main() -> ExitCode {
    lotabots_e2e::suite::main(
        "store_db",
        || {
            ControlPlane::builder()
                .without_controller_manager()
                .without_scheduler()
                .without_kwok()
                .with_stores()
        },
        &[
            scenario!(replicas_starting_together_migrate_once),
            scenario!(a_failed_migration_is_named_and_leaves_nothing),
            scenario!(a_record_its_audit_row_bundle_and_outbox_commit_together),
            scenario!(a_failing_insert_leaves_nothing),
            scenario!(the_chain_verifies_over_many_rows),
            scenario!(the_audit_log_refuses_updates_and_a_modified_row_is_found_at_its_seq),
            scenario!(deleted_rows_are_found),
            scenario!(a_reordered_row_is_found),
            scenario!(concurrent_writers_leave_one_unforked_chain),
            scenario!(the_outbox_backs_off_and_marks_uploads),
            scenario!(records_page_newest_first_and_filter),
            scenario!(bad_connections_fail_with_clear_errors),
            scenario!(tls_is_required_verified_and_refused_with_a_wrong_ca),
        ],
    )
}

fn pg(ctx: &Ctx) -> Result<&Postgres> {
    Ok(&ctx.plane().stores()?.postgres)
}

/// A database of this scenario's own (`<prefix>_<suffix>`), created empty; its URL.
async fn fresh_db(ctx: &Ctx, suffix: &str) -> Result<String> {
    let pg = pg(ctx)?;
    let name = format!("{}_{suffix}", ctx.prefix().replace('-', "_"));
    pg.query(&format!("CREATE DATABASE {name}")).await?;
    let url = pg.url();
    let (base, _) = url.rsplit_once('/').context("database URL")?;
    Ok(format!("{base}/{name}"))
}

/// `psql -c SQL` in the database at `url`: stdout trimmed, or the error with stderr.
async fn psql(ctx: &Ctx, url: &str, sql: &str) -> Result<String> {
    let out = pg(ctx)?
        .psql()
        // The last --dbname wins.
        .arg(format!("--dbname={url}"))
        .args(["-c", sql])
        .output()
        .await?;
    ensure!(
        out.status.success(),
        "psql -c {sql:?}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// As a superuser going around the append-only triggers (`session_replication_role`
/// turns triggers off for the session).
async fn tamper(ctx: &Ctx, url: &str, sql: &str) -> Result<String> {
    psql(
        ctx,
        url,
        &format!("SET session_replication_role = replica; {sql}"),
    )
    .await
}

async fn count(ctx: &Ctx, url: &str, table: &str) -> Result<i64> {
    Ok(psql(ctx, url, &format!("SELECT count(*) FROM {table}"))
        .await?
        .parse()?)
}

fn digest(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// A record of GPU node `node`, distinct per `i`.
fn record(node: &str, i: usize) -> NewRecord {
    NewRecord {
        kind: RecordKind::GpuNode,
        subject: node.into(),
        attestation: "h100-fleet".into(),
        verdict: if i.is_multiple_of(3) {
            Verdict::Failed
        } else {
            Verdict::Attested
        },
        reasons: vec![format!("check {i}: firmware 96.00.{i} meets the policy")],
        policy_digest: format!("sha256:{}", digest(b"policy")),
        evidence_digest: format!(
            "sha256:{}",
            digest(format!("evidence {node} {i}").as_bytes())
        ),
        token_id: i.is_multiple_of(2).then(|| format!("token-{i}")),
        observed_at: Timestamp::now(),
        actor: "lotabots-operator".into(),
    }
}

/// A sealed bundle (as `bundle` makes them: named by the SHA-256 of the ciphertext).
fn bundle(content: &str) -> SealedBundle {
    let ciphertext = format!("LBB1 not really encrypted: {content}").into_bytes();
    SealedBundle {
        digest: digest(&ciphertext),
        plaintext_sha256: digest(content.as_bytes()),
        key_id: "kek-2026-11".into(),
        ciphertext,
    }
}

/// `n` records of node `node`, `i` from `from`, with no bundle.
async fn write_records(db: &Database, node: &str, from: usize, n: usize) -> Result<Vec<RecordId>> {
    let mut ids = Vec::with_capacity(n);
    for i in from..from + n {
        ids.push(db.record(&record(node, i), None, &[]).await?);
    }
    Ok(ids)
}

async fn replicas_starting_together_migrate_once(ctx: Ctx) -> Result<()> {
    let url = fresh_db(&ctx, "m").await?;
    // Four replicas at once on an empty database: each must come up, one migrates.
    let connects = (0..4).map(|_| {
        let url = url.clone();
        tokio::spawn(async move { Database::connect(&url).await })
    });
    let mut dbs = Vec::new();
    for c in connects {
        dbs.push(c.await?.context("a replica failed to start")?);
    }
    // Each migration of operator/store/migrations is applied, and recorded, once.
    let migrations =
        std::fs::read_dir(lotabots_e2e::repo_root().join("operator/store/migrations"))?
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "sql"))
            })
            .count()
            .to_string();
    ensure!(
        psql(
            &ctx,
            &url,
            "SELECT count(*) FROM _sqlx_migrations WHERE success"
        )
        .await?
            == migrations,
        "not every migration is recorded exactly once ({migrations} migrations)"
    );
    // Every replica can write, and they share one chain.
    for (i, db) in dbs.iter().enumerate() {
        db.record(&record("node-m", i), None, &[]).await?;
    }
    let report = dbs[0].verify_chain().await?;
    ensure!(
        report.rows_checked == 4 && report.first_broken.is_none(),
        "{report:?}"
    );
    // A later start finds nothing to do.
    Database::connect(&url).await?;
    ensure!(psql(&ctx, &url, "SELECT count(*) FROM _sqlx_migrations").await? == migrations);
    // The lock is not left held.
    ensure!(
        psql(
            &ctx,
            &url,
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
        )
        .await?
            == "0",
        "an advisory lock is still held"
    );
    Ok(())
}

async fn a_failed_migration_is_named_and_leaves_nothing(ctx: Ctx) -> Result<()> {
    let url = fresh_db(&ctx, "f").await?;
    // Something else already owns a table the schema needs.
    psql(&ctx, &url, "CREATE TABLE outbox (something text)").await?;
    let err = Database::connect(&url)
        .await
        .expect_err("the migration must fail");
    let msg = format!("{err:#}");
    let password = pg(&ctx)?.password();
    ensure!(!msg.contains(password), "the password leaked: {msg}");
    for want in [
        "migrating the evidence store",
        "postgres://lotabots:***@",
        "outbox",
        "already exists",
    ] {
        ensure!(msg.contains(want), "{want:?} not in: {msg}");
    }
    // The migration was one transaction: nothing of it is left.
    for table in [
        "bundles",
        "attestation_records",
        "audit_log",
        "audit_chain_head",
    ] {
        ensure!(
            psql(
                &ctx,
                &url,
                &format!("SELECT to_regclass('{table}') IS NULL")
            )
            .await?
                == "t",
            "{table} exists after a failed migration"
        );
    }
    ensure!(
        psql(
            &ctx,
            &url,
            "SELECT count(*) FROM _sqlx_migrations WHERE success"
        )
        .await?
            == "0"
    );
    Ok(())
}

async fn a_record_its_audit_row_bundle_and_outbox_commit_together(ctx: Ctx) -> Result<()> {
    let url = fresh_db(&ctx, "r").await?;
    let db = Database::connect(&url).await?;
    let b = bundle("gpu evidence of node-r");
    let rec = record("node-r", 1);
    let id = db.record(&rec, Some(&b), &["s3", "gcs"]).await?;

    let stored = db
        .get_record(id)
        .await?
        .context("the record is not there")?;
    ensure!(stored.subject == "node-r" && stored.verdict == rec.verdict);
    ensure!(stored.reasons == rec.reasons && stored.token_id == rec.token_id);
    ensure!(stored.bundle_digest.as_deref() == Some(b.digest.as_str()));
    ensure!(
        stored.observed_at.as_microsecond() == rec.observed_at.as_microsecond(),
        "observed_at {} != {}",
        stored.observed_at,
        rec.observed_at
    );
    ensure!(
        db.bundle(&b.digest).await?.as_ref() == Some(&b),
        "bundle differs"
    );

    let audit = db.audit_rows(0, 10).await?;
    ensure!(audit.len() == 1, "{} audit rows", audit.len());
    let a = &audit[0];
    ensure!(a.seq == 1 && a.record_id == Some(id) && a.action == "record");
    ensure!(a.actor == "lotabots-operator" && a.subject == "node-r");
    ensure!(a.content["bundle_digest"] == b.digest.as_str());
    ensure!(a.content["stores"] == serde_json::json!(["s3", "gcs"]));
    ensure!(a.prev_hash == "0".repeat(64));

    let copies = db
        .bundle_locations(&b.digest)
        .await?
        .context("no locations")?;
    let stores: Vec<&str> = copies.iter().map(|c| c.store.as_str()).collect();
    ensure!(stores == ["gcs", "s3"], "{stores:?}");
    ensure!(
        copies
            .iter()
            .all(|c| matches!(c.state, CopyState::Pending { attempts: 0, .. }))
    );
    for store in ["s3", "gcs"] {
        let due = db.due(store, 10).await?;
        ensure!(due.len() == 1 && due[0].bundle == b, "{store}: {due:?}");
    }

    // The same bundle again (a retried verdict): a new record and audit row, the bundle
    // and its outbox rows as they were.
    let id2 = db
        .record(&record("node-r", 2), Some(&b), &["s3", "gcs"])
        .await?;
    ensure!(id2 != id);
    ensure!(count(&ctx, &url, "bundles").await? == 1);
    ensure!(count(&ctx, &url, "outbox").await? == 2);
    ensure!(count(&ctx, &url, "attestation_records").await? == 2);
    ensure!(count(&ctx, &url, "audit_log").await? == 2);
    ensure!(db.bundle_locations(&"0".repeat(64)).await?.is_none());
    ensure!(db.bundle(&"0".repeat(64)).await?.is_none());
    Ok(())
}

async fn a_failing_insert_leaves_nothing(ctx: Ctx) -> Result<()> {
    let url = fresh_db(&ctx, "a").await?;
    let db = Database::connect(&url).await?;
    db.record(&record("node-a", 0), Some(&bundle("first")), &["s3"])
        .await?;
    let before = db.verify_chain().await?;
    let head = psql(
        &ctx,
        &url,
        "SELECT seq || ':' || encode(hash, 'hex') FROM audit_chain_head",
    )
    .await?;

    // PostgreSQL refuses a NUL in text: once in the record's insert (after the bundle
    // and its outbox rows), once in the audit row's (the last statement).
    let mut bad_subject = record("node-a", 1);
    bad_subject.subject = "node\0a".into();
    let mut bad_actor = record("node-a", 2);
    bad_actor.actor = "lotabots\0operator".into();
    for (what, rec, content) in [
        ("record", bad_subject, "second"),
        ("audit row", bad_actor, "third"),
    ] {
        let b = bundle(content);
        let err = db
            .record(&rec, Some(&b), &["s3", "gcs"])
            .await
            .expect_err("a NUL must be refused");
        eprintln!("{what}: {err:#}");
        ensure!(
            db.bundle(&b.digest).await?.is_none(),
            "{what}: the bundle stayed"
        );
    }
    ensure!(count(&ctx, &url, "bundles").await? == 1);
    ensure!(count(&ctx, &url, "outbox").await? == 1);
    ensure!(count(&ctx, &url, "attestation_records").await? == 1);
    ensure!(count(&ctx, &url, "audit_log").await? == 1);
    ensure!(
        psql(
            &ctx,
            &url,
            "SELECT seq || ':' || encode(hash, 'hex') FROM audit_chain_head"
        )
        .await?
            == head,
        "the chain head moved"
    );
    ensure!(db.verify_chain().await? == before);

    // Refused before anything is sent: a bundle not named by its ciphertext, stores
    // without a bundle, a malformed digest.
    let mut corrupt = bundle("fourth");
    corrupt.ciphertext.push(0);
    let e = db
        .record(&record("node-a", 4), Some(&corrupt), &["s3"])
        .await
        .expect_err("a corrupt bundle");
    ensure!(format!("{e:#}").contains("corrupt bundle"), "{e:#}");
    let e = db
        .record(&record("node-a", 5), None, &["s3"])
        .await
        .expect_err("stores without a bundle");
    ensure!(format!("{e:#}").contains("without a bundle"), "{e:#}");
    let mut bad_digest = record("node-a", 6);
    bad_digest.evidence_digest = "sha256:xyz".into();
    let e = db
        .record(&bad_digest, None, &[])
        .await
        .expect_err("a malformed digest");
    ensure!(format!("{e:#}").contains("evidence_digest"), "{e:#}");
    ensure!(count(&ctx, &url, "attestation_records").await? == 1);
    Ok(())
}

async fn the_chain_verifies_over_many_rows(ctx: Ctx) -> Result<()> {
    let url = fresh_db(&ctx, "v").await?;
    let db = Database::connect(&url).await?;
    write_records(&db, "node-v", 0, 300).await?;
    // Events of other kinds, appended as a batch, join the same chain.
    let events: Vec<NewAuditEvent> = (0..700)
        .map(|i| NewAuditEvent {
            actor: "kek-rotation".into(),
            action: "rotate-key".into(),
            subject: format!("kek-{i}"),
            record_id: None,
            content: serde_json::json!({"n": i, "nested": {"b": [1.5, true, null], "a": "é\n"}}),
        })
        .collect();
    ensure!(db.audit(&events).await? == 1000);
    write_records(&db, "node-v", 300, 10).await?;
    let report = db.verify_chain().await?;
    ensure!(
        report.rows_checked == 1010 && report.first_broken.is_none(),
        "{report:?}"
    );
    // Read in pages, each row links to the one before.
    let mut prev = "0".repeat(64);
    let mut after = 0;
    loop {
        let rows = db.audit_rows(after, 97).await?;
        let Some(last) = rows.last() else { break };
        for r in &rows {
            ensure!(r.seq == after + 1, "seq {} after {after}", r.seq);
            ensure!(r.prev_hash == prev, "seq {} does not link", r.seq);
            prev = r.hash.clone();
            after = r.seq;
        }
        ensure!(after == last.seq);
    }
    ensure!(after == 1010, "read {after} rows");
    ensure!(db.audit_rows(0, 0).await.is_err());
    Ok(())
}

async fn the_audit_log_refuses_updates_and_a_modified_row_is_found_at_its_seq(
    ctx: Ctx,
) -> Result<()> {
    let url = fresh_db(&ctx, "t").await?;
    let db = Database::connect(&url).await?;
    write_records(&db, "node-t", 0, 20).await?;
    // The triggers refuse changes from anyone they apply to.
    for sql in [
        "UPDATE audit_log SET actor = 'mallory' WHERE seq = 3",
        "DELETE FROM audit_log WHERE seq = 3",
        "TRUNCATE audit_log",
    ] {
        let e = psql(&ctx, &url, sql).await.expect_err(sql);
        ensure!(format!("{e:#}").contains("append-only"), "{sql}: {e:#}");
    }
    // Nor may the chain head move back, which would hide rows cut from the end.
    for sql in [
        "UPDATE audit_chain_head SET seq = seq - 1",
        "UPDATE audit_chain_head SET hash = hash",
        "DELETE FROM audit_chain_head",
        "TRUNCATE audit_chain_head",
    ] {
        let e = psql(&ctx, &url, sql).await.expect_err(sql);
        ensure!(
            format!("{e:#}").contains("only moves forward"),
            "{sql}: {e:#}"
        );
    }
    ensure!(db.verify_chain().await?.first_broken.is_none());

    // Row 13's verdict flipped behind the triggers' back.
    let original = psql(
        &ctx,
        &url,
        "SELECT content::text FROM audit_log WHERE seq = 13",
    )
    .await?;
    tamper(
        &ctx,
        &url,
        "UPDATE audit_log SET content = jsonb_set(content, '{verdict}', '\"Attested\"') WHERE seq = 13",
    )
    .await?;
    let report = db.verify_chain().await?;
    let b = report
        .first_broken
        .clone()
        .context("a modified row went unnoticed")?;
    ensure!(
        b.seq == 13 && b.reason == BreakReason::Modified && report.rows_checked == 12,
        "{report:?}"
    );
    ensure!(b.found != b.expected);
    // Put back, it verifies again: what is checked is the content, not the touching.
    tamper(
        &ctx,
        &url,
        &format!("UPDATE audit_log SET content = '{original}' WHERE seq = 13"),
    )
    .await?;
    ensure!(db.verify_chain().await?.first_broken.is_none());
    // Any column: the actor, the time, the record it points to.
    for (seq, set) in [
        (4, "actor = 'mallory'"),
        (7, "at = at + interval '1 microsecond'"),
        (2, "record_id = 1"),
    ] {
        let saved = psql(
            &ctx,
            &url,
            &format!("SELECT actor || '|' || at::text || '|' || record_id FROM audit_log WHERE seq = {seq}"),
        )
        .await?;
        tamper(
            &ctx,
            &url,
            &format!("UPDATE audit_log SET {set} WHERE seq = {seq}"),
        )
        .await?;
        let b = db.verify_chain().await?.first_broken.context(set)?;
        ensure!(
            b.seq == seq && b.reason == BreakReason::Modified,
            "{set}: {b:?}"
        );
        let mut parts = saved.split('|');
        let (actor, at, rid) = (parts.next(), parts.next(), parts.next());
        tamper(
            &ctx,
            &url,
            &format!(
                "UPDATE audit_log SET actor = '{}', at = '{}', record_id = {} WHERE seq = {seq}",
                actor.context("actor")?,
                at.context("at")?,
                rid.context("record_id")?
            ),
        )
        .await?;
        ensure!(
            db.verify_chain().await?.first_broken.is_none(),
            "{set} restored"
        );
    }
    Ok(())
}

async fn deleted_rows_are_found(ctx: Ctx) -> Result<()> {
    // A row from the middle.
    let url = fresh_db(&ctx, "d").await?;
    let db = Database::connect(&url).await?;
    write_records(&db, "node-d", 0, 20).await?;
    tamper(&ctx, &url, "DELETE FROM audit_log WHERE seq = 8").await?;
    let report = db.verify_chain().await?;
    let b = report
        .first_broken
        .clone()
        .context("a deleted row went unnoticed")?;
    ensure!(
        b.seq == 8 && b.reason == BreakReason::Missing && report.rows_checked == 7,
        "{report:?}"
    );
    // The gap closed by renumbering: the row now at 8 does not link to 7.
    // (Through a high range: the primary key is checked row by row.)
    tamper(
        &ctx,
        &url,
        "UPDATE audit_log SET seq = seq + 1000000 WHERE seq > 8; \
         UPDATE audit_log SET seq = seq - 1000001 WHERE seq > 1000000",
    )
    .await?;
    let b = db
        .verify_chain()
        .await?
        .first_broken
        .context("renumbered")?;
    ensure!(b.seq == 8 && b.reason == BreakReason::Relinked, "{b:?}");

    // The last rows: the chain head still names them.
    let url = fresh_db(&ctx, "e").await?;
    let db = Database::connect(&url).await?;
    write_records(&db, "node-e", 0, 20).await?;
    tamper(&ctx, &url, "DELETE FROM audit_log WHERE seq > 18").await?;
    let report = db.verify_chain().await?;
    let b = report
        .first_broken
        .clone()
        .context("a truncated log went unnoticed")?;
    ensure!(
        b.seq == 19 && b.reason == BreakReason::Truncated && report.rows_checked == 18,
        "{report:?}"
    );
    Ok(())
}

async fn a_reordered_row_is_found(ctx: Ctx) -> Result<()> {
    let url = fresh_db(&ctx, "o").await?;
    let db = Database::connect(&url).await?;
    write_records(&db, "node-o", 0, 12).await?;
    // Rows 5 and 6 swap places.
    tamper(
        &ctx,
        &url,
        "UPDATE audit_log SET seq = 1000 WHERE seq = 5; \
         UPDATE audit_log SET seq = 5 WHERE seq = 6; \
         UPDATE audit_log SET seq = 6 WHERE seq = 1000",
    )
    .await?;
    let report = db.verify_chain().await?;
    let b = report
        .first_broken
        .clone()
        .context("a reordering went unnoticed")?;
    ensure!(
        b.seq == 5 && b.reason == BreakReason::Relinked && report.rows_checked == 4,
        "{report:?}"
    );
    Ok(())
}

async fn concurrent_writers_leave_one_unforked_chain(ctx: Ctx) -> Result<()> {
    let url = fresh_db(&ctx, "c").await?;
    let db = Arc::new(Database::connect(&url).await?);
    let began = Instant::now();
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let db = db.clone();
            tokio::spawn(async move {
                let node = format!("node-c{w}");
                let mut ids = Vec::new();
                for i in 0..50 {
                    let b = bundle(&format!("{node} {i}"));
                    ids.push(
                        db.record(&record(&node, i), Some(&b), &["s3", "gcs"])
                            .await?,
                    );
                }
                anyhow::Ok(ids)
            })
        })
        .collect();
    let mut ids = Vec::new();
    for w in writers {
        ids.extend(w.await??);
    }
    eprintln!(
        "8 writers x 50 records: {:.0} records/s",
        400.0 / began.elapsed().as_secs_f64()
    );
    ensure!(ids.len() == 400);
    let report = db.verify_chain().await?;
    ensure!(
        report.rows_checked == 400 && report.first_broken.is_none(),
        "{report:?}"
    );
    // One chain: every row's predecessor is distinct (a fork would share one), seqs
    // 1..=400, and every record has exactly one audit row.
    ensure!(
        psql(
            &ctx,
            &url,
            "SELECT count(DISTINCT prev_hash) || ':' || min(seq) || ':' || max(seq) || ':' \
             || count(DISTINCT record_id) FROM audit_log"
        )
        .await?
            == "400:1:400:400"
    );
    ensure!(count(&ctx, &url, "outbox").await? == 800);
    Ok(())
}

async fn the_outbox_backs_off_and_marks_uploads(ctx: Ctx) -> Result<()> {
    let url = fresh_db(&ctx, "q").await?;
    let db = Database::connect(&url).await?;
    let bundles: Vec<SealedBundle> = (0..3).map(|i| bundle(&format!("q{i}"))).collect();
    for (i, b) in bundles.iter().enumerate() {
        db.record(&record("node-q", i), Some(b), &["s3", "gcs"])
            .await?;
    }
    let due = db.due("s3", 10).await?;
    let digests: Vec<&str> = due.iter().map(|u| u.bundle.digest.as_str()).collect();
    let want: Vec<&str> = bundles.iter().map(|b| b.digest.as_str()).collect();
    ensure!(digests == want, "not oldest first: {digests:?}");
    ensure!(due.iter().all(|u| u.store == "s3" && u.attempts == 0));
    ensure!(db.due("s3", 2).await?.len() == 2, "the limit is ignored");
    ensure!(db.due("local", 10).await?.is_empty());

    // The first upload failed: backed off an hour, not due until then.
    let (first, second, third) = (&due[0], &due[1], &due[2]);
    let retry_at = Timestamp::now() + SignedDuration::from_hours(1);
    let long_error = format!("503 SlowDown: {}", "x".repeat(5000));
    db.failed(first.id, &long_error, retry_at).await?;
    let ids: Vec<i64> = db.due("s3", 10).await?.iter().map(|u| u.id).collect();
    ensure!(ids == [second.id, third.id], "{ids:?}");
    let copies = db
        .bundle_locations(&first.bundle.digest)
        .await?
        .context("locations")?;
    let s3 = copies.iter().find(|c| c.store == "s3").context("s3 copy")?;
    match &s3.state {
        CopyState::Pending {
            attempts,
            last_error,
            next_attempt_at,
        } => {
            ensure!(*attempts == 1);
            let e = last_error.as_deref().unwrap_or_default();
            ensure!(
                e.starts_with("503 SlowDown") && e.len() <= 2000,
                "{}",
                e.len()
            );
            ensure!(next_attempt_at.as_microsecond() == retry_at.as_microsecond());
        }
        other => anyhow::bail!("{other:?}"),
    }
    // A backoff that has passed: due again, attempts counted.
    db.failed(
        second.id,
        "connection reset",
        Timestamp::now() - SignedDuration::from_secs(1),
    )
    .await?;
    let again = db.due("s3", 10).await?;
    ensure!(again.iter().any(|u| u.id == second.id && u.attempts == 1));

    // Uploaded: no longer due, its location visible; confirming again is harmless, a
    // different location is refused, a late failure changes nothing.
    let location = format!("s3://evidence/bundles/{}", second.bundle.digest);
    db.uploaded(second.id, &location).await?;
    db.uploaded(second.id, &location).await?;
    let e = db
        .uploaded(second.id, "s3://elsewhere/x")
        .await
        .expect_err("a second location");
    ensure!(format!("{e:#}").contains("already uploaded"), "{e:#}");
    db.failed(second.id, "late failure", Timestamp::now())
        .await?;
    let ids: Vec<i64> = db.due("s3", 10).await?.iter().map(|u| u.id).collect();
    ensure!(ids == [third.id], "{ids:?}");
    let copies = db
        .bundle_locations(&second.bundle.digest)
        .await?
        .context("locations")?;
    let s3 = copies.iter().find(|c| c.store == "s3").context("s3 copy")?;
    ensure!(
        matches!(&s3.state, CopyState::Stored { location: l, attempts: 2, .. } if *l == location),
        "{s3:?}"
    );
    let gcs = copies
        .iter()
        .find(|c| c.store == "gcs")
        .context("gcs copy")?;
    ensure!(
        matches!(gcs.state, CopyState::Pending { attempts: 0, .. }),
        "{gcs:?}"
    );

    let backlog = db.outbox_backlog().await?;
    ensure!(
        backlog.get("s3") == Some(&2) && backlog.get("gcs") == Some(&3),
        "{backlog:?}"
    );
    for e in [
        db.uploaded(999_999, "s3://x")
            .await
            .expect_err("unknown id"),
        db.failed(999_999, "x", Timestamp::now())
            .await
            .expect_err("unknown id"),
    ] {
        ensure!(format!("{e:#}").contains("no outbox row 999999"), "{e:#}");
    }
    Ok(())
}

async fn records_page_newest_first_and_filter(ctx: Ctx) -> Result<()> {
    let url = fresh_db(&ctx, "p").await?;
    let db = Database::connect(&url).await?;
    let t0 = Timestamp::now() - SignedDuration::from_hours(30);
    for i in 0..30 {
        let mut r = record(&format!("node-p{}", i % 3), i);
        if i % 5 == 0 {
            r.kind = RecordKind::Model;
            r.subject = format!("sha256:{}", digest(b"model"));
            r.attestation = "team-a/llama".into();
        }
        r.observed_at = t0 + SignedDuration::from_hours(i as i64);
        db.record(&r, None, &[]).await?;
    }
    // All of them, seven at a time, newest first, each once.
    let (mut seen, mut after) = (Vec::new(), None);
    loop {
        let page = db
            .list_records(&RecordFilter::default(), Page { limit: 7, after })
            .await?;
        ensure!(page.records.len() <= 7);
        seen.extend(page.records.iter().map(|r| r.id.0));
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    let mut sorted = seen.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    sorted.dedup();
    ensure!(seen == sorted && seen.len() == 30, "{seen:?}");

    let list = |filter: RecordFilter| {
        let db = db.clone();
        async move {
            let p = db.list_records(&filter, Page::first(100)).await?;
            anyhow::Ok(p.records)
        }
    };
    let node = list(RecordFilter {
        subject: Some("node-p1".into()),
        ..Default::default()
    })
    .await?;
    // i % 3 == 1 and not a model (i % 5 != 0): 1 4 7 13 16 19 22 28.
    ensure!(
        node.len() == 8 && node.iter().all(|r| r.subject == "node-p1"),
        "{}",
        node.len()
    );
    let models = list(RecordFilter {
        kind: Some(RecordKind::Model),
        ..Default::default()
    })
    .await?;
    ensure!(models.len() == 6 && models.iter().all(|r| r.attestation == "team-a/llama"));
    let by_attestation = list(RecordFilter {
        attestation: Some("team-a/llama".into()),
        verdict: Some(Verdict::Failed),
        ..Default::default()
    })
    .await?;
    // Models failed where i % 3 == 0 too: 0, 15.
    ensure!(by_attestation.len() == 2, "{}", by_attestation.len());
    let failed = list(RecordFilter {
        verdict: Some(Verdict::Failed),
        ..Default::default()
    })
    .await?;
    ensure!(failed.len() == 10 && failed.iter().all(|r| r.verdict == Verdict::Failed));
    let recent = list(RecordFilter {
        since: Some(t0 + SignedDuration::from_hours(25)),
        kind: Some(RecordKind::GpuNode),
        ..Default::default()
    })
    .await?;
    // 25..=29 minus the model at 25.
    ensure!(recent.len() == 4, "{}", recent.len());
    ensure!(
        recent.windows(2).all(|w| w[0].id > w[1].id),
        "not newest first"
    );

    for limit in [0, Page::MAX_LIMIT + 1] {
        let e = db
            .list_records(&RecordFilter::default(), Page::first(limit))
            .await
            .expect_err("limit out of range");
        ensure!(format!("{e:#}").contains("out of range"), "{e:#}");
    }
    Ok(())
}

async fn bad_connections_fail_with_clear_errors(ctx: Ctx) -> Result<()> {
    let pg = pg(&ctx)?;
    let password = pg.password().to_string();
    let check = |what: &str, msg: String, want: &[&str]| -> Result<()> {
        ensure!(
            !msg.contains(&password),
            "{what}: the password leaked: {msg}"
        );
        for w in want {
            ensure!(msg.contains(w), "{what}: {w:?} not in: {msg}");
        }
        Ok(())
    };
    let wrong = pg.url().replace(&password, "not-the-password");
    let e = Database::connect(&wrong)
        .await
        .expect_err("a wrong password");
    check(
        "wrong password",
        format!("{e:#}"),
        &[
            "password authentication failed",
            "postgres://lotabots:***@127.0.0.1",
        ],
    )?;

    let closed = ports::free_ports(1)?[0];
    let began = Instant::now();
    let e = Database::connect(&format!(
        "postgres://lotabots:{password}@127.0.0.1:{closed}/lotabots"
    ))
    .await
    .expect_err("a closed port");
    check(
        "closed port",
        format!("{e:#}"),
        &["Connection refused", &format!("127.0.0.1:{closed}")],
    )?;
    ensure!(
        began.elapsed().as_secs() < 5,
        "a closed port took {:?} to report",
        began.elapsed()
    );

    let e = Database::connect(&format!("{}?sslmode=sometimes", pg.url()))
        .await
        .expect_err("a bad sslmode");
    check("bad URL", format!("{e:#}"), &["invalid PostgreSQL URL"])?;

    let db = Database::connect(&pg.url()).await?;
    let opts = DbOptions::new(pg.url());
    check("Debug", format!("{db:?} {opts:?}"), &["***"])?;
    db.ping().await?;
    db.close().await;
    let e = db.ping().await.expect_err("a closed pool answered");
    check("closed pool", format!("{e:#}"), &["does not answer", "***"])?;
    Ok(())
}

/// Turns TLS on or off in the running server (`ALTER SYSTEM`, reload) and waits until new
/// connections see it.
async fn set_server_tls(ctx: &Ctx, url: &str, settings: &[(&str, Option<&str>)]) -> Result<()> {
    // ALTER SYSTEM cannot run in the implicit transaction of a multi-statement -c.
    for (name, value) in settings {
        let sql = match value {
            Some(v) => format!("ALTER SYSTEM SET {name} = '{v}'"),
            None => format!("ALTER SYSTEM RESET {name}"),
        };
        psql(ctx, url, &sql).await?;
    }
    psql(ctx, url, "SELECT pg_reload_conf()").await?;
    let want = match settings.iter().find(|(n, _)| *n == "ssl") {
        Some((_, Some(v))) => *v,
        _ => "off",
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while psql(ctx, url, "SHOW ssl").await? != want {
        ensure!(Instant::now() < deadline, "ssl never became {want}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Hands `dir` and everything in it to the owner of the data directory: PostgreSQL
/// reads its key only when it owns it (it runs as `postgres` when the tests are root).
fn give_to_postgres(dir: &Path, data_dir: &Path) -> Result<()> {
    let owner = std::fs::metadata(data_dir)?;
    let (uid, gid) = (Some(owner.uid()), Some(owner.gid()));
    std::os::unix::fs::chown(dir, uid, gid)?;
    for entry in std::fs::read_dir(dir)? {
        std::os::unix::fs::chown(entry?.path(), uid, gid)?;
    }
    Ok(())
}

async fn tls_is_required_verified_and_refused_with_a_wrong_ca(ctx: Ctx) -> Result<()> {
    let url = fresh_db(&ctx, "tls").await?;
    let pg = pg(&ctx)?;
    let password = pg.password().to_string();

    // TLS demanded of a server without it: refused, never silently in clear.
    let mut require = DbOptions::new(url.clone());
    require.ssl_mode = Some(SslMode::Require);
    let e = Database::connect_with(&require)
        .await
        .expect_err("TLS required of a server without it");
    let msg = format!("{e:#}");
    ensure!(msg.contains("TLS") && !msg.contains(&password), "{msg}");

    // The server gets a certificate for 127.0.0.1 from a CA of its own (the harness's PKI
    // generator), in its data directory.
    let tls_dir = pg.data_dir().join(format!("tls-{}", ctx.prefix()));
    let server = Pki::generate(&tls_dir, &[])?;
    give_to_postgres(&tls_dir, pg.data_dir())?;
    let (cert, key) = (
        server.apiserver.cert.display().to_string(),
        server.apiserver.key.display().to_string(),
    );
    set_server_tls(
        &ctx,
        &url,
        &[
            ("ssl_cert_file", Some(&cert)),
            ("ssl_key_file", Some(&key)),
            ("ssl", Some("on")),
        ],
    )
    .await?;
    let outcome = async {
        // verify-full against the right CA, from the options or from the URL.
        let mut verified = DbOptions::new(url.clone());
        verified.ssl_mode = Some(SslMode::VerifyFull);
        verified.ssl_root_cert = Some(server.ca.cert.clone());
        let db = Database::connect_with(&verified).await?;
        db.record(&record("node-tls", 1), None, &[]).await?;
        let in_tls = psql(
            &ctx,
            &url,
            "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) \
             WHERE ssl AND application_name = 'lotabots-store' AND datname = current_database()",
        )
        .await?;
        ensure!(in_tls != "0", "no TLS connection of the store's pool");
        db.close().await;
        let in_url = format!(
            "{url}?sslmode=verify-full&sslrootcert={}",
            server.ca.cert.display()
        );
        Database::connect(&in_url).await?.close().await;

        // Another CA: the server's certificate is refused, whichever way it is given.
        let other = Pki::generate(&tls_dir.join("other"), &[])?;
        let mut wrong = verified.clone();
        wrong.ssl_root_cert = Some(other.ca.cert.clone());
        let e = Database::connect_with(&wrong)
            .await
            .expect_err("a certificate from another CA");
        let msg = format!("{e:#}");
        ensure!(
            msg.contains("certificate") && !msg.contains(&password),
            "{msg}"
        );
        anyhow::Ok(())
    }
    .await;
    set_server_tls(
        &ctx,
        &url,
        &[
            ("ssl", None),
            ("ssl_cert_file", None),
            ("ssl_key_file", None),
        ],
    )
    .await?;
    outcome
}
