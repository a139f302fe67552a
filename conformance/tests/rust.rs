//! Runs every scenario in `conformance/scenarios/` against the Rust client's adapter.
mod harness;

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn the_rust_client_passes_the_conformance_suite(pool: sqlx::PgPool) {
    harness::run_suite(pool, &harness::AdapterSpec::rust()).await;
}
