//! Administration: users, teams and API tokens (admins only; the service checks).
use crate::common::{error_text, short_time, ActionResult, Flash};
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

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdminData {
    pub users: Vec<UserRow>,
    pub teams: Vec<TeamRow>,
    pub tokens: Vec<TokenRow>,
    /// A token created by a form post without JavaScript, shown this once.
    pub new_token: Option<(String, String)>,
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
    let tokens = load(imprint_service::auth::list_tokens(imprint.pool(), &caller).await)?
        .into_iter()
        .map(|t| TokenRow {
            name: t.name,
            rights: if t.is_admin { "admin".into() } else { format!("team {}", t.team.unwrap_or_default()) },
            created_at: t.created_at.to_rfc3339(),
            last_used_at: t.last_used_at.map(|d| d.to_rfc3339()),
        })
        .collect();
    // Shown once: taken out of the session as it is read.
    let new_token = session().await?.remove::<(String, String)>(NEW_TOKEN_KEY).await.ok().flatten();
    Ok(AdminData { users, teams, tokens, new_token })
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

#[server(prefix = "/console/fn")]
pub async fn create_token(name: String, team: String) -> Result<String, ServerFnError> {
    use crate::ssr::{finish, imprint, is_form_post, require_user, session};
    let (_, caller) = require_user().await?;
    let imprint = imprint()?;
    let team = team.trim();
    let r = imprint_service::auth::create_token(
        imprint.pool(),
        &caller,
        name.trim(),
        team.is_empty(),
        (!team.is_empty()).then_some(team),
    )
    .await;
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
    let r = imprint_service::auth::revoke_token(imprint.pool(), &caller, &name).await;
    finish(r, None, Some("Token revoked"))
}

#[component]
pub fn AdminPage() -> impl IntoView {
    let create_user = ServerAction::<CreateUser>::new();
    let disable = ServerAction::<SetUserDisabled>::new();
    let create_team = ServerAction::<CreateTeam>::new();
    let member = ServerAction::<SetTeamMember>::new();
    let create_token = ServerAction::<CreateToken>::new();
    let revoke = ServerAction::<RevokeToken>::new();
    let data = Resource::new(
        move || {
            (
                create_user.version().get(),
                disable.version().get(),
                create_team.version().get(),
                member.version().get(),
                create_token.version().get(),
                revoke.version().get(),
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
        {move || match create_token.value().get() {
            Some(Ok(token)) => Some(view! { <p class="flash notice token" role="status">"New token (shown once, store it now): " <code class="secret">{token}</code></p> }.into_any()),
            Some(Err(e)) => Some(view! { <p class="flash error" role="alert">{error_text(&e)}</p> }.into_any()),
            None => None,
        }}
        <Transition fallback=|| view! { <p class="muted">"Loading…"</p> }>
            {move || Suspend::new(async move {
                match data.await {
                    Err(e) => view! { <p class="flash error" role="alert">{error_text(&e)}</p> }.into_any(),
                    Ok(d) => { let (teams_select, teams_tokens) = (d.teams.clone(), d.teams.clone()); view! {
                        {d.new_token.clone().map(|(name, token)| view! {
                            <p class="flash notice token" role="status">{format!("New token “{name}” (shown once, store it now): ")}<code class="secret">{token}</code></p>
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
                                <select name="team" aria-label="Token rights">
                                    <option value="">"admin (everything)"</option>
                                    {teams_tokens.iter().map(|t| view! { <option value=t.name.clone()>{format!("team {}", t.name)}</option> }).collect_view()}
                                </select>
                                <button type="submit">"Create token"</button>
                            </ActionForm>
                        </section>
                    }.into_any() }
                }
            })}
        </Transition>
    }
}
