//! Teams (what topics name as their owner) and their members: creating a team, adding
//! and removing members (admins only), listing them.
use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::handle::Imprint;
use crate::model::Team;
use crate::store;
use serde_json::json;

/// Team names are what `topics.owner` holds: the same characters, but never empty.
fn check_team_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 64
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(Error::invalid("a team name is 1-64 letters, digits, '.', '_' or '-'"));
    }
    Ok(())
}

impl Imprint {
    /// Creates a team (admins only). Topics name it as their owner.
    #[tracing::instrument(skip(self, description))]
    pub async fn create_team(&self, caller: &Caller, name: &str, description: &str) -> Result<Team> {
        caller.require_admin()?;
        check_team_name(name)?;
        if description.chars().count() > 4096 {
            return Err(Error::invalid("description has at most 4096 characters"));
        }
        let who = caller.who();
        let now = self.now();
        let mut tx = self.pool().begin().await?;
        let Some(created_at) = store::users::insert_team(&mut tx, name, description, &who, now).await? else {
            return Err(Error::TeamExists(name.to_owned()));
        };
        let details = json!({"name": name, "description": description});
        store::audit(&mut tx, now, &who, "team.create", None, details).await?;
        tx.commit().await?;
        Ok(Team { name: name.to_owned(), description: description.to_owned(), members: vec![], created_at })
    }

    /// Adds `username` to `team` or removes them (admins only). Asking for the
    /// membership that already holds changes nothing and records nothing.
    #[tracing::instrument(skip(self))]
    pub async fn set_team_member(&self, caller: &Caller, team: &str, username: &str, member: bool) -> Result<()> {
        caller.require_admin()?;
        let mut tx = self.pool().begin().await?;
        let team_id =
            store::users::team_id(&mut tx, team).await?.ok_or_else(|| Error::TeamNotFound(team.to_owned()))?;
        let user_id =
            store::users::user_id(&mut tx, username).await?.ok_or_else(|| Error::UserNotFound(username.to_owned()))?;
        if !store::users::set_member(&mut tx, team_id, user_id, member).await? {
            return Ok(());
        }
        let action = if member { "team.member_add" } else { "team.member_remove" };
        let details = json!({"team": team, "username": username});
        store::audit(&mut tx, self.now(), &caller.who(), action, None, details).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Every team with its members, by name (for anyone signed in or with a token).
    pub async fn teams(&self, caller: &Caller) -> Result<Vec<Team>> {
        caller.require_known("listing teams")?;
        store::users::teams(self.pool()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn team_names() {
        assert!(check_team_name("Payments.EU_1-x").is_ok());
        assert!(check_team_name("").is_err());
        assert!(check_team_name("a/b").is_err());
        assert!(check_team_name(&"t".repeat(65)).is_err());
    }
}
