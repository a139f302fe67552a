//! The `topics.encryption` column (docs/encryption.md).
use crate::error::{Error, Result};
use crate::model::Encryption;
use sqlx::types::Json;
use sqlx::PgConnection;

/// Sets (or with `None` clears) a topic's encryption setting.
pub(crate) async fn set(conn: &mut PgConnection, id: i64, e: Option<&Encryption>) -> Result<()> {
    let v = e.map(serde_json::to_value).transpose().map_err(|e| Error::Internal(format!("encryption as JSON: {e}")))?;
    sqlx::query!("UPDATE topics SET encryption = $2 WHERE id = $1", id, v).execute(&mut *conn).await?;
    Ok(())
}

/// A topic's encryption setting.
pub(crate) async fn get(conn: &mut PgConnection, id: i64) -> Result<Option<Encryption>> {
    let v = sqlx::query_scalar!(r#"SELECT encryption AS "encryption: Json<Encryption>" FROM topics WHERE id = $1"#, id)
        .fetch_one(&mut *conn)
        .await?;
    Ok(v.map(|j| j.0))
}

/// What cannot be combined with an encrypted topic: the settings that read plaintext on
/// the server (JSON Schema, Apollo, OpenFeature and Spring bindings), as set now.
pub(crate) struct Combination {
    pub encryption: Option<Json<Encryption>>,
    pub json_schema: bool,
    pub apollo: bool,
    pub ofrep: bool,
    pub spring: bool,
}

pub(crate) async fn combination(conn: &mut PgConnection, id: i64) -> Result<Combination> {
    Ok(sqlx::query_as!(
        Combination,
        r#"SELECT encryption AS "encryption: Json<Encryption>", json_schema IS NOT NULL AS "json_schema!",
                  apollo_app_id IS NOT NULL AS "apollo!", ofrep_flag_key IS NOT NULL AS "ofrep!",
                  spring_application IS NOT NULL AS "spring!"
           FROM topics WHERE id = $1"#,
        id
    )
    .fetch_one(&mut *conn)
    .await?)
}
