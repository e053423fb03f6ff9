//! A Haven repository on object storage (FORMAT.md): a descriptor and an append-only,
//! hash-chained log of segments.

pub mod keys;
pub mod pruned;
mod state;
pub mod sync;

use bytes::Bytes;
use haven_format::{Digest, SegmentBuilder, SegmentIndex, SegmentTrailer, TRAILER_LEN};
use haven_storage::{CreateOnly, ObjectInfo, StorageError, Store};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};
pub use keys::{KeyLog, KeyRing};
pub use state::{
    ChunkRef, Damage, MissingRange, PartitionKey, PartitionState, RepoState, Salvage, TopicState,
};

pub const DESCRIPTOR_KEY: &str = "haven-repo.json";
pub const LOG_PREFIX: &str = "log/";

/// The segment key of log position `seq`.
pub fn segment_key(seq: u64) -> String {
    format!("{LOG_PREFIX}{seq:020}.seg")
}

/// Parses a segment key back to its position. Only the exact name Haven writes
/// (20 digits) is a segment: `log/2.seg` or `log/0002.seg` is a stray object, never a
/// second copy of segment 2.
pub fn segment_seq(key: &str) -> Option<u64> {
    let digits = key.strip_prefix(LOG_PREFIX)?.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// `haven-repo.json`: written once when the repository is created.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Descriptor {
    pub format: String,
    pub version: u16,
    pub id: String,
    pub created_at: String,
    /// Id of the master key new segments are encrypted with; None = not encrypted.
    pub key_id: Option<String>,
}

/// An open repository.
#[derive(Debug, Clone)]
pub struct Repository {
    store: Store,
    keys: KeyRing,
    /// The rotations under `keys/` (empty for an unencrypted repository); writers reload
    /// it before each segment, so a running backup seals with a KEK rotated in meanwhile.
    key_log: std::sync::Arc<std::sync::RwLock<KeyLog>>,
    pub descriptor: Descriptor,
    /// Erasure rules (for writers, from haven.toml) and the subject keys seen.
    erasure: crate::erasure::Erasure,
    /// Recently read chunk bodies (decompressed), so that a restore's plan and run fetch
    /// each chunk once.
    cache: std::sync::Arc<std::sync::Mutex<ChunkCache>>,
}

/// (segment key, chunk ordinal)
type ChunkId = (String, u32);

/// A small LRU of decompressed chunk bodies, bounded in bytes.
#[derive(Debug, Default)]
struct ChunkCache {
    entries: std::collections::VecDeque<(ChunkId, std::sync::Arc<Vec<u8>>)>,
    bytes: usize,
}

pub(crate) const CHUNK_CACHE_BYTES: usize = 32 * 1024 * 1024;

impl ChunkCache {
    fn get(&mut self, k: &ChunkId) -> Option<std::sync::Arc<Vec<u8>>> {
        let i = self.entries.iter().position(|(key, _)| key == k)?;
        let e = self.entries.remove(i)?;
        let v = e.1.clone();
        self.entries.push_back(e);
        Some(v)
    }

    fn put(&mut self, k: ChunkId, v: std::sync::Arc<Vec<u8>>) {
        self.bytes += v.len();
        self.entries.push_back((k, v));
        while self.bytes > CHUNK_CACHE_BYTES {
            match self.entries.pop_front() {
                Some((_, old)) => self.bytes -= old.len(),
                None => break,
            }
        }
    }
}

