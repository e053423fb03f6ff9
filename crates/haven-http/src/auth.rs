//! API tokens: who may read and who may change state.
//!
//! A token file (or `HAVEN_API_TOKENS`) holds one token per line, `NAME ROLE TOKEN`, with
//! ROLE `viewer` (reads) or `operator` (reads and changes); `#` starts a comment. Only the
//! SHA-256 of each token is kept in memory; a presented token is hashed and compared with
//! every known hash in constant time (no early exit), and tokens are never logged: a
//! request is known by the token's NAME.
//!
//! Without any token, reads are open (the server then listens on loopback only, see
//! [`crate::ServeOptions::check`]) and every change is refused.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Operator,
}

/// Who made a request.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Caller {
    /// The token's name; `anonymous` when no tokens are configured.
    pub name: String,
    pub role: Role,
}

struct Token {
    name: String,
    role: Role,
    sha256: [u8; 32],
}

#[derive(Default)]
pub struct Tokens {
    tokens: Vec<Token>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("{source_name} line {line}: expected `NAME ROLE TOKEN` (ROLE viewer or operator), got {fields} field(s)")]
    Fields {
        source_name: String,
        line: usize,
        fields: usize,
    },
    #[error("{source_name} line {line}: role {role:?} is not viewer or operator")]
    Role {
        source_name: String,
        line: usize,
        role: String,
    },
    #[error("{source_name} line {line}: the token of {name} is shorter than 16 characters; generate one with `head -c 24 /dev/urandom | base64`")]
    Short {
        source_name: String,
        line: usize,
        name: String,
    },
    #[error("{source_name}: the name {name} is used twice")]
    Duplicate { source_name: String, name: String },
}

/// The outcome of checking a request's credentials.
#[derive(Debug, PartialEq, Eq)]
pub enum Check {
    Allowed(Caller),
    /// No token, or one nobody knows (401).
    Unauthenticated(&'static str),
    /// A known token without the role (403).
    Forbidden(Caller),
}

impl Tokens {
    /// Parses the token list `text`; `source_name` names it in errors (a file or the
    /// environment variable).
    pub fn parse(text: &str, source_name: &str) -> Result<Tokens, TokenError> {
        let mut tokens: Vec<Token> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            let at = || (source_name.to_string(), i + 1);
            let [name, role, token] = fields[..] else {
                let (source_name, line) = at();
                return Err(TokenError::Fields {
                    source_name,
                    line,
                    fields: fields.len(),
                });
            };
            let role = match role {
                "viewer" => Role::Viewer,
                "operator" => Role::Operator,
                other => {
                    let (source_name, line) = at();
                    return Err(TokenError::Role {
                        source_name,
                        line,
                        role: other.into(),
                    });
                }
            };
            if token.len() < 16 {
                let (source_name, line) = at();
                return Err(TokenError::Short {
                    source_name,
                    line,
                    name: name.into(),
                });
            }
            if tokens.iter().any(|t| t.name == name) {
                return Err(TokenError::Duplicate {
                    source_name: source_name.into(),
                    name: name.into(),
                });
            }
            tokens.push(Token {
                name: name.into(),
                role,
                sha256: Sha256::digest(token.as_bytes()).into(),
            });
        }
        Ok(Tokens { tokens })
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Checks the `Authorization` header's value (`Bearer TOKEN`) for `needed`.
    pub fn check(&self, authorization: Option<&str>, needed: Role) -> Check {
        if self.tokens.is_empty() {
            let anonymous = Caller {
                name: "anonymous".into(),
                role: Role::Viewer,
            };
            return if needed == Role::Viewer {
                Check::Allowed(anonymous)
            } else {
                Check::Forbidden(anonymous)
            };
        }
        let Some(presented) = authorization
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
        else {
            return Check::Unauthenticated("send the header `Authorization: Bearer TOKEN`");
        };
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        // Compare with every token, without stopping at the first match.
        let mut found: Option<&Token> = None;
        for t in &self.tokens {
            if bool::from(t.sha256.ct_eq(&digest)) {
                found = Some(t);
            }
        }
        match found {
            None => Check::Unauthenticated("the token is not known"),
            Some(t) => {
                let caller = Caller {
                    name: t.name.clone(),
                    role: t.role,
                };
                if t.role >= needed {
                    Check::Allowed(caller)
                } else {
                    Check::Forbidden(caller)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "# who\nalice operator aaaaaaaaaaaaaaaaaaaa\nbob viewer bbbbbbbbbbbbbbbbbbbb # read only\n\n";

    #[test]
    fn roles_are_checked() {
        let t = Tokens::parse(FILE, "tokens").unwrap();
        assert_eq!(t.len(), 2);
        let bearer = |s: &str| format!("Bearer {s}");
        assert!(matches!(
            t.check(Some(&bearer("aaaaaaaaaaaaaaaaaaaa")), Role::Operator),
            Check::Allowed(Caller { ref name, role: Role::Operator }) if name == "alice"
        ));
        assert!(matches!(
            t.check(Some(&bearer("bbbbbbbbbbbbbbbbbbbb")), Role::Viewer),
            Check::Allowed(_)
        ));
        assert!(matches!(
            t.check(Some(&bearer("bbbbbbbbbbbbbbbbbbbb")), Role::Operator),
            Check::Forbidden(Caller { ref name, .. }) if name == "bob"
        ));
        assert!(matches!(
            t.check(Some(&bearer("cccccccccccccccccccc")), Role::Viewer),
            Check::Unauthenticated(_)
        ));
        assert!(matches!(
            t.check(None, Role::Viewer),
            Check::Unauthenticated(_)
        ));
        assert!(matches!(
            t.check(Some("aaaaaaaaaaaaaaaaaaaa"), Role::Viewer),
            Check::Unauthenticated(_)
        ));
    }

    #[test]
    fn no_tokens_reads_only() {
        let t = Tokens::default();
        assert!(matches!(t.check(None, Role::Viewer), Check::Allowed(_)));
        assert!(matches!(t.check(None, Role::Operator), Check::Forbidden(_)));
    }

    #[test]
    fn bad_files_name_the_line() {
        let e = |s| Tokens::parse(s, "f").err().unwrap().to_string();
        assert!(e("a viewer").contains("line 1"));
        assert!(e("\na admin 0123456789abcdefg").contains("line 2: role \"admin\""));
        assert!(e("a viewer short").contains("shorter than 16"));
        assert!(e("a viewer 0123456789abcdefg\na operator 0123456789abcdefgh").contains("twice"));
        // The token itself never appears in an error.
        assert!(!e("a viewer shorttoken").contains("shorttoken"));
    }
}
