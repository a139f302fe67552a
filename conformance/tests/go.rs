//! Runs every scenario in `conformance/scenarios/` against the go client's adapter, its
//! command line in `IMPRINT_CONFORMANCE_GO` (skipped without it, unless `CI=true`).
mod harness;

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn the_go_client_passes_the_conformance_suite(pool: sqlx::PgPool) {
    harness::run_row(pool, "go", "IMPRINT_CONFORMANCE_GO").await;
}
