//! Runs every scenario in `conformance/scenarios/` against the python client's adapter, its
//! command line in `IMPRINT_CONFORMANCE_PYTHON` (skipped without it, unless `CI=true`).
mod harness;

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn the_python_client_passes_the_conformance_suite(pool: sqlx::PgPool) {
    harness::run_row(pool, "python", "IMPRINT_CONFORMANCE_PYTHON").await;
}
