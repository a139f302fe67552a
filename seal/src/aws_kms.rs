//! AWS KMS as a key provider (docs/encryption.md, "Key providers").
use crate::keyring::b64;
use crate::provider::{DataKey, KeyError, KeyProvider};
use base64::Engine;
use futures::future::BoxFuture;

/// AWS KMS as a key provider, over its JSON protocol (`X-Amz-Target: TrentService.…`)
/// signed with SigV4 on the workspace's `hmac`/`sha2` (no AWS SDK: it brings aws-lc-sys).
/// Data keys come from `GenerateDataKey`, unwrap with `Decrypt`, rewrap with `ReEncrypt`;
/// KMS keeps the key versions itself (`key_version` is 0). Every data key is bound to its
/// key id by the encryption context `{"imprint-key": <key id>}`. A KMS that cannot be
/// reached or answers 5xx is `KeyError::Unavailable` (publishing answers 503).
pub struct AwsKms {
    endpoint: url::Url,
    region: String,
    access_key_id: String,
    secret_access_key: String,
    session_token: Option<String>,
    http: reqwest::Client,
}

impl AwsKms {
    /// `endpoint`: `None` for `https://kms.<region>.amazonaws.com/`.
    pub fn new(
        endpoint: Option<&str>,
        region: &str,
        access_key_id: &str,
        secret_access_key: &str,
        session_token: Option<&str>,
    ) -> Result<Self, String> {
        let endpoint = endpoint.map(str::to_owned).unwrap_or_else(|| format!("https://kms.{region}.amazonaws.com/"));
        let endpoint = url::Url::parse(&endpoint).map_err(|e| format!("KMS endpoint {endpoint:?}: {e}"))?;
        if endpoint.host_str().is_none() {
            return Err(format!("KMS endpoint {endpoint} has no host"));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(3))
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            endpoint,
            region: region.to_owned(),
            access_key_id: access_key_id.to_owned(),
            secret_access_key: secret_access_key.to_owned(),
            session_token: session_token.map(str::to_owned),
            http,
        })
    }

    /// One signed KMS call: the action's JSON answer, or the error it maps to.
    pub async fn call(&self, action: &str, body: serde_json::Value) -> Result<serde_json::Value, KeyError> {
        let body = serde_json::to_vec(&body).map_err(|e| KeyError::Refused(e.to_string()))?;
        let now = chrono::Utc::now();
        let headers = sigv4::sign(
            &sigv4::Request {
                host: &host_of(&self.endpoint),
                path: self.endpoint.path(),
                target: &format!("TrentService.{action}"),
                body: &body,
                session_token: self.session_token.as_deref(),
            },
            &sigv4::Credentials {
                region: &self.region,
                service: "kms",
                access_key_id: &self.access_key_id,
                secret_access_key: &self.secret_access_key,
            },
            now,
        );
        let mut req = self.http.post(self.endpoint.clone()).body(body);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let resp = req.send().await.map_err(|e| KeyError::Unavailable(format!("AWS KMS {action}: {e}")))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| KeyError::Unavailable(format!("AWS KMS {action}: {e}")))?;
        if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            return Err(KeyError::Unavailable(format!("AWS KMS {action} answered {status}")));
        }
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|_| KeyError::Unavailable(format!("AWS KMS {action} answered {status} with no JSON")))?;
        if !status.is_success() {
            let kind = json.get("__type").and_then(|t| t.as_str()).unwrap_or("");
            let kind = kind.rsplit('#').next().unwrap_or(kind);
            let msg = json.get("message").or(json.get("Message")).and_then(|m| m.as_str()).unwrap_or("");
            let what = format!("AWS KMS {action}: {kind} {msg}");
            return Err(match kind {
                "NotFoundException" | "DisabledException" | "KMSInvalidStateException" => KeyError::UnknownKey(what),
                "KMSInternalException" | "DependencyTimeoutException" | "ThrottlingException" => {
                    KeyError::Unavailable(what)
                }
                _ => KeyError::Refused(what),
            });
        }
        Ok(json)
    }

    fn context(key_id: &str) -> serde_json::Value {
        serde_json::json!({"imprint-key": key_id})
    }
}

fn host_of(u: &url::Url) -> String {
    match u.port() {
        Some(p) => format!("{}:{p}", u.host_str().unwrap_or_default()),
        None => u.host_str().unwrap_or_default().to_owned(),
    }
}

fn b64_field(json: &serde_json::Value, field: &str) -> Result<Vec<u8>, KeyError> {
    json.get(field)
        .and_then(|v| v.as_str())
        .and_then(|s| b64().decode(s).ok())
        .ok_or_else(|| KeyError::Refused(format!("AWS KMS answered without a base64 {field}")))
}

fn key32(v: Vec<u8>) -> Result<[u8; 32], KeyError> {
    v.try_into().map_err(|_| KeyError::Refused("AWS KMS returned a data key that is not 32 bytes".into()))
}

