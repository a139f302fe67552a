//! Consumer audit: what each (topic, instance) holds. Polls record into a sharded
//! in-memory buffer (never waiting on Postgres); a flusher writes it in one batched
//! upsert every interval and keeps what it could not write for the next try.
//! `report` holds what is recorded (a poll's report, the observation per key),
//! `buffer` where it waits for the flusher.
mod buffer;
mod report;

pub use buffer::AuditBuffer;
pub use report::{source_of, Applied, Key, Observation, Reporter, Seen, MAX_INSTANCES_PER_SOURCE};
