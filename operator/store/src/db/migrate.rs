//! The schema: `operator/store/migrations/`, compiled in and applied at start-up.

use anyhow::{Context, Result};
use sqlx::{PgConnection, migrate::Migrator};

/// The migrations, embedded at compile time (no files needed at run time).
static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// The advisory lock every replica takes before migrating: the ASCII of `lotabots`.
/// (sqlx's migrator takes its own per-database lock too, but only after it has looked at
/// its bookkeeping table; ours is held around all of it, and is documented for whoever
/// migrates by hand.)
pub const MIGRATION_LOCK_KEY: i64 = 0x6c6f_7461_626f_7473;

/// Applies the pending migrations on `conn`, holding the advisory lock: a second replica
/// waits, then finds nothing to do. Each migration is its own transaction, so a failing
/// one leaves nothing of itself behind.
pub(super) async fn run(conn: &mut PgConnection) -> Result<()> {
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(MIGRATION_LOCK_KEY)
        .execute(&mut *conn)
        .await
        .context("taking the migration lock")?;
    // `run_direct` is `run` on a connection we hold: `run`'s generic `Acquire` bound
    // makes the future not `Send` for every lifetime, so it could not be spawned (sqlx
    // keeps `run_direct` public for exactly this).
    let applied = MIGRATOR
        .run_direct(&mut *conn)
        .await
        .context("applying the schema migrations");
    let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(MIGRATION_LOCK_KEY)
        .execute(&mut *conn)
        .await
        .context("releasing the migration lock");
    applied?;
    unlocked?;
    Ok(())
}
