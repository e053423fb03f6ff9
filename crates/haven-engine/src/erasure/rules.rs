//! Which records belong to a data subject, and who: `erasure_subjects` of a repository
//! section maps a topic pattern to where the subject id is (the record key, a header, or a
//! JSON pointer into the value), with `subject_hash_key`, the secret the id is hashed with.

use regex::Regex;

use crate::config::RepositorySection;
use crate::{Error, Result};

/// Where a topic's records carry their subject id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Spec {
    /// The record key.
    Key,
    /// The first header of this name.
    Header(String),
    /// A JSON pointer (RFC 6901) into the value; a string or a number.
    Json(String),
}

impl Spec {
    pub fn parse(text: &str) -> std::result::Result<Spec, String> {
        if text == "key" {
            return Ok(Spec::Key);
        }
        if let Some(h) = text.strip_prefix("header:").filter(|h| !h.is_empty()) {
            return Ok(Spec::Header(h.to_string()));
        }
        if let Some(p) = text.strip_prefix("json:") {
            if p.starts_with('/') {
                return Ok(Spec::Json(p.to_string()));
            }
        }
        Err(format!(
            "{text:?} is not a subject: give \"key\", \"header:NAME\" or \"json:/POINTER\""
        ))
    }
}

/// A repository's erasure rules and hashing secret.
#[derive(Clone)]
pub struct Rules {
    rules: Vec<(Regex, Spec)>,
    secret: Vec<u8>,
}

impl std::fmt::Debug for Rules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Rules({} topic patterns)", self.rules.len())
    }
}

/// Checks a section's erasure settings without reading the secret (for `config check`).
pub fn check(section: &RepositorySection) -> std::result::Result<(), String> {
    for (pattern, spec) in &section.erasure_subjects {
        Regex::new(&format!("^(?:{pattern})$")).map_err(|e| {
            format!("erasure_subjects: {pattern:?} is not a regular expression: {e}")
        })?;
        Spec::parse(spec).map_err(|e| format!("erasure_subjects.{pattern:?}: {e}"))?;
    }
    match (
        &section.subject_hash_key,
        section.erasure_subjects.is_empty(),
    ) {
        (None, false) => Err(
            "erasure_subjects needs subject_hash_key = \"file:/path\" or \"env:VARIABLE\" (a \
             secret of at least 16 bytes: subject ids are stored only as keyed hashes)"
                .into(),
        ),
        (Some(r), _) => {
            crate::secrets::check_reference(r).map_err(|e| format!("subject_hash_key: {e}"))
        }
        _ => Ok(()),
    }
}

impl Rules {
    /// The section's rules (None when it has none), its secret read.
    pub fn of(section: &RepositorySection) -> Result<Option<Rules>> {
        check(section).map_err(Error::Input)?;
        let Some(r) = &section.subject_hash_key else {
            return Ok(None);
        };
        let secret = crate::secrets::resolve("subject_hash_key", r)?.into_bytes();
        if secret.len() < 16 {
            return Err(Error::Input(
                "subject_hash_key: the secret is shorter than 16 bytes (use 32 random bytes \
                 in hex, e.g. from `haven key new`)"
                    .into(),
            ));
        }
        let mut rules = Vec::new();
        for (pattern, spec) in &section.erasure_subjects {
            let re = Regex::new(&format!("^(?:{pattern})$"))
                .map_err(|e| Error::Input(format!("erasure_subjects: {pattern:?}: {e}")))?;
            rules.push((re, Spec::parse(spec).map_err(Error::Input)?));
        }
        Ok(Some(Rules { rules, secret }))
    }

    /// The keyed hash of a subject id: the only form Haven stores it in.
    pub fn hash(&self, subject: &[u8]) -> [u8; 32] {
        haven_format::subject_hash(&self.secret, subject)
    }

    /// The subject id of a record of `topic` (None: the record has no subject, or the
    /// topic no rule).
    pub fn subject_of(&self, topic: &str, r: &haven_format::RecordRef<'_>) -> Option<Vec<u8>> {
        let spec = self
            .rules
            .iter()
            .find(|(re, _)| re.is_match(topic))
            .map(|(_, s)| s)?;
        let id = match spec {
            Spec::Key => r.key.map(<[u8]>::to_vec),
            Spec::Header(name) => r
                .headers
                .iter()
                .find(|(n, _)| n == name)
                .and_then(|(_, v)| v.map(<[u8]>::to_vec)),
            Spec::Json(pointer) => json_at(r.value?, pointer),
        };
        id.filter(|i| !i.is_empty())
    }
}

/// The string or number at a JSON pointer (RFC 6901) of `doc`, found without building the
/// document: what is off the path is skipped.
fn json_at(doc: &[u8], pointer: &str) -> Option<Vec<u8>> {
    use serde::de::DeserializeSeed as _;
    let segs: Vec<String> = pointer
        .split('/')
        .skip(1)
        .map(|s| s.replace("~1", "/").replace("~0", "~"))
        .collect();
    let mut de = serde_json::Deserializer::from_slice(doc);
    let found = Path(&segs).deserialize(&mut de).ok()?;
    de.end().ok()?;
    found
}

/// Deserializes the rest of a pointer's path.
struct Path<'a>(&'a [String]);

