//! Registry authentication: the `WWW-Authenticate` challenge (RFC 7235 / Docker token auth) and
//! the credentials kubelet hands over in `AuthConfig`.

use base64::Engine;

/// Credentials for one pull, from kubelet's `AuthConfig`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
    /// A refresh token for the registry's OAuth2 token endpoint.
    pub identity_token: String,
    /// A bearer token to send to the registry as is.
    pub registry_token: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never log secrets.
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field(
                "password",
                &(!self.password.is_empty()).then_some("<redacted>"),
            )
            .field(
                "identity_token",
                &(!self.identity_token.is_empty()).then_some("<redacted>"),
            )
            .field(
                "registry_token",
                &(!self.registry_token.is_empty()).then_some("<redacted>"),
            )
            .finish()
    }
}

impl Credentials {
    /// From kubelet's fields: `auth` (base64 `user:password`) fills in username and password
    /// when they are not given separately, as the docker config format does.
    pub fn from_auth_config(
        username: &str,
        password: &str,
        auth: &str,
        identity_token: &str,
        registry_token: &str,
    ) -> Result<Credentials, String> {
        let mut c = Credentials {
            username: username.to_string(),
            password: password.to_string(),
            identity_token: identity_token.to_string(),
            registry_token: registry_token.to_string(),
        };
        if c.username.is_empty() && !auth.is_empty() {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .map_err(|_| "auth is not base64".to_string())?;
            let decoded =
                String::from_utf8(decoded).map_err(|_| "auth is not UTF-8".to_string())?;
            let (u, p) = decoded
                .split_once(':')
                .ok_or_else(|| "auth is not base64 of user:password".to_string())?;
            c.username = u.to_string();
            c.password = p.to_string();
        }
        Ok(c)
    }

    pub fn is_anonymous(&self) -> bool {
        self.username.is_empty() && self.identity_token.is_empty() && self.registry_token.is_empty()
    }

    /// `Basic base64(user:password)`, if there is a username.
    pub fn basic(&self) -> Option<String> {
        (!self.username.is_empty()).then(|| {
            let raw = format!("{}:{}", self.username, self.password);
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(raw)
            )
        })
    }
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

/// Parses the first challenge we understand from a `WWW-Authenticate` header value.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, params) = header
        .split_once(char::is_whitespace)
        .unwrap_or((header, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let params = parse_params(params);
    let get = |k: &str| {
        params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.clone())
    };
    Some(Challenge::Bearer {
        realm: get("realm")?,
        service: get("service"),
        scope: get("scope"),
    })
}

/// `k="v", k2=v2` (quoted strings may hold commas and escaped quotes).
fn parse_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while matches!(chars.peek(), Some(c) if c.is_whitespace() || *c == ',') {
            chars.next();
        }
        let mut name = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() || c == ',' {
                break;
            }
            name.push(c);
            chars.next();
        }
        if name.is_empty() {
            return out;
        }
        while matches!(chars.peek(), Some(c) if c.is_whitespace()) {
            chars.next();
        }
        if chars.peek() != Some(&'=') {
            continue;
        }
        chars.next();
        while matches!(chars.peek(), Some(c) if c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            value.push(n)
                        }
                    }
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' || c.is_whitespace() {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        out.push((name, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenge_with_quoted_commas() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull,push""#,
        );
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".to_string(),
                service: Some("registry.docker.io".to_string()),
                scope: Some("repository:library/busybox:pull,push".to_string()),
            })
        );
    }

    #[test]
    fn basic_and_unknown_challenges() {
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("Negotiate"), None);
        assert_eq!(
            parse_challenge("Bearer service=x"),
            None,
            "realm is required"
        );
    }

    #[test]
    fn auth_field_fills_username_and_password() {
        let c = Credentials::from_auth_config("", "", "dXNlcjpwYTpzcw==", "", "").unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("user", "pa:ss")
        );
        assert!(Credentials::from_auth_config("", "", "!!", "", "").is_err());
        let explicit = Credentials::from_auth_config("a", "b", "dXNlcjpwYTpzcw==", "", "").unwrap();
        assert_eq!(explicit.username, "a");
    }

    #[test]
    fn credentials_never_print_secrets() {
        let c = Credentials::from_auth_config("u", "hunter2", "", "idtok", "regtok").unwrap();
        let printed = format!("{c:?}");
        assert!(
            !printed.contains("hunter2")
                && !printed.contains("idtok")
                && !printed.contains("regtok")
        );
    }
}