impl Repository {
    /// Opens an existing repository.
    pub async fn open(store: Store, keys: KeyRing) -> Result<Repository> {
        let raw = match store.get(DESCRIPTOR_KEY).await {
            Ok(b) => b,
            Err(StorageError::NotFound { .. }) => {
                return Err(Error::NotARepository {
                    url: store.url().to_string(),
                })
            }
            Err(e) => return Err(e.into()),
        };
        let descriptor: Descriptor = serde_json::from_slice(&raw).map_err(|e| {
            Error::Damaged(format!(
                "{DESCRIPTOR_KEY} in {} is not a valid descriptor ({e})",
                store.url()
            ))
        })?;
        if descriptor.format != "haven-repository"
            || descriptor.version > haven_format::FORMAT_VERSION
        {
            return Err(Error::Input(format!(
                "{DESCRIPTOR_KEY}: format {:?} version {} is not one this Haven reads (upgrade Haven)",
                descriptor.format, descriptor.version
            )));
        }
        let key_log = match &descriptor.key_id {
            Some(_) => KeyLog::load(&store).await?,
            None => KeyLog::default(),
        };
        match (&descriptor.key_id, keys.is_empty()) {
            (Some(created_with), true) => {
                return Err(Error::Key(format!(
                    "the repository {} is encrypted (current key {}): give its key with \
                     --key-file FILE or HAVEN_KEY",
                    store.url(),
                    key_log.current(created_with)
                )))
            }
            (Some(created_with), false) => {
                let known = key_log.known(created_with);
                if !known.iter().any(|id| keys.get(id).is_some()) {
                    return Err(Error::Key(format!(
                        "wrong key for {}: the repository uses key {} (current: {}), the key \
                         given is {}",
                        store.url(),
                        known.join(", "),
                        key_log.current(created_with),
                        keys.ids().join(", ")
                    )));
                }
            }
            (None, false) => {
                return Err(Error::Key(format!(
                    "the repository {} is not encrypted (key id: none), but key {} was given \
                     (--key-file or HAVEN_KEY): a repository keeps the key it was created with; \
                     drop the key to use this one, or back up into a new repository to encrypt",
                    store.url(),
                    keys.ids().join(", ")
                )))
            }
            (None, true) => {}
        }
        Ok(Repository {
            cache: Default::default(),
            store,
            keys,
            key_log: std::sync::Arc::new(std::sync::RwLock::new(key_log)),
            descriptor,
            erasure: Default::default(),
        })
    }

