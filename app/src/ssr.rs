//! Server-side helpers for server functions: the service handle, the signed-in caller,
//! and answers that work both for hydrated calls and for plain HTML form posts.
use http::header::{ACCEPT, REFERER};
use imprint_service::model::User;
use imprint_service::{Caller, Error, Imprint};
use leptos::prelude::*;
use tower_sessions::Session;

/// The session key holding the signed-in user's id.
pub const USER_KEY: &str = "user_id";

pub fn imprint() -> Result<Imprint, ServerFnError> {
    use_context::<Imprint>().ok_or_else(|| ServerFnError::new("the console is not connected to the service"))
}

pub async fn session() -> Result<Session, ServerFnError> {
    leptos_axum::extract::<Session>().await.map_err(|e| ServerFnError::new(format!("no session: {e}")))
}

/// The session key holding the user's session epoch at sign-in (a password change moves
/// the user's epoch on, and the sessions signed in before end).
pub const EPOCH_KEY: &str = "session_epoch";
/// The session key holding when the session signed in (Unix seconds): sessions have an
/// absolute lifetime (7 days, however active they are).
pub const SIGNED_IN_AT_KEY: &str = "signed_in_at";

/// Marks a session signed in as `user_id` (after `cycle_id`).
pub async fn start_session(imprint: &Imprint, session: &Session, user_id: i64) -> Result<(), ServerFnError> {
    let fail = |e: String| ServerFnError::new(format!("session: {e}"));
    let epoch = imprint.session_epoch(user_id).await.map_err(|e| fail(e.to_string()))?.unwrap_or_default();
    session.insert(USER_KEY, user_id).await.map_err(|e| fail(e.to_string()))?;
    session.insert(EPOCH_KEY, epoch).await.map_err(|e| fail(e.to_string()))?;
    session.insert(SIGNED_IN_AT_KEY, imprint.now().timestamp()).await.map_err(|e| fail(e.to_string()))?;
    Ok(())
}

/// The user a session is signed in as, if the session still holds: its user exists and
/// is enabled, it is younger than the absolute lifetime, and the user's password has not
/// changed since it signed in. A session that no longer holds is ended.
pub async fn session_user(imprint: &Imprint, session: &Session) -> Result<Option<(User, Caller)>, Error> {
    let get = |e: tower_sessions::session::Error| Error::Internal(format!("session: {e}"));
    let Some(id) = session.get::<i64>(USER_KEY).await.map_err(get)? else { return Ok(None) };
    let epoch = session.get::<i64>(EPOCH_KEY).await.map_err(get)?;
    let at = session.get::<i64>(SIGNED_IN_AT_KEY).await.map_err(get)?;
    let user = match (epoch, at.and_then(|s| chrono::DateTime::from_timestamp(s, 0))) {
        (Some(epoch), Some(at)) => imprint.session_user(id, epoch, at).await?,
        _ => None,
    };
    if user.is_none() {
        session.flush().await.map_err(get)?;
    }
    Ok(user)
}

/// The signed-in user and their caller identity, if any.
pub async fn signed_in() -> Result<Option<(User, Caller)>, ServerFnError> {
    let session = session().await?;
    session_user(&imprint()?, &session).await.map_err(|e| ServerFnError::new(refusal(&e, "console session").1))
}

/// The signed-in caller; without one, the browser is sent to the sign-in page.
pub async fn require_user() -> Result<(User, Caller), ServerFnError> {
    match signed_in().await? {
        Some(u) => Ok(u),
        None => {
            let back = current_path().unwrap_or_else(|| "/".into());
            leptos_axum::redirect(&format!("/login?next={}", urlencoding::encode(&back)));
            Err(ServerFnError::new("sign in to continue"))
        }
    }
}

fn parts() -> Option<http::request::Parts> {
    use_context::<http::request::Parts>()
}

/// The page the request came from (for server functions) or is for (for pages).
fn current_path() -> Option<String> {
    let p = parts()?;
    if p.uri.path().starts_with("/console/fn/") {
        referer_path()
    } else {
        Some(p.uri.path_and_query().map(|pq| pq.to_string()).unwrap_or_else(|| "/".into()))
    }
}

fn referer_path() -> Option<String> {
    let p = parts()?;
    let r = p.headers.get(REFERER)?.to_str().ok()?;
    let uri: http::Uri = r.parse().ok()?;
    Some(uri.path_and_query().map(|pq| pq.to_string()).unwrap_or_else(|| "/".into()))
}

