use haven_format::FormatError;
use haven_kafka::KafkaError;
use haven_storage::StorageError;
use thiserror::Error;

/// Errors of the engine. Each names the object or the thing at fault.
#[derive(Debug, Error)]
pub enum Error {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error("{key}: {source}")]
    Format {
        key: String,
        #[source]
        source: FormatError,
    },
    #[error("{url} is not a Haven repository (no haven-repo.json): check the URL, or create one with `haven backup`")]
    NotARepository { url: String },
    #[error("{0}")]
    Key(String),
    #[error("another writer appended segment {seq} at the same time; {detail}")]
    Concurrent { seq: u64, detail: String },
    #[error("the repository is damaged: {0}; run `haven verify` for the full report")]
    Damaged(String),
    #[error("invalid input: {0}")]
    Input(String),
    #[error("background task failed: {0}")]
    Task(String),
    /// Something Haven must talk to did not answer (a sink, a server): exit 1.
    #[error("{0}")]
    Unreachable(String),
    /// A plan's step failed: nothing after it ran; re-running continues with it.
    #[error("{action}: step {step} of {total} ({what}) failed: {cause}; nothing after it ran. Fix the cause and run the same command again: it continues with this step")]
    StepFailed {
        action: String,
        step: usize,
        total: usize,
        what: String,
        cause: Box<Error>,
    },
    /// The reader of stdout closed it (`| head`): not a failure.
    #[error("stdout was closed by its reader")]
    OutputClosed,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn format(key: &str, source: FormatError) -> Self {
        Error::Format {
            key: key.to_string(),
            source,
        }
    }

    /// True when the error is the user's input (a bad flag, window or key), not an
    /// operational failure.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            Error::Input(_) | Error::Key(_) | Error::NotARepository { .. }
        )
    }
}
