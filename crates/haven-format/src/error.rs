use thiserror::Error;

/// Everything that can be wrong with bytes handed to a decoder.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FormatError {
    #[error("truncated: needed {needed} more bytes while reading {what}")]
    Truncated { what: &'static str, needed: usize },
    #[error("bad magic in {what}: this is not a Haven object (or it was overwritten)")]
    BadMagic { what: &'static str },
    #[error(
        "unsupported format version {found} (this Haven reads up to {supported}): upgrade Haven"
    )]
    UnsupportedVersion { found: u16, supported: u16 },
    #[error("checksum mismatch in {what}: stored {stored:08x}, computed {computed:08x}")]
    Checksum {
        what: String,
        stored: u32,
        computed: u32,
    },
    #[error("object digest mismatch: the content was modified after it was written")]
    Digest,
    #[error("invalid {what}: {detail}")]
    Invalid { what: &'static str, detail: String },
    #[error("decompression failed: {0}")]
    Decompress(String),
    #[error("the repository is encrypted: give its key (--key-file or HAVEN_KEY)")]
    KeyRequired,
    #[error("wrong key: this data was encrypted with key {expected}, the key given is {given}")]
    WrongKey { expected: String, given: String },
    #[error("authentication failed decrypting {what}: the ciphertext was tampered with")]
    Tampered { what: String },
}

impl FormatError {
    /// An `Invalid` error, for callers outside the crate that check the format's rules.
    pub fn invalid_public(what: &'static str, detail: impl Into<String>) -> Self {
        Self::invalid(what, detail)
    }

    pub(crate) fn invalid(what: &'static str, detail: impl Into<String>) -> Self {
        FormatError::Invalid {
            what,
            detail: detail.into(),
        }
    }
}
