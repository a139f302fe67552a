//! Spring Cloud Config Server's protocol under `/spring` (a client's config server URI is
//! `http://imprint:3000/spring`): the `Environment` document of `/{application}/{profile}[/{label}]`
//! and the plain forms `/{application}-{profile}.{yml,yaml,properties,json}` and
//! `/{label}/{application}-{profile}.{ext}`. Who is calling: `Authorization: Basic`
//! (any user, a token as the password) or `Bearer`, none for anonymous; labels from the
//! headers `IMPRINT_SPRING_LABEL_HEADERS` names. What a client gets is decided by the
//! service (`imprint_service::spring`).
use crate::error::{ApiError, ApiResult, ErrorBody};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use imprint_domain::spring::{self as rules, FileFormat};
use imprint_domain::VersionNumber;
use imprint_service::spring::{SpringEnvironment, SpringLabel, SpringRequest};
use imprint_service::{Caller, Error, Imprint};
use std::collections::BTreeMap;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn routes() -> OpenApiRouter<Imprint> {
    OpenApiRouter::new().routes(routes!(file)).routes(routes!(environment_or_labelled_file)).routes(routes!(labelled))
}

/// Labels that mean "no label": Spring's default label (`main`, `master` before it).
const DEFAULT_LABELS: [&str; 2] = ["main", "master"];

/// The token a request carries: `Bearer <token>`, or `Basic` with the token as the
/// password (Spring clients' `spring.cloud.config.password`; the user name is not read).
/// A header that is present but neither is a 401.
fn token(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else { return Ok(None) };
    let bad = || {
        ApiError(Error::Unauthorized(
            "the Authorization header must be `Bearer <token>` or `Basic` with the token as the password".into(),
        ))
    };
    let value = value.to_str().map_err(|_| bad())?.trim();
    let (scheme, rest) = value.split_once(' ').ok_or_else(bad)?;
    let token = if scheme.eq_ignore_ascii_case("bearer") {
        rest.trim().to_owned()
    } else if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD.decode(rest.trim()).map_err(|_| bad())?;
        let text = String::from_utf8(decoded).map_err(|_| bad())?;
        text.split_once(':').map(|(_, password)| password.to_owned()).ok_or_else(bad)?
    } else {
        return Err(bad());
    };
    if token.is_empty() {
        return Err(bad());
    }
    Ok(Some(token))
}

async fn caller(imprint: &Imprint, headers: &HeaderMap) -> ApiResult<Caller> {
    Ok(match token(headers)? {
        None => Caller::Anonymous,
        Some(t) => imprint.authenticate_cached(&t).await?,
    })
}

/// The labels the configured headers carry (a value that cannot be a label is a 400).
fn header_labels(imprint: &Imprint, headers: &HeaderMap) -> ApiResult<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for (name, key) in &imprint.config().spring_label_headers {
        let Some(v) = headers.get(name.as_str()) else { continue };
        let v = v.to_str().map(str::trim).unwrap_or("");
        imprint_domain::Labels::from_pairs([(key.as_str(), v)])
            .map_err(|e| ApiError::invalid(format!("header {name}: {e}")))?;
        out.insert(key.clone(), v.to_owned());
    }
    Ok(out)
}

/// `{label}`: absent or the default label is what resolution gives; else a version number.
fn parse_label(label: Option<&str>) -> ApiResult<SpringLabel> {
    let Some(l) = label.map(str::trim) else { return Ok(SpringLabel::Resolved) };
    if DEFAULT_LABELS.contains(&l) {
        return Ok(SpringLabel::Resolved);
    }
    VersionNumber::parse(l).map(SpringLabel::Version).map_err(|_| {
        ApiError::not_found(format!(
            "no label {l:?}: a label is a version number (1, 2, 3, …), or main/master (or none) for the resolved versions"
        ))
    })
}

/// Reads the request and asks the service for the environment.
async fn environment(
    imprint: &Imprint,
    headers: &HeaderMap,
    peer: Option<std::net::IpAddr>,
    application: &str,
    profiles: &str,
    label: Option<&str>,
) -> ApiResult<SpringEnvironment> {
    let bad = |e: rules::SpringError| ApiError::invalid(e.to_string());
    rules::check_name("application", application).map_err(bad)?;
    let profiles = rules::parse_profiles(profiles).map_err(bad)?;
    let caller = caller(imprint, headers).await?;
    let req = SpringRequest {
        application: application.to_owned(),
        profiles,
        label_text: label.map(str::to_owned),
        label: parse_label(label)?,
        labels: header_labels(imprint, headers)?,
        peer,
    };
    Ok(imprint.spring_environment(&caller, &req).await?)
}

/// A plain form: the property sources merged (the most specific wins) and rendered.
fn plain(env: &SpringEnvironment, format: FileFormat) -> Response {
    let merged = rules::merge(env.property_sources.iter().map(|s| &s.source));
    match format {
        FileFormat::Properties => text(rules::render_properties(&merged)),
        FileFormat::Yaml => text(rules::render_yaml(&rules::unflatten(&merged))),
        FileFormat::Json => Json(rules::unflatten(&merged)).into_response(),
    }
}

