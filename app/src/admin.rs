//! Administration: users, teams, API tokens of each kind, and sign-in lockouts (admins
//! only; the service checks).
use crate::common::{error_text, short_time, ActionResult, Flash, SecretResult, SecretShownOnce};
use leptos::form::ActionForm;
use leptos::prelude::*;
use leptos_meta::Title;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UserRow {
    pub username: String,
    pub is_admin: bool,
    pub teams: Vec<String>,
    pub disabled: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TeamRow {
    pub name: String,
    pub description: String,
    pub members: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenRow {
    pub name: String,
    pub rights: String,
    pub created_at: String,
    pub last_used_at: Option<String>,
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct AdminData {
    pub users: Vec<UserRow>,
    pub teams: Vec<TeamRow>,
    pub tokens: Vec<TokenRow>,
    /// A token created by a form post without JavaScript, shown this once.
    pub new_token: Option<(String, String)>,
}

/// The new token's value never goes into logs or panic messages.
impl std::fmt::Debug for AdminData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminData")
            .field("users", &self.users)
            .field("teams", &self.teams)
            .field("tokens", &self.tokens)
            .field("new_token", &self.new_token.as_ref().map(|(name, _)| (name, "<redacted>")))
            .finish()
    }
}

#[cfg(feature = "ssr")]
const NEW_TOKEN_KEY: &str = "new_token";

#[server(prefix = "/console/fn")]
pub async fn load_admin() -> Result<AdminData, ServerFnError> {
    use crate::ssr::{imprint, load, require_user, session};
    let (_, caller) = require_user().await?;
    let imprint = imprint()?;
    let users = load(imprint.users(&caller).await)?
        .into_iter()
        .map(|u| UserRow { username: u.username, is_admin: u.is_admin, teams: u.teams, disabled: u.disabled })
        .collect();
    let teams = load(imprint.teams(&caller).await)?
        .into_iter()
        .map(|t| TeamRow { name: t.name, description: t.description, members: t.members })
        .collect();
    let tokens = load(imprint.list_tokens(&caller).await)?
        .into_iter()
        .map(|t| TokenRow {
            rights: rights_of(&t),
            name: t.name,
            created_at: t.created_at.to_rfc3339(),
            last_used_at: t.last_used_at.map(|d| d.to_rfc3339()),
        })
        .collect();
    // Shown once: taken out of the session as it is read.
    let new_token = session().await?.remove::<(String, String)>(NEW_TOKEN_KEY).await.ok().flatten();
    Ok(AdminData { users, teams, tokens, new_token })
}

/// What a token may do, in a few words: `admin`, `publisher · team payments`,
/// `consumer · team payments · region=eu-west-1 · topics secret.*`.
#[cfg(feature = "ssr")]
fn rights_of(t: &imprint_service::model::ApiToken) -> String {
    let mut parts = vec![t.kind.clone()];
    if let Some(team) = &t.team {
        parts.push(format!("team {team}"));
    }
    if !t.labels.is_empty() {
        parts.push(t.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","));
    }
    if !t.topics.is_empty() {
        parts.push(format!("topics {}", t.topics.join(" ")));
    }
    parts.join(" · ")
}

#[server(prefix = "/console/fn")]
pub async fn create_user(username: String, password: String, admin: Option<String>) -> Result<(), ServerFnError> {
    use crate::ssr::{finish, imprint, require_user};
    let (_, caller) = require_user().await?;
    let r = imprint()?.create_user(&caller, username.trim(), &password, admin.is_some()).await;
    finish(r.map(|_| ()), None, Some("User created"))
}

#[server(prefix = "/console/fn")]
pub async fn set_user_disabled(username: String, disabled: bool) -> Result<(), ServerFnError> {
    use crate::ssr::{finish, imprint, require_user};
    let (_, caller) = require_user().await?;
    let r = imprint()?.set_user_disabled(&caller, &username, disabled).await;
    finish(r, None, Some(if disabled { "User disabled" } else { "User enabled" }))
}