/// A plain HTML form post (no JavaScript): the answer must be a page, not data.
pub fn is_form_post() -> bool {
    parts()
        .and_then(|p| p.headers.get(ACCEPT).and_then(|a| a.to_str().ok()).map(|a| a.contains("text/html")))
        .unwrap_or(false)
}

/// `path` with `key=value` set in its query (other `error`/`notice` messages dropped).
pub fn with_param(path: &str, key: &str, value: &str) -> String {
    let (path, fragment) = match path.split_once('#') {
        Some((p, f)) => (p, format!("#{f}")),
        None => (path, String::new()),
    };
    let (base, query) = path.split_once('?').unwrap_or((path, ""));
    let mut pairs: Vec<String> = query
        .split('&')
        .filter(|p| {
            !p.is_empty() && !p.starts_with("error=") && !p.starts_with("notice=") && !p.starts_with(&format!("{key}="))
        })
        .map(str::to_owned)
        .collect();
    pairs.push(format!("{key}={}", urlencoding::encode(value)));
    format!("{base}?{}{fragment}", pairs.join("&"))
}

/// Ends a server function. Errors become a readable message: returned to a hydrated page,
/// or, for a plain form post, shown on the page it came from (`?error=`). On success a
/// plain form post goes to `then` (with a `notice`), or back where it came from.
/// A console form's optional "At (RFC 3339)" field: empty is now, else the time the change
/// request is applied (docs/change-control.md "Scheduled releases").
pub fn scheduled_at(at: Option<&str>) -> Result<Option<chrono::DateTime<chrono::Utc>>, Error> {
    match at.map(str::trim).filter(|t| !t.is_empty()) {
        None => Ok(None),
        Some(t) => chrono::DateTime::parse_from_rfc3339(t)
            .map(|t| Some(t.with_timezone(&chrono::Utc)))
            .map_err(|e| Error::invalid(format!("the time is not RFC 3339 (2026-12-24T06:00:00Z): {e}"))),
    }
}

pub fn finish<T>(result: Result<T, Error>, then: Option<String>, notice: Option<&str>) -> Result<T, ServerFnError> {
    match result {
        Ok(v) => {
            if is_form_post() || then.is_some() {
                let to = then.or_else(referer_path).unwrap_or_else(|| "/".into());
                let to = match notice {
                    Some(n) => with_param(&to, "notice", n),
                    None => to,
                };
                leptos_axum::redirect(&to);
            }
            Ok(v)
        }
        Err(e) => {
            let (status, message) = refusal(&e, "console action");
            if is_form_post() {
                let back = referer_path().unwrap_or_else(|| "/".into());
                leptos_axum::redirect(&with_param(&back, "error", &message));
            } else if let Some(response) = use_context::<leptos_axum::ResponseOptions>() {
                // A refusal is not a server error: a wrong password is 401, not 500.
                response.set_status(status);
            }
            Err(ServerFnError::new(message))
        }
    }
}

/// What a failed console action answers a hydrated call: the service error's own status
/// and public message — the API's for the same failure (plain form posts are redirected
/// back with the message). What the caller is not shown is logged.
pub fn refusal(e: &Error, context: &str) -> (http::StatusCode, String) {
    e.log(context);
    (e.status(), e.public_message())
}

/// Maps a service error for a loader (pages): the message, readable.
pub fn load<T>(result: Result<T, Error>) -> Result<T, ServerFnError> {
    result.map_err(|e| ServerFnError::new(refusal(&e, "console page").1))
}

/// A topic name from a page's path or a form, parsed once here (a bad one is the API's
/// `invalid_topic_name`).
pub fn topic_name(name: &str) -> Result<imprint_domain::TopicName, Error> {
    Ok(imprint_domain::TopicName::parse(name)?)
}

#[cfg(test)]
mod tests {
    #[test]
    fn with_param_keeps_fragment_and_replaces_messages() {
        assert_eq!(super::with_param("/t/x#v2", "notice", "Published v2"), "/t/x?notice=Published%20v2#v2");
        assert_eq!(super::with_param("/a?q=1&error=old", "error", "new"), "/a?q=1&error=new");
        assert_eq!(super::with_param("/a?notice=x", "error", "e"), "/a?error=e");
    }
}
