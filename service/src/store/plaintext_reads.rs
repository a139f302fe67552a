//! The `plaintext_reads` table (docs/encryption.md): counted reads of at-rest plaintext.
use crate::error::Result;
use crate::model::PlaintextRead;
use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

/// Reads counted in memory for one (topic, version, reader), waiting for the flusher.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Count {
    pub reads: u64,
    pub first_at: DateTime<Utc>,
    pub last_at: DateTime<Utc>,
}

/// Adds the counts (one statement for the whole batch).
pub(crate) async fn upsert<'e>(ex: impl PgExecutor<'e>, entries: &[((i64, i64, String), Count)]) -> Result<()> {
    let mut topics = Vec::with_capacity(entries.len());
    let mut versions = Vec::with_capacity(entries.len());
    let mut readers = Vec::with_capacity(entries.len());
    let mut reads = Vec::with_capacity(entries.len());
    let mut firsts = Vec::with_capacity(entries.len());
    let mut lasts = Vec::with_capacity(entries.len());
    for ((t, v, r), c) in entries {
        topics.push(*t);
        versions.push(*v);
        readers.push(r.clone());
        reads.push(c.reads.min(i64::MAX as u64) as i64);
        firsts.push(c.first_at);
        lasts.push(c.last_at);
    }
    sqlx::query!(
        "INSERT INTO plaintext_reads (topic_id, version, reader, reads, first_at, last_at)
         SELECT u.t, u.v, u.r, u.n, u.f, u.l
         FROM UNNEST($1::bigint[], $2::bigint[], $3::text[], $4::bigint[], $5::timestamptz[], $6::timestamptz[])
              AS u(t, v, r, n, f, l)
         JOIN topics ON topics.id = u.t
         ON CONFLICT (topic_id, version, reader) DO UPDATE SET
             reads = plaintext_reads.reads + EXCLUDED.reads,
             first_at = LEAST(plaintext_reads.first_at, EXCLUDED.first_at),
             last_at = GREATEST(plaintext_reads.last_at, EXCLUDED.last_at)",
        &topics,
        &versions,
        &readers,
        &reads,
        &firsts as &[DateTime<Utc>],
        &lasts as &[DateTime<Utc>],
    )
    .execute(ex)
    .await?;
    Ok(())
}

pub(crate) async fn of_topic<'e>(ex: impl PgExecutor<'e>, topic_id: i64) -> Result<Vec<PlaintextRead>> {
    let rows = sqlx::query!(
        r#"SELECT version, reader, reads, first_at AS "first_at: DateTime<Utc>", last_at AS "last_at: DateTime<Utc>"
           FROM plaintext_reads WHERE topic_id = $1 ORDER BY last_at DESC, version DESC, reader LIMIT 1000"#,
        topic_id
    )
    .fetch_all(ex)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| PlaintextRead {
            version: r.version.max(0) as u64,
            reader: r.reader,
            reads: r.reads.max(0) as u64,
            first_at: r.first_at,
            last_at: r.last_at,
        })
        .collect())
}