impl KeyProvider for AwsKms {
    fn kind(&self) -> &'static str {
        "aws-kms"
    }

    fn wrap<'a>(&'a self, key_id: &'a str, key: &'a [u8; 32]) -> BoxFuture<'a, Result<(u32, Vec<u8>), KeyError>> {
        Box::pin(async move {
            let body = serde_json::json!({"KeyId": key_id, "Plaintext": b64().encode(key), "EncryptionContext": Self::context(key_id)});
            let r = self.call("Encrypt", body).await?;
            Ok((0, b64_field(&r, "CiphertextBlob")?))
        })
    }

    fn unwrap<'a>(
        &'a self,
        key_id: &'a str,
        _key_version: u32,
        wrapped: &'a [u8],
    ) -> BoxFuture<'a, Result<[u8; 32], KeyError>> {
        Box::pin(async move {
            let body = serde_json::json!({"KeyId": key_id, "CiphertextBlob": b64().encode(wrapped), "EncryptionContext": Self::context(key_id)});
            let r = self.call("Decrypt", body).await?;
            key32(b64_field(&r, "Plaintext")?)
        })
    }

    fn generate<'a>(&'a self, key_id: &'a str) -> BoxFuture<'a, Result<DataKey, KeyError>> {
        Box::pin(async move {
            let body =
                serde_json::json!({"KeyId": key_id, "KeySpec": "AES_256", "EncryptionContext": Self::context(key_id)});
            let r = self.call("GenerateDataKey", body).await?;
            Ok(DataKey {
                key: key32(b64_field(&r, "Plaintext")?)?,
                key_version: 0,
                wrapped: b64_field(&r, "CiphertextBlob")?,
            })
        })
    }

    fn rewrap<'a>(
        &'a self,
        key_id: &'a str,
        _key_version: u32,
        wrapped: &'a [u8],
    ) -> BoxFuture<'a, Result<(u32, Vec<u8>), KeyError>> {
        Box::pin(async move {
            let body = serde_json::json!({
                "CiphertextBlob": b64().encode(wrapped),
                "SourceKeyId": key_id,
                "SourceEncryptionContext": Self::context(key_id),
                "DestinationKeyId": key_id,
                "DestinationEncryptionContext": Self::context(key_id),
            });
            let r = self.call("ReEncrypt", body).await?;
            Ok((0, b64_field(&r, "CiphertextBlob")?))
        })
    }
}

/// AWS Signature Version 4 for one JSON-protocol POST (the headers to send).
mod sigv4 {
    use hmac::{Hmac, Mac};
    use sha2::{Digest, Sha256};

    pub struct Request<'a> {
        pub host: &'a str,
        pub path: &'a str,
        pub target: &'a str,
        pub body: &'a [u8],
        pub session_token: Option<&'a str>,
    }

    pub struct Credentials<'a> {
        pub region: &'a str,
        pub service: &'a str,
        pub access_key_id: &'a str,
        pub secret_access_key: &'a str,
    }

    fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
        let mut m = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key");
        m.update(data);
        m.finalize().into_bytes().to_vec()
    }

    pub fn sign(r: &Request<'_>, c: &Credentials<'_>, now: chrono::DateTime<chrono::Utc>) -> Vec<(String, String)> {
        let amz_date = now.format("%Y%m%dT%H%M%SZ").to_string();
        let date = now.format("%Y%m%d").to_string();
        let payload_hash = hex::encode(Sha256::digest(r.body));
        // Sorted by name, lower case.
        let mut headers: Vec<(String, String)> = vec![
            ("content-type".into(), "application/x-amz-json-1.1".into()),
            ("host".into(), r.host.into()),
            ("x-amz-date".into(), amz_date.clone()),
        ];
        if let Some(t) = r.session_token {
            headers.push(("x-amz-security-token".into(), t.into()));
        }
        headers.push(("x-amz-target".into(), r.target.into()));
        let signed: Vec<&str> = headers.iter().map(|(k, _)| k.as_str()).collect();
        let signed = signed.join(";");
        let canonical_headers: String = headers.iter().map(|(k, v)| format!("{k}:{}\n", v.trim())).collect();
        let path = if r.path.is_empty() { "/" } else { r.path };
        let canonical = format!("POST\n{path}\n\n{canonical_headers}\n{signed}\n{payload_hash}");
        let scope = format!("{date}/{}/{}/aws4_request", c.region, c.service);
        let to_sign = format!("AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}", hex::encode(Sha256::digest(canonical)));
        let k = hmac(format!("AWS4{}", c.secret_access_key).as_bytes(), date.as_bytes());
        let k = hmac(&k, c.region.as_bytes());
        let k = hmac(&k, c.service.as_bytes());
        let k = hmac(&k, b"aws4_request");
        let signature = hex::encode(hmac(&k, to_sign.as_bytes()));
        headers.retain(|(k, _)| k != "host");
        headers.push((
            "authorization".into(),
            format!(
                "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed}, Signature={signature}",
                c.access_key_id
            ),
        ));
        headers
    }

    #[cfg(test)]
    #[test]
    fn matches_the_aws_documented_signing_key_derivation() {
        // AWS's SigV4 documentation example: secret "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        // 20120215, us-east-1, iam → signing key f4780e2d…
        let k = hmac(b"AWS4wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", b"20120215");
        let k = hmac(&k, b"us-east-1");
        let k = hmac(&k, b"iam");
        let k = hmac(&k, b"aws4_request");
        assert_eq!(hex::encode(k), "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d");
    }
}