    /// Opens the repository for a writer, creating it first if it does not exist
    /// (encrypted when a key is given: the first key of the ring). A writer must hold the
    /// current key.
    pub async fn open_or_create(store: Store, keys: KeyRing) -> Result<Repository> {
        if store.exists(DESCRIPTOR_KEY).await? {
            let repo = Self::open(store, keys).await?;
            repo.ensure_writable()?;
            return Ok(repo);
        }
        let descriptor = Descriptor {
            format: "haven-repository".into(),
            version: haven_format::FORMAT_VERSION,
            id: format!("{:032x}", rand::random::<u128>()),
            created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            key_id: keys.ids().first().cloned(),
        };
        let body =
            serde_json::to_vec_pretty(&descriptor).map_err(|e| Error::Task(e.to_string()))?;
        match store.put_new(DESCRIPTOR_KEY, Bytes::from(body)).await {
            Ok(()) | Err(StorageError::AlreadyExists { .. }) => {
                let repo = Self::open(store, keys).await?;
                repo.ensure_writable()?;
                Ok(repo)
            }
            Err(e) => Err(e.into()),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Seals the records of subjects as `rules` say (a writer's repository section).
    pub fn with_erasure_rules(mut self, rules: Option<crate::erasure::rules::Rules>) -> Self {
        self.erasure.rules = rules.map(std::sync::Arc::new);
        self
    }

    pub fn erasure(&self) -> &crate::erasure::Erasure {
        &self.erasure
    }

    /// Seals a record of `topic` for its subject when a rule says so (None: stored as is).
    pub async fn seal(
        &self,
        topic: &str,
        r: &haven_format::RecordRef<'_>,
    ) -> Result<Option<crate::erasure::Sealed>> {
        match self.erasure.rules.as_deref() {
            // One rule match per record: `seal` finds the topic's rule, or none.
            Some(rules) => {
                crate::erasure::seal(rules, &self.erasure.keys, &self.store, topic, r).await
            }
            None => Ok(None),
        }
    }

    /// The subject keys the sealed records among `records` need (none fetched when none
    /// is sealed); open each record with [`crate::erasure::open`].
    pub async fn subject_keys_for(
        &self,
        records: &[haven_format::RecordRef<'_>],
    ) -> Result<std::collections::HashMap<[u8; 32], Option<haven_format::SubjectKey>>> {
        crate::erasure::keys_for(&self.erasure.keys, &self.store, records).await
    }

    /// The keys this process was given.
    pub fn keys(&self) -> &KeyRing {
        &self.keys
    }

    /// The repository's key rotations as last read.
    pub fn key_log(&self) -> KeyLog {
        self.key_log.read().map(|l| l.clone()).unwrap_or_default()
    }

    /// The KEK new segments are sealed with: the current one, or (when a rotation happened
    /// while this writer ran without the new key) the newest key it holds, with a warning;
    /// `haven key status` then lists those segments and a re-run of the rotation covers
    /// them. None for an unencrypted repository.
    pub fn write_key(&self) -> Option<haven_format::MasterKey> {
        let created_with = self.descriptor.key_id.as_deref()?;
        let log = self.key_log.read().ok()?;
        let current = log.current(created_with);
        if let Some(k) = self.keys.get(&current) {
            return Some(k.clone());
        }
        let fallback = log
            .known(created_with)
            .iter()
            .rev()
            .find_map(|id| self.keys.get(id))
            .cloned();
        if let Some(k) = &fallback {
            tracing::warn!(
                current = %current, sealing_with = %k.id(),
                "the repository's current key is not in this writer's key file: new segments \
                 are sealed with an older key; add the current key and run `haven key rotate` again"
            );
        }
        fallback
    }

    /// Refuses a writer that does not hold the current KEK.
    pub fn ensure_writable(&self) -> Result<()> {
        let Some(created_with) = self.descriptor.key_id.as_deref() else {
            return Ok(());
        };
        let current = self
            .key_log
            .read()
            .map(|l| l.current(created_with))
            .unwrap_or_else(|_| created_with.to_string());
        if self.keys.get(&current).is_none() {
            return Err(Error::Key(format!(
                "{}: the repository's current key is {current} (see `haven key status`); this \
                 writer holds {}: put the current key in its key file (old keys may stay there \
                 for reading)",
                self.store.url(),
                self.keys.ids().join(", ")
            )));
        }
        Ok(())
    }

    /// Re-reads `keys/` (after a rotation, or to notice one made by another process).
    pub async fn reload_keys(&self) -> Result<()> {
        if self.descriptor.key_id.is_none() {
            return Ok(());
        }
        let fresh = KeyLog::load(&self.store).await?;
        if let Ok(mut l) = self.key_log.write() {
            *l = fresh;
        }
        Ok(())
    }

    /// Notices a rotation made since the key log was read (one listing): a writer calls it
    /// before each segment.
    pub async fn refresh_keys(&self) -> Result<()> {
        if self.descriptor.key_id.is_none() {
            return Ok(());
        }
        let n = self.store.list(keys::KEYS_PREFIX).await?.len();
        let known = self.key_log.read().map(|l| l.len()).unwrap_or(0);
        if n != known {
            self.reload_keys().await?;
        }
        Ok(())
    }

    /// Opens segment `seq`'s data key (its own wrapping or a rotation's).
    pub fn data_key(
        &self,
        seq: u64,
        own: &haven_format::WrappedKey,
        segment: &str,
    ) -> Result<[u8; 32]> {
        let log = self
            .key_log
            .read()
            .map_err(|_| Error::Task("key log lock poisoned".into()))?;
        keys::data_key(&self.keys, &log, seq, own, segment)
    }

    /// Checks that this process can open every segment `state` refers to, before anything
    /// is read (a reader never hands out part of a selection and then stops on a key).
    pub fn ensure_readable(&self, state: &RepoState) -> Result<()> {
        if self.descriptor.key_id.is_none() {
            return Ok(());
        }
        let log = self
            .key_log
            .read()
            .map_err(|_| Error::Task("key log lock poisoned".into()))?;
        keys::ensure_readable(&self.keys, &log, state)
    }

    /// Measures what the store guarantees about create-only writes.
    pub async fn probe(&self) -> Result<CreateOnly> {
        let r = self.store.probe_create_only().await?;
        self.erasure.keys.set_create_only(r == CreateOnly::Enforced);
        Ok(r)
    }

    /// Measures whether the store keeps objects from deletion (S3 Object Lock, WORM); None
    /// when it could not tell (read-only credentials: the probe writes an object).
    pub async fn probe_retention(&self) -> Option<bool> {
        match self.store.probe_retention().await {
            Ok(r) => Some(r == haven_storage::Retention::Enforced),
            Err(e) => {
                tracing::debug!(error = %e, "retention probe failed");
                None
            }
        }
    }

    /// The segments of the log, in order.
    pub async fn segments(&self) -> Result<Vec<ObjectInfo>> {
        let mut v: Vec<ObjectInfo> = self
            .store
            .list(LOG_PREFIX)
            .await?
            .into_iter()
            .filter(|o| segment_seq(&o.key).is_some())
            .collect();
        v.sort_by_key(|o| segment_seq(&o.key));
        Ok(v)
    }

    /// Reads a segment's trailer and index with two ranged reads.
    pub async fn read_index(&self, obj: &ObjectInfo) -> Result<(SegmentIndex, Digest)> {
        if obj.size < (haven_format::HEADER_LEN + TRAILER_LEN) as u64 {
            return Err(Error::format(
                &obj.key,
                haven_format::FormatError::Truncated {
                    what: "segment",
                    needed: haven_format::HEADER_LEN + TRAILER_LEN - obj.size as usize,
                },
            ));
        }
        let t = self
            .store
            .get_range(&obj.key, obj.size - TRAILER_LEN as u64..obj.size)
            .await?;
        let trailer = SegmentTrailer::decode(&t).map_err(|e| Error::format(&obj.key, e))?;
        let range = trailer
            .index_range(obj.size)
            .map_err(|e| Error::format(&obj.key, e))?;
        let ix = self.store.get_range(&obj.key, range).await?;
        let index = SegmentIndex::decode(&ix, &trailer).map_err(|e| Error::format(&obj.key, e))?;
        if segment_seq(&obj.key) != Some(index.seq) {
            return Err(Error::format(
                &obj.key,
                haven_format::FormatError::invalid_public(
                    "segment",
                    format!("holds sequence {} under another name", index.seq),
                ),
            ));
        }
        Ok((index, trailer.digest))
    }

    /// Builds the catalog of the whole log.
    pub async fn load_state(&self) -> Result<RepoState> {
        let mut st = RepoState::default();
        let pruned = pruned::load(self).await?;
        for place in pruned::places(self.segments().await?, &pruned) {
            match place {
                pruned::Place::Stored(obj) => {
                    let (ix, digest) = self.read_index(&obj).await?;
                    st.apply(&obj.key, &ix, digest);
                }
                pruned::Place::Pruned(p) => st.apply_pruned(p)?,
            }
        }
        Ok(st)
    }

    /// Builds the catalog for a reader: a damaged log is refused (exit 1, naming the first
    /// problem), unless `skip_damaged`, which leaves out unreadable segments and ranges held
    /// twice and keeps the rest; [`RepoState::damage`] and [`RepoState::missing_ranges`] then
    /// say exactly what was left out.
    pub async fn load_state_for_reading(&self, skip_damaged: bool) -> Result<RepoState> {
        let st = self.load_state_for_listing(skip_damaged).await?;
        self.ensure_readable(&st)?;
        Ok(st)
    }

    /// [`Repository::load_state_for_reading`] without the check that the keys given open
    /// every segment: for listing the catalog.
    pub async fn load_state_for_listing(&self, skip_damaged: bool) -> Result<RepoState> {
        if !skip_damaged {
            let st = self.load_state().await?;
            st.ensure_intact()?;
            return Ok(st);
        }
        let mut st = RepoState {
            salvage: Some(Default::default()),
            ..Default::default()
        };
        let pruned = pruned::load(self).await?;
        for place in pruned::places(self.segments().await?, &pruned) {
            let obj = match place {
                pruned::Place::Stored(obj) => obj,
                pruned::Place::Pruned(p) => {
                    st.apply_pruned(p)?;
                    continue;
                }
            };
            match self.read_index(&obj).await {
                Ok((ix, digest)) => st.apply(&obj.key, &ix, digest),
                Err(Error::Format { key, source }) => {
                    if let Some(s) = st.salvage.as_mut() {
                        s.skipped_objects.push((key, source.to_string()));
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(st)
    }

    /// Brings a catalog up to date with segments appended after its head.
    pub async fn refresh_state(&self, st: &mut RepoState) -> Result<()> {
        let after = st.head.map_or(0, |(s, _)| s);
        let stored: Vec<ObjectInfo> = self
            .segments()
            .await?
            .into_iter()
            .filter(|o| segment_seq(&o.key).is_some_and(|s| s > after))
            .collect();
        // Manifests only matter past the head (a prune never touches the last segment);
        // the common case lists `prune/` once and reads nothing.
        let mut pruned = pruned::load(self).await?;
        pruned.retain(|s, _| *s > after);
        for place in pruned::places(stored, &pruned) {
            match place {
                pruned::Place::Stored(obj) => {
                    let (ix, digest) = self.read_index(&obj).await?;
                    st.apply(&obj.key, &ix, digest);
                }
                pruned::Place::Pruned(p) => st.apply_pruned(p)?,
            }
        }
        Ok(())
    }

    /// Starts the next segment of the log after `head`.
    pub fn new_segment(&self, head: Option<(u64, Digest)>, writer: &str) -> SegmentBuilder {
        let seq = head.map_or(1, |(s, _)| s + 1);
        SegmentBuilder::new(
            seq,
            chrono::Utc::now().timestamp_millis(),
            writer,
            head.map(|(_, d)| d),
            self.write_key().as_ref(),
        )
    }

    /// Writes a finished segment with a create-only put. Fails with [`Error::Concurrent`] if
    /// another writer took that position first.
    pub async fn append(&self, bytes: Vec<u8>, index: &SegmentIndex) -> Result<String> {
        let key = segment_key(index.seq);
        match self.store.put_new(&key, Bytes::from(bytes)).await {
            Ok(()) => Ok(key),
            Err(StorageError::AlreadyExists { .. }) => Err(Error::Concurrent {
                seq: index.seq,
                detail: "reloading the log and retrying".into(),
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Finishes `segment`, appends it to the log and applies it to `state`. Returns its key
    /// and size; [`Error::Concurrent`] if another writer took its position.
    pub async fn commit_segment(
        &self,
        state: &mut RepoState,
        segment: SegmentBuilder,
    ) -> Result<(String, u64)> {
        let (bytes, index, digest) = segment.finish();
        let len = bytes.len() as u64;
        let key = self.append(bytes, &index).await?;
        state.apply(&key, &index, digest);
        Ok((key, len))
    }

    /// Reads and decodes one chunk (one ranged read).
    pub async fn read_chunk(&self, chunk: &ChunkRef) -> Result<Vec<haven_format::Record>> {
        let body = self.chunk_body(chunk).await?;
        let mut refs = Vec::with_capacity(chunk.meta.record_count.min(1 << 20) as usize);
        haven_format::visit_chunk(&body, |r| {
            refs.push(r);
            Ok(())
        })
        .map_err(|e| Error::format(&chunk.key, e))?;
        let subjects = self.subject_keys_for(&refs).await?;
        refs.iter()
            .map(|r| crate::erasure::open(r, &subjects))
            .collect::<Result<Vec<_>>>()
            .map_err(|e| Error::Damaged(format!("{}: {e}", chunk.key)))
    }

    /// Checks a chunk without decoding it (one ranged read: CRC, authentication), for a
    /// restore's check before it writes anything.
    pub async fn check_chunk(&self, chunk: &ChunkRef) -> Result<()> {
        let (bytes, dk) = self.stored_chunk(chunk).await?;
        haven_format::check_stored_chunk(
            chunk.seq,
            chunk.wrapped_key.is_some(),
            &chunk.meta,
            &bytes,
            dk.as_ref(),
        )
        .map_err(|e| Error::format(&chunk.key, e))
    }

    /// A chunk's stored bytes (one ranged read) and its data key when encrypted.
    async fn stored_chunk(&self, chunk: &ChunkRef) -> Result<(bytes::Bytes, Option<[u8; 32]>)> {
        let m = &chunk.meta;
        let bytes = self
            .store
            .get_range(&chunk.key, m.byte_offset..m.byte_offset + m.byte_len)
            .await?;
        let dk = match &chunk.wrapped_key {
            None => None,
            Some(w) => Some(self.data_key(chunk.seq, w, &chunk.key)?),
        };
        Ok((bytes, dk))
    }

    /// The decompressed body of a chunk (checked: CRC, authentication, what the index says),
    /// from the cache or with one ranged read. Decode it with `haven_format::visit_chunk`.
    pub async fn chunk_body(&self, chunk: &ChunkRef) -> Result<std::sync::Arc<Vec<u8>>> {
        let ck = (chunk.key.clone(), chunk.meta.ordinal);
        if let Some(b) = self.cache.lock().ok().and_then(|mut c| c.get(&ck)) {
            return Ok(b);
        }
        let m = &chunk.meta;
        let (bytes, dk) = self.stored_chunk(chunk).await?;
        let body = haven_format::open_stored_chunk(
            chunk.seq,
            chunk.wrapped_key.is_some(),
            m,
            &bytes,
            dk.as_ref(),
        )
        .map_err(|e| Error::format(&chunk.key, e))?;
        let body = std::sync::Arc::new(body);
        if let Ok(mut c) = self.cache.lock() {
            c.put(ck, body.clone());
        }
        Ok(body)
    }

    /// Reads a whole segment into memory and checks it (digest, index, chunk CRCs).
    pub async fn read_segment(&self, key: &str) -> Result<(Vec<u8>, SegmentIndex, Digest)> {
        let bytes = self.store.get(key).await?.to_vec();
        let (ix, d) = haven_format::verify_object(&bytes).map_err(|e| Error::format(key, e))?;
        Ok((bytes, ix, d))
    }
}

/// Opens (or, with `create`, creates) the repository a config section describes, with its
/// key file unless `key_file` overrides it. A local directory that does not exist is "not a
/// repository", never created by a reader.
pub async fn open_configured(
    section: &crate::config::RepositorySection,
    key_file: Option<&std::path::Path>,
    create: bool,
) -> Result<Repository> {
    if !create {
        if let Some(dir) = haven_storage::local_path(&section.url) {
            if !dir.exists() {
                return Err(Error::NotARepository {
                    url: section.url.clone(),
                });
            }
        }
    }
    let store = store_of(section)?;
    let keys = crate::load_keys(key_file.or(section.key_file.as_deref()))?;
    let rules = crate::erasure::rules::Rules::of(section)?;
    let repo = if create {
        Repository::open_or_create(store, keys).await?
    } else {
        Repository::open(store, keys).await?
    };
    Ok(repo.with_erasure_rules(rules))
}

/// The store a config section names, with its options (nothing is read or created).
pub fn store_of(section: &crate::config::RepositorySection) -> Result<Store> {
    let mut secrets = Vec::new();
    for (k, r) in &section.secret_options {
        secrets.push((
            k,
            crate::secrets::resolve(&format!("secret_options.{k}"), r)?,
        ));
    }
    let options: Vec<(&str, &str)> = section
        .options
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .chain(secrets.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .collect();
    Store::open_with(&section.url, &options)
        .map_err(|e| Error::Input(format!("repository {}: {e}", section.url)))
}
