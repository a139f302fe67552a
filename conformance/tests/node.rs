//! Runs every scenario in `conformance/scenarios/` against the node client's adapter, its
//! command line in `IMPRINT_CONFORMANCE_NODE` (skipped without it, unless `CI=true`).
mod harness;

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn the_node_client_passes_the_conformance_suite(pool: sqlx::PgPool) {
    harness::run_row(pool, "node", "IMPRINT_CONFORMANCE_NODE").await;
}