#[server(prefix = "/console/fn")]
pub async fn create_team(name: String, description: String) -> Result<(), ServerFnError> {
    use crate::ssr::{finish, imprint, require_user};
    let (_, caller) = require_user().await?;
    let r = imprint()?.create_team(&caller, name.trim(), description.trim()).await;
    finish(r.map(|_| ()), None, Some("Team created"))
}

#[server(prefix = "/console/fn")]
pub async fn set_team_member(team: String, username: String, member: bool) -> Result<(), ServerFnError> {
    use crate::ssr::{finish, imprint, require_user};
    let (_, caller) = require_user().await?;
    let r = imprint()?.set_team_member(&caller, &team, username.trim(), member).await;
    finish(r, None, Some(if member { "Member added" } else { "Member removed" }))
}

/// Creates a token. `kind` is `admin`, `publisher` or `consumer` (absent: admin without
/// a team, publisher with one); consumer tokens may be bound to `labels`
/// (`region=eu-west-1,app=x`) and name restricted `topics` they may read (`a.b c.*`).
#[server(prefix = "/console/fn")]
pub async fn create_token(
    name: String,
    team: String,
    kind: Option<String>,
    labels: Option<String>,
    topics: Option<String>,
) -> Result<String, ServerFnError> {
    use crate::ssr::{finish, imprint, is_form_post, require_user, session};
    use imprint_service::auth::{NewToken, TokenKind};
    let (_, caller) = require_user().await?;
    let imprint = imprint()?;
    let team = team.trim();
    let spec = (|| -> Result<NewToken, imprint_service::Error> {
        let kind = match kind.as_deref().map(str::trim).filter(|k| !k.is_empty()) {
            Some(k) => TokenKind::parse(k)?,
            None if team.is_empty() => TokenKind::Admin,
            None => TokenKind::Publisher,
        };
        if kind == TokenKind::Publisher && team.is_empty() {
            return Err(imprint_service::Error::invalid("a publisher token acts for a team: choose one"));
        }
        let labels = imprint_domain::Labels::parse(labels.as_deref().unwrap_or("").trim())?.pairs().clone();
        let topics = topics
            .as_deref()
            .unwrap_or("")
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect();
        Ok(NewToken {
            name: name.trim().to_owned(),
            kind,
            team: (!team.is_empty()).then(|| team.to_owned()),
            labels,
            topics,
        })
    })();
    let r = match spec {
        Ok(spec) => imprint.create_token_with(&caller, &spec).await,
        Err(e) => Err(e),
    };
    if let (Ok(token), true) = (&r, is_form_post()) {
        // Without JavaScript the page reloads: carry the secret in the session, not the URL.
        let _ = session().await?.insert(NEW_TOKEN_KEY, (name.trim().to_owned(), token.clone())).await;
    }
    finish(r, None, None)
}

#[server(prefix = "/console/fn")]
pub async fn revoke_token(name: String) -> Result<(), ServerFnError> {
    use crate::ssr::{finish, imprint, require_user};
    let (_, caller) = require_user().await?;
    let imprint = imprint()?;
    let r = imprint.revoke_token(&caller, &name).await;
    // Polls cache tokens for a few seconds: this server forgets at once.
    imprint.forget_cached_tokens();
    finish(r, None, Some("Token revoked"))
}

/// Lifts a sign-in lockout for a username and/or a client address (admins only).
#[server(prefix = "/console/fn")]
pub async fn clear_lockout(username: String, client: String) -> Result<(), ServerFnError> {
    use crate::ssr::{finish, imprint, require_user};
    let (_, caller) = require_user().await?;
    let client = client.trim();
    let r = match client.parse::<std::net::IpAddr>() {
        Err(_) if !client.is_empty() => {
            Err(imprint_service::Error::invalid(format!("{client:?} is not an IP address such as 203.0.113.9")))
        }
        parsed => imprint()?.clear_sign_in_lockout(&caller, Some(username.trim()), parsed.ok()).await,
    };
    let notice = if r.as_ref().is_ok_and(|c| *c) { "Lockout cleared" } else { "There was no lockout to clear" };
    finish(r.map(|_| ()), None, Some(notice))
}