/// Plain text (never anything a browser would run).
fn text(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/plain;charset=UTF-8")], body).into_response()
}

async fn file_form(
    imprint: &Imprint,
    headers: &HeaderMap,
    peer: Option<std::net::IpAddr>,
    label: Option<&str>,
    file: &str,
) -> ApiResult<Response> {
    let (application, profiles, format) = rules::split_file(file).ok_or_else(|| {
        ApiError::invalid(format!("{file:?} is not {{application}}-{{profile}}.yml (or .yaml, .properties, .json)"))
    })?;
    let env = environment(imprint, headers, peer, application, profiles, label).await?;
    Ok(plain(&env, format))
}

/// `GET /spring/{application}-{profile}.{yml,yaml,properties,json}`: the merged
/// configuration of the resolved versions as one file.
#[utoipa::path(get, path = "/spring/{file}", tag = "spring",
    params(("file" = String, Path, description = "{application}-{profile}.yml, .yaml, .properties or .json \
            (split at the last '-'; profiles comma-separated)")),
    responses((status = 200, description = "the merged configuration: YAML or .properties as text/plain, or JSON",
               content((String = "text/plain"), (Object = "application/json"))),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub async fn file(
    State(imprint): State<Imprint>,
    Path(file): Path<String>,
    headers: HeaderMap,
    crate::extract::ClientAddr(peer): crate::extract::ClientAddr,
) -> ApiResult<Response> {
    file_form(&imprint, &headers, peer, None, &file).await
}

/// `GET /spring/{application}/{profile}`: the `Environment` of an application for its
/// profiles (comma-separated), resolved for the caller. When `{profile}` is a file name
/// (`{application}-{profile}.yml`, …), this is the plain form with `{application}` as the
/// label: `/spring/{label}/{application}-{profile}.{ext}`.
#[utoipa::path(get, path = "/spring/{application}/{profile}", tag = "spring",
    params(("application" = String, Path, description = "the application (spring.application.name); for the \
             plain form, the label"),
           ("profile" = String, Path, description = "profiles, comma-separated (the last wins); or \
             {application}-{profile}.yml/.yaml/.properties/.json for the plain form")),
    responses((status = 200, description = "Spring's Environment, or the plain form's file",
               content((SpringEnvironment = "application/json"), (String = "text/plain"))),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub async fn environment_or_labelled_file(
    State(imprint): State<Imprint>,
    Path((first, second)): Path<(String, String)>,
    headers: HeaderMap,
    crate::extract::ClientAddr(peer): crate::extract::ClientAddr,
) -> ApiResult<Response> {
    if rules::split_file(&second).is_some() {
        return file_form(&imprint, &headers, peer, Some(&first), &second).await;
    }
    Ok(Json(environment(&imprint, &headers, peer, &first, &second, None).await?).into_response())
}

/// `GET /spring/{application}/{profile}/{label}`: the `Environment` at a label: a version
/// number reads that version of each bound topic; `main` or `master` is the resolved one.
#[utoipa::path(get, path = "/spring/{application}/{profile}/{label}", tag = "spring",
    params(("application" = String, Path), ("profile" = String, Path, description = "comma-separated"),
           ("label" = String, Path, description = "a version number, or main/master for the resolved versions")),
    responses((status = 200, body = SpringEnvironment), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn labelled(
    State(imprint): State<Imprint>,
    Path((application, profile, label)): Path<(String, String, String)>,
    headers: HeaderMap,
    crate::extract::ClientAddr(peer): crate::extract::ClientAddr,
) -> ApiResult<Json<SpringEnvironment>> {
    Ok(Json(environment(&imprint, &headers, peer, &application, &profile, Some(&label)).await?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(auth).unwrap());
        h
    }

    #[test]
    fn basic_carries_the_token_as_its_password() {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        assert_eq!(token(&HeaderMap::new()).unwrap(), None);
        assert_eq!(token(&with("Bearer abc")).unwrap().as_deref(), Some("abc"));
        assert_eq!(token(&with(&format!("Basic {}", b64("user:tok:en")))).unwrap().as_deref(), Some("tok:en"));
        for bad in
            ["Basic !!", &format!("Basic {}", b64("nocolon")), &format!("Basic {}", b64("u:")), "Digest x", "Bearer"]
        {
            assert!(token(&with(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn labels_are_versions_or_the_default() {
        assert_eq!(parse_label(None).unwrap(), SpringLabel::Resolved);
        assert_eq!(parse_label(Some("main")).unwrap(), SpringLabel::Resolved);
        assert_eq!(parse_label(Some("master")).unwrap(), SpringLabel::Resolved);
        assert!(matches!(parse_label(Some("3")).unwrap(), SpringLabel::Version(v) if v.get() == 3));
        assert!(parse_label(Some("0")).is_err());
        assert!(parse_label(Some("feature-x")).is_err());
    }
}