impl<'de> serde::de::DeserializeSeed<'de> for Path<'_> {
    type Value = Option<Vec<u8>>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Path<'_> {
    type Value = Option<Vec<u8>>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(self.0.is_empty().then(|| v.as_bytes().to_vec()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(self.0.is_empty().then(|| v.to_string().into_bytes()))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(self.0.is_empty().then(|| v.to_string().into_bytes()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(self
            .0
            .is_empty()
            .then(|| serde_json::Number::from_f64(v).map(|n| n.to_string().into_bytes()))
            .flatten())
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
        let mut out = None;
        while let Some(k) = m.next_key::<String>()? {
            match self.0.split_first() {
                Some((first, rest)) if out.is_none() && k == *first => {
                    out = m.next_value_seed(Path(rest))?;
                }
                _ => {
                    m.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(out)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut s: A) -> Result<Self::Value, A::Error> {
        let want = self
            .0
            .split_first()
            .and_then(|(first, rest)| first.parse::<usize>().ok().map(|i| (i, rest)));
        let mut out = None;
        let mut i = 0usize;
        loop {
            match want {
                Some((at, rest)) if at == i => match s.next_element_seed(Path(rest))? {
                    Some(v) => out = v,
                    None => break,
                },
                _ => {
                    if s.next_element::<serde::de::IgnoredAny>()?.is_none() {
                        break;
                    }
                }
            }
            i += 1;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(rules: &[(&str, &str)], secret: Option<&str>) -> RepositorySection {
        let mut s: RepositorySection =
            toml::from_str("url = \"/r\"").expect("a minimal section parses");
        s.erasure_subjects = rules
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        s.subject_hash_key = secret.map(str::to_string);
        s
    }

    fn rec<'a>(
        key: &'a [u8],
        value: &'a [u8],
        headers: Vec<(&'a str, Option<&'a [u8]>)>,
    ) -> haven_format::RecordRef<'a> {
        haven_format::RecordRef {
            offset: 0,
            timestamp: 0,
            timestamp_type: haven_format::TimestampType::CreateTime,
            key: Some(key),
            value: Some(value),
            headers,
            sealed: None,
        }
    }

    #[test]
    fn subjects_come_from_key_header_or_json() {
        std::env::set_var("HAVEN_TEST_SUBJECT_SECRET", "0123456789abcdef0123");
        let s = section(
            &[
                ("kyc", "key"),
                ("audit", "header:customer"),
                ("pay\\..*", "json:/customer/id"),
            ],
            Some("env:HAVEN_TEST_SUBJECT_SECRET"),
        );
        let r = Rules::of(&s).unwrap().unwrap();
        let h: Vec<(&str, Option<&[u8]>)> = vec![("customer", Some(b"c-7"))];
        assert_eq!(
            r.subject_of("kyc", &rec(b"c-1", b"{}", vec![])),
            Some(b"c-1".to_vec())
        );
        assert_eq!(
            r.subject_of("audit", &rec(b"k", b"{}", h)),
            Some(b"c-7".to_vec())
        );
        let v = br#"{"customer": {"id": 42}}"#;
        assert_eq!(
            r.subject_of("pay.eu", &rec(b"k", v, vec![])),
            Some(b"42".to_vec())
        );
        assert_eq!(
            r.subject_of("pay.eu", &rec(b"k", b"not json", vec![])),
            None
        );
        assert_eq!(r.subject_of("other", &rec(b"k", v, vec![])), None);
        assert_eq!(r.hash(b"42"), r.hash(b"42"));
        assert_ne!(r.hash(b"42"), r.hash(b"43"));
    }

    #[test]
    fn json_pointers_find_strings_and_numbers_only_on_their_path() {
        let doc = br#"{"a": {"b": [10, {"c": "x", "d/e": 2.5, "f~g": -3}], "z": true}, "n": null}"#;
        assert_eq!(json_at(doc, "/a/b/0"), Some(b"10".to_vec()));
        assert_eq!(json_at(doc, "/a/b/1/c"), Some(b"x".to_vec()));
        assert_eq!(json_at(doc, "/a/b/1/d~1e"), Some(b"2.5".to_vec()));
        assert_eq!(json_at(doc, "/a/b/1/f~0g"), Some(b"-3".to_vec()));
        for missing in ["/a/z", "/n", "/a/b", "/a/b/2", "/q", "/a/b/x"] {
            assert_eq!(json_at(doc, missing), None, "{missing}");
        }
        // Agrees with serde_json's own pointer on what it finds.
        let v: serde_json::Value = serde_json::from_slice(doc).unwrap();
        assert_eq!(v.pointer("/a/b/1/c").unwrap(), "x");
        assert_eq!(json_at(b"{\"a\": 1} trailing", "/a"), None);
        assert_eq!(json_at(b"not json", "/a"), None);
    }

    #[test]
    fn bad_rules_are_refused() {
        assert!(check(&section(&[("a", "key")], None))
            .unwrap_err()
            .contains("subject_hash_key"));
        assert!(check(&section(&[("a(", "key")], Some("env:X"))).is_err());
        assert!(check(&section(&[("a", "value")], Some("env:X")))
            .unwrap_err()
            .contains("header:NAME"));
        assert!(check(&section(&[("a", "key")], Some("plain-secret"))).is_err());
        assert!(check(&section(&[], None)).is_ok());
    }
}