#[component]
pub fn AdminPage() -> impl IntoView {
    let create_user = ServerAction::<CreateUser>::new();
    let disable = ServerAction::<SetUserDisabled>::new();
    let create_team = ServerAction::<CreateTeam>::new();
    let member = ServerAction::<SetTeamMember>::new();
    let create_token = ServerAction::<CreateToken>::new();
    let revoke = ServerAction::<RevokeToken>::new();
    let unlock = ServerAction::<ClearLockout>::new();
    let data = Resource::new(
        move || {
            (
                create_user.version().get(),
                disable.version().get(),
                create_team.version().get(),
                member.version().get(),
                create_token.version().get(),
                revoke.version().get(),
                unlock.version().get(),
            )
        },
        |_| load_admin(),
    );
    view! {
        <Title text="Administration"/>
        <section class="page-head"><h1>"Administration"</h1></section>
        <Flash/>
        <ActionResult value=move || create_user.value().get() ok="User created"/>
        <ActionResult value=move || disable.value().get() ok="User updated"/>
        <ActionResult value=move || create_team.value().get() ok="Team created"/>
        <ActionResult value=move || member.value().get() ok="Team updated"/>
        <ActionResult value=move || revoke.value().get() ok="Token revoked"/>
        <ActionResult value=move || unlock.value().get() ok="Lockout cleared (if there was one)"/>
        <SecretResult value=move || create_token.value().get() what="New token"/>
        <Transition fallback=|| view! { <p class="muted">"Loading…"</p> }>
            {move || Suspend::new(async move {
                match data.await {
                    Err(e) => view! { <p class="flash error" role="alert">{error_text(&e)}</p> }.into_any(),
                    Ok(d) => { let (teams_select, teams_tokens) = (d.teams.clone(), d.teams.clone()); view! {
                        {d.new_token.clone().map(|(name, token)| view! {
                            <SecretShownOnce what=format!("New token “{name}”") secret=token/>
                        })}
                        <section class="card" aria-label="Users">
                            <h2>"Users"</h2>
                            <table class="users">
                                <thead><tr><th>"User"</th><th>"Role"</th><th>"Teams"</th><th>"Status"</th><th></th></tr></thead>
                                <tbody>
                                    {d.users.into_iter().map(|u| view! {
                                        <tr>
                                            <td>{u.username.clone()}</td>
                                            <td>{if u.is_admin { "admin" } else { "member" }}</td>
                                            <td>{u.teams.join(", ")}</td>
                                            <td>{if u.disabled { "disabled" } else { "active" }}</td>
                                            <td>
                                                <ActionForm action=disable>
                                                    <input type="hidden" name="username" value=u.username.clone()/>
                                                    <input type="hidden" name="disabled" value=(!u.disabled).to_string()/>
                                                    <button type="submit" class="secondary">{if u.disabled { "Enable" } else { "Disable" }}</button>
                                                </ActionForm>
                                            </td>
                                        </tr>
                                    }).collect_view()}
                                </tbody>
                            </table>
                            <ActionForm action=create_user attr:class="inline" attr:id="create-user">
                                <input type="text" name="username" placeholder="username" aria-label="New username" required/>
                                <input type="password" name="password" placeholder="password (10+ characters)" aria-label="New password" required/>
                                <label class="check"><input type="checkbox" name="admin" value="on"/>" admin"</label>
                                <button type="submit">"Create user"</button>
                            </ActionForm>
                            <ActionForm action=unlock attr:class="inline" attr:id="clear-lockout">
                                <input type="text" name="username" placeholder="username" aria-label="Locked-out username"/>
                                <input type="text" name="client" placeholder="client address (optional)" aria-label="Locked-out client address"/>
                                <button type="submit" class="secondary">"Clear sign-in lockout"</button>
                            </ActionForm>
                        </section>
                        <section class="card" aria-label="Teams">
                            <h2>"Teams"</h2>
                            <table class="teams">
                                <thead><tr><th>"Team"</th><th>"Description"</th><th>"Members"</th></tr></thead>
                                <tbody>
                                    {d.teams.into_iter().map(|t| {
                                        let team = t.name.clone();
                                        view! {
                                        <tr>
                                            <td>{t.name}</td>
                                            <td>{t.description}</td>
                                            <td>
                                                {t.members.into_iter().map(move |m| { let team = team.clone(); view! {
                                                    <ActionForm action=member attr:class="chip">
                                                        <input type="hidden" name="team" value=team/>
                                                        <input type="hidden" name="username" value=m.clone()/>
                                                        <input type="hidden" name="member" value="false"/>
                                                        {m.clone()}<button type="submit" class="link" title=format!("remove {m}")>"×"</button>
                                                    </ActionForm>
                                                }}).collect_view()}
                                            </td>
                                        </tr>
                                    }}).collect_view()}
                                </tbody>
                            </table>
                            <div class="row">
                                <ActionForm action=create_team attr:class="inline" attr:id="create-team">
                                    <input type="text" name="name" placeholder="team name" aria-label="New team" required/>
                                    <input type="text" name="description" placeholder="description" aria-label="Team description"/>
                                    <button type="submit">"Create team"</button>
                                </ActionForm>
                                <ActionForm action=member attr:class="inline" attr:id="add-member">
                                    <select name="team" aria-label="Team">{teams_select.iter().map(|t| view! { <option value=t.name.clone()>{t.name.clone()}</option> }).collect_view()}</select>
                                    <input type="text" name="username" placeholder="username" aria-label="Member username" required/>
                                    <input type="hidden" name="member" value="true"/>
                                    <button type="submit">"Add member"</button>
                                </ActionForm>
                            </div>
                        </section>
                        <section class="card" aria-label="API tokens">
                            <h2>"API tokens"</h2>
                            <table class="tokens">
                                <thead><tr><th>"Name"</th><th>"Rights"</th><th>"Created"</th><th>"Last used"</th><th></th></tr></thead>
                                <tbody>
                                    {d.tokens.into_iter().map(|t| view! {
                                        <tr>
                                            <td>{t.name.clone()}</td>
                                            <td>{t.rights.clone()}</td>
                                            <td>{short_time(&t.created_at)}</td>
                                            <td>{t.last_used_at.as_deref().map(short_time).unwrap_or_else(|| "never".into())}</td>
                                            <td>
                                                <ActionForm action=revoke>
                                                    <input type="hidden" name="name" value=t.name.clone()/>
                                                    <button type="submit" class="secondary">"Revoke"</button>
                                                </ActionForm>
                                            </td>
                                        </tr>
                                    }).collect_view()}
                                </tbody>
                            </table>
                            <ActionForm action=create_token attr:class="inline" attr:id="create-token">
                                <input type="text" name="name" placeholder="token name (e.g. payments-ci)" aria-label="Token name" required/>
                                <select name="kind" aria-label="Token kind">
                                    <option value="">"by team (admin without one)"</option>
                                    <option value="admin">"admin: everything"</option>
                                    <option value="publisher">"publisher: its team's topics"</option>
                                    <option value="consumer">"consumer: read and poll only"</option>
                                    <option value="relay">"relay: polls for downstream consumers (docs/agent.md)"</option>
                                </select>
                                <select name="team" aria-label="Token rights">
                                    <option value="">"no team"</option>
                                    {teams_tokens.iter().map(|t| view! { <option value=t.name.clone()>{format!("team {}", t.name)}</option> }).collect_view()}
                                </select>
                                <input type="text" name="labels" placeholder="consumer labels: region=eu-west-1" aria-label="Token labels"/>
                                <input type="text" name="topics" placeholder="restricted topics: payments.*" aria-label="Token topics"/>
                                <button type="submit">"Create token"</button>
                            </ActionForm>
                        </section>
                    }.into_any() }
                }
            })}
        </Transition>
    }
}
