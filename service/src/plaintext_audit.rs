//! The API of the plaintext-read audit (docs/encryption.md, "At rest"): the flusher's batched
//! write of the counts `plaintext_reads` keeps in memory, and the audit's read for a topic's
//! publishers and admins.
use crate::auth::Caller;
use crate::model::PlaintextRead;
use crate::plaintext_reads::PlaintextReads;

impl crate::handle::Imprint {
    /// Writes the waiting plaintext-read counts in one batch (kept for the next try when
    /// Postgres says no). Returns how many keys were written.
    pub async fn flush_plaintext_reads(&self) -> crate::Result<usize> {
        let _flushing = self.inner.plaintext_reads.flushing.lock().await;
        let entries = self.inner.plaintext_reads.drain();
        if entries.is_empty() {
            return Ok(0);
        }
        match crate::store::plaintext_reads::upsert(self.pool(), &entries).await {
            Ok(()) => Ok(entries.len()),
            Err(e) => {
                self.inner.plaintext_reads.restore(entries);
                Err(e)
            }
        }
    }

    pub(crate) fn plaintext_reads(&self) -> &PlaintextReads {
        &self.inner.plaintext_reads
    }

    /// The plaintext reads of an at-rest topic, newest first (at most 1000): for the
    /// topic's publishers and admins (readers do not see who else read).
    pub async fn plaintext_read_audit(
        &self,
        caller: &Caller,
        topic: &imprint_domain::TopicName,
    ) -> crate::Result<Vec<PlaintextRead>> {
        let t = {
            let mut conn = self.pool().acquire().await?;
            crate::store::topics::require(&mut conn, topic, false).await?
        };
        caller.require_write(&t.name, &t.owner)?;
        self.flush_plaintext_reads().await?;
        crate::store::plaintext_reads::of_topic(self.pool(), t.id).await
    }
}
