//! Haven's adapter to etcd (3.4 and later): which region is active, and the fencing epoch.
//!
//! Keys, under `/haven/{cluster}/`:
//! - `leader`: `{"region","agent","epoch"}`, attached to the holder's lease. Its create
//!   revision (`rev`) identifies one tenure.
//! - `epoch`: the fencing token, a decimal number without a lease. It only goes up: it is
//!   written only in the transaction that takes the leader key, compared on its
//!   modification revision, as `max(current, floor) + 1`.
//! - `active`: the last region that held the lease (no lease; for restarts and audit).
//!
//! A keepalive alone does not prove ownership on etcd 3.4 (it may answer for a revoked
//! lease, or from an old leader): [`Coordinator::renew`] sends one and then re-checks the
//! leader key in a linearizable transaction (`create_revision == rev && lease == L`).
//! Every etcd call is bounded by the connection's request timeout.

use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("etcd ({endpoints}): {source}")]
    Client {
        endpoints: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error("etcd ({endpoints}): no answer within {timeout:?}")]
    Timeout {
        endpoints: String,
        timeout: Duration,
    },
    #[error("etcd key {key} holds {value:?}, not what Haven writes there: {why}")]
    Corrupt {
        key: String,
        value: String,
        why: String,
    },
}

pub type Result<T, E = EtcdError> = std::result::Result<T, E>;

/// Who holds the leader key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub region: String,
    pub agent: String,
    pub epoch: u64,
    /// Create revision of the leader key: this tenure.
    #[serde(skip)]
    pub rev: i64,
    /// The lease the key is attached to.
    #[serde(skip)]
    pub lease: i64,
}

/// A tenure this process won: keep it with [`Coordinator::renew`].
#[derive(Debug)]
pub struct Tenure {
    pub region: String,
    pub epoch: u64,
    pub rev: i64,
    pub lease: i64,
    pub ttl: Duration,
    keeper: Option<(etcd_client::LeaseKeeper, etcd_client::LeaseKeepAliveStream)>,
}

/// The answer to [`Coordinator::acquire`].
#[derive(Debug)]
pub enum Acquired {
    Won(Box<Tenure>),
    /// Someone holds it (or took it first).
    Held(Holder),
}

pub struct Coordinator {
    client: Client,
    prefix: String,
    endpoints: String,
    timeout: Duration,
}

impl Coordinator {
    /// Connects to the members at `endpoints` (`http://host:port`), for the Haven cluster
    /// `cluster`. Every call is bounded by `timeout`; calls need a member with a leader.
    pub async fn connect(endpoints: &[String], cluster: &str, timeout: Duration) -> Result<Self> {
        let joined = endpoints.join(",");
        let options = ConnectOptions::new()
            .with_timeout(timeout)
            .with_connect_timeout(timeout)
            .with_require_leader(true);
        let client = bounded(&joined, timeout, Client::connect(endpoints, Some(options))).await?;
        Ok(Coordinator {
            client,
            prefix: format!("/haven/{cluster}/"),
            endpoints: joined,
            timeout,
        })
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Runs one etcd request, retrying what a dead or restarting member answers (the
    /// client balances requests over every endpoint, and a dead one refuses connections)
    /// until the request timeout.
    async fn call<T, F, Fut>(&self, mut request: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, request()).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) if transient(&e) && left > RETRY_PAUSE * 2 => {
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Ok(Err(source)) => {
                    return Err(EtcdError::Client {
                        endpoints: self.endpoints.clone(),
                        source,
                    })
                }
                Err(_) => {
                    return Err(EtcdError::Timeout {
                        endpoints: self.endpoints.clone(),
                        timeout: self.timeout,
                    })
                }
            }
        }
    }

    /// The current holder (a linearizable read), if any.
    pub async fn holder(&mut self) -> Result<Option<Holder>> {
        let key = self.key("leader");
        let resp = self.get(&key, None).await?;
        resp.kvs()
            .first()
            .map(|kv| parse_holder(&key, kv))
            .transpose()
    }

    /// The current epoch (0 before the first tenure).
    pub async fn epoch(&mut self) -> Result<u64> {
        Ok(self.epoch_with_revision().await?.0)
    }

    async fn epoch_with_revision(&mut self) -> Result<(u64, i64)> {
        let key = self.key("epoch");
        let resp = self.get(&key, None).await?;
        match resp.kvs().first() {
            None => Ok((0, 0)),
            Some(kv) => Ok((parse_epoch(&key, kv.value())?, kv.mod_revision())),
        }
    }

    /// Takes the leader key for `region` with a lease of `ttl` (whole seconds, at least
    /// 2), if nobody holds it: the epoch becomes `max(epoch, floor) + 1` in the same
    /// transaction. `floor` is the highest epoch seen elsewhere (repository, DNS), so a
    /// rebuilt etcd never hands out an epoch again.
    pub async fn acquire(
        &mut self,
        region: &str,
        agent: &str,
        ttl: Duration,
        floor: u64,
    ) -> Result<Acquired> {
        for _ in 0..3 {
            if let Some(h) = self.holder().await? {
                return Ok(Acquired::Held(h));
            }
            if let Some(won) = self.take(region, agent, ttl, floor, 0).await? {
                return Ok(Acquired::Won(Box::new(won)));
            }
        }
        self.lost_race().await
    }

    /// Takes the leader key for `region` from the tenure `from` (a switchover, or a
    /// forced failover), or if nobody holds it, provided the epoch is still `epoch`: the
    /// epoch becomes `epoch + 1` in the same transaction. If another tenure holds it or
    /// the epoch moved (since the caller looked), nothing changes: `Held` (or an error if
    /// nobody holds it). The key keeps its create revision; the new tenure is told apart
    /// from the old one by its lease.
    pub async fn take_over(
        &mut self,
        region: &str,
        agent: &str,
        ttl: Duration,
        epoch: u64,
        from: Option<(i64, i64)>,
    ) -> Result<Acquired> {
        for _ in 0..3 {
            let expect = match (self.holder().await?, from) {
                (Some(h), Some((rev, lease))) if h.rev == rev && h.lease == lease => h.rev,
                (Some(h), _) => return Ok(Acquired::Held(h)),
                (None, _) => 0,
            };
            let (current, _) = self.epoch_with_revision().await?;
            if current != epoch {
                return self.lost_race().await;
            }
            if let Some(won) = self.take(region, agent, ttl, epoch, expect).await? {
                return Ok(Acquired::Won(Box::new(won)));
            }
        }
        self.lost_race().await
    }

    async fn lost_race(&mut self) -> Result<Acquired> {
        match self.holder().await? {
            Some(h) => Ok(Acquired::Held(h)),
            None => Err(EtcdError::Timeout {
                endpoints: self.endpoints.clone(),
                timeout: self.timeout,
            }),
        }
    }

    /// One attempt: grants a lease and puts the leader key, the next epoch and `active`
    /// if the leader key's create revision is still `expect_rev` (0: absent) and the
    /// epoch did not move. None: something changed in between (the lease is revoked).
    async fn take(
        &mut self,
        region: &str,
        agent: &str,
        ttl: Duration,
        floor: u64,
        expect_rev: i64,
    ) -> Result<Option<Tenure>> {
        let (leader, epoch_key, active) =
            (self.key("leader"), self.key("epoch"), self.key("active"));
        let (current, epoch_rev) = self.epoch_with_revision().await?;
        let next = current.max(floor) + 1;
        let ttl_s = ttl.as_secs().max(2) as i64;
        let lease_client = self.client.lease_client();
        let lease = self
            .call(|| {
                let mut l = lease_client.clone();
                async move { l.grant(ttl_s, None).await }
            })
            .await?
            .id();
        let value = serde_json::to_string(&Holder {
            region: region.into(),
            agent: agent.into(),
            epoch: next,
            rev: 0,
            lease,
        })
        .unwrap_or_default();
        let epoch_unchanged = if epoch_rev == 0 {
            Compare::version(epoch_key.clone(), CompareOp::Equal, 0)
        } else {
            Compare::mod_revision(epoch_key.clone(), CompareOp::Equal, epoch_rev)
        };
        let txn = Txn::new()
            .when(vec![
                Compare::create_revision(leader.clone(), CompareOp::Equal, expect_rev),
                epoch_unchanged,
            ])
            .and_then(vec![
                TxnOp::put(
                    leader.clone(),
                    value,
                    Some(PutOptions::new().with_lease(lease)),
                ),
                TxnOp::put(epoch_key.clone(), next.to_string(), None),
                TxnOp::put(active.clone(), region, None),
            ]);
        let resp = self.txn(txn).await?;
        if !resp.succeeded() {
            let _ = self.revoke(lease).await;
            return Ok(None);
        }
        // A key put over an existing one keeps its create revision.
        let rev = if expect_rev != 0 {
            expect_rev
        } else {
            resp.header().map_or(0, |h| h.revision())
        };
        let keeper = self.open_keeper(lease).await.ok();
        Ok(Some(Tenure {
            region: region.into(),
            epoch: next,
            rev,
            lease,
            ttl: Duration::from_secs(ttl_s as u64),
            keeper,
        }))
    }

    /// Rewrites the `agent` field of the leader key if it is still the tenure
    /// (`rev`, `lease`): a plan hands its finished tenure to the region's agent. Whether
    /// it was still that tenure.
    pub async fn relabel(&mut self, rev: i64, lease: i64, agent: &str) -> Result<bool> {
        let Some(mut h) = self.holder().await? else {
            return Ok(false);
        };
        if h.rev != rev || h.lease != lease {
            return Ok(false);
        }
        h.agent = agent.to_string();
        let value = serde_json::to_string(&h).unwrap_or_default();
        let leader = self.key("leader");
        let txn = Txn::new()
            .when(vec![
                Compare::create_revision(leader.clone(), CompareOp::Equal, rev),
                Compare::lease(leader.clone(), CompareOp::Equal, lease),
            ])
            .and_then(vec![TxnOp::put(
                leader,
                value,
                Some(PutOptions::new().with_lease(lease)),
            )]);
        Ok(self.txn(txn).await?.succeeded())
    }

    /// Carries on a tenure another process took for this region (a switchover or failover
    /// run from the CLI): renews the same lease. None if `holder` no longer holds it.
    pub async fn adopt(&mut self, holder: &Holder, ttl: Duration) -> Result<Option<Tenure>> {
        let mut t = Tenure {
            region: holder.region.clone(),
            epoch: holder.epoch,
            rev: holder.rev,
            lease: holder.lease,
            ttl,
            keeper: None,
        };
        Ok(if self.renew(&mut t).await? {
            Some(t)
        } else {
            None
        })
    }

    /// Renews a tenure: one keepalive, then a linearizable check that the leader key is
    /// still this tenure's (same create revision, same lease). `Ok(false)`: the tenure is
    /// over (the lease expired or was revoked, or another tenure began): stop writing.
    /// An error means etcd did not answer in time: the caller counts the time since its
    /// last successful renewal against the lease TTL.
    pub async fn renew(&mut self, t: &mut Tenure) -> Result<bool> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let alive = loop {
            match self.keep_alive_once(t, deadline).await {
                Ok(alive) => break alive,
                Err(e) => {
                    t.keeper = None;
                    let transient_error =
                        matches!(&e, EtcdError::Client { source, .. } if transient(source));
                    if !transient_error || tokio::time::Instant::now() + RETRY_PAUSE * 2 >= deadline
                    {
                        return Err(e);
                    }
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        };
        if !alive {
            return Ok(false);
        }
        let leader = self.key("leader");
        let txn = Txn::new().when(vec![
            Compare::create_revision(leader.clone(), CompareOp::Equal, t.rev),
            Compare::lease(leader, CompareOp::Equal, t.lease),
        ]);
        Ok(self.txn(txn).await?.succeeded())
    }

    /// One keepalive on the tenure's stream (opened if needed): whether the lease lives.
    async fn keep_alive_once(
        &mut self,
        t: &mut Tenure,
        deadline: tokio::time::Instant,
    ) -> Result<bool> {
        if t.keeper.is_none() {
            t.keeper = Some(self.open_keeper(t.lease).await?);
        }
        let Some((keeper, stream)) = t.keeper.as_mut() else {
            return Ok(false);
        };
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        bounded(&self.endpoints, left, keeper.keep_alive()).await?;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match bounded(&self.endpoints, left, stream.message()).await? {
            Some(r) => Ok(r.ttl() > 0),
            None => Err(EtcdError::Client {
                endpoints: self.endpoints.clone(),
                source: etcd_client::Error::LeaseKeepAliveError("stream closed".into()),
            }),
        }
    }

    async fn open_keeper(
        &self,
        lease: i64,
    ) -> Result<(etcd_client::LeaseKeeper, etcd_client::LeaseKeepAliveStream)> {
        let lease_client = self.client.lease_client();
        self.call(|| {
            let mut l = lease_client.clone();
            async move { l.keep_alive(lease).await }
        })
        .await
    }

    /// A linearizable read of `key` (or of every key under it, with a prefix option).
    async fn get(
        &self,
        key: &str,
        options: Option<GetOptions>,
    ) -> Result<etcd_client::GetResponse> {
        let kv = self.client.kv_client();
        self.call(|| {
            let mut kv = kv.clone();
            let key = key.to_string();
            let options = options.clone();
            async move { kv.get(key, options).await }
        })
        .await
    }

    async fn txn(&self, txn: Txn) -> Result<etcd_client::TxnResponse> {
        let kv = self.client.kv_client();
        self.call(|| {
            let mut kv = kv.clone();
            let txn = txn.clone();
            async move { kv.txn(txn).await }
        })
        .await
    }

    async fn revoke(&self, lease: i64) -> Result<()> {
        let lease_client = self.client.lease_client();
        self.call(|| {
            let mut l = lease_client.clone();
            async move { l.revoke(lease).await }
        })
        .await
        .map(|_| ())
    }

    /// Gives a tenure up: deletes the leader key if it is still this tenure's, then
    /// revokes the lease. The epoch stays.
    pub async fn resign(&mut self, t: Tenure) -> Result<()> {
        let leader = self.key("leader");
        let txn = Txn::new()
            .when(vec![Compare::create_revision(
                leader.clone(),
                CompareOp::Equal,
                t.rev,
            )])
            .and_then(vec![TxnOp::delete(leader, None)]);
        self.txn(txn).await?;
        self.revoke(t.lease).await
    }

    /// The last region that held the lease (the `active` key; it outlives the lease).
    pub async fn active(&mut self) -> Result<Option<String>> {
        let key = self.key("active");
        let resp = self.get(&key, None).await?;
        Ok(resp
            .kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).to_string()))
    }

    /// The epoch and the holder as of one revision (one linearizable range read), so the
    /// two are consistent with each other.
    pub async fn snapshot(&mut self) -> Result<(u64, Option<Holder>)> {
        let prefix = self.prefix.clone();
        let resp = self
            .get(&prefix, Some(GetOptions::new().with_prefix()))
            .await?;
        let (leader, epoch_key) = (self.key("leader"), self.key("epoch"));
        let mut epoch = 0;
        let mut holder = None;
        for kv in resp.kvs() {
            if kv.key() == leader.as_bytes() {
                holder = Some(parse_holder(&leader, kv)?);
            } else if kv.key() == epoch_key.as_bytes() {
                epoch = parse_epoch(&epoch_key, kv.value())?;
            }
        }
        Ok((epoch, holder))
    }
}

/// One etcd member as it answers for itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Member {
    pub endpoint: String,
    /// It answered within the timeout.
    pub up: bool,
    /// It is the Raft leader.
    pub leader: bool,
    /// It knows a leader (false: it cannot serve linearizable requests).
    pub has_leader: bool,
    pub version: Option<String>,
    pub error: Option<String>,
}

/// Asks every member about itself, each on its own connection, bounded by `timeout`.
pub async fn members(endpoints: &[String], timeout: Duration) -> Vec<Member> {
    let mut out = Vec::new();
    for e in endpoints {
        let asked = async {
            let options = ConnectOptions::new()
                .with_timeout(timeout)
                .with_connect_timeout(timeout);
            let mut c = Client::connect([e.as_str()], Some(options)).await?;
            c.status().await
        };
        out.push(match tokio::time::timeout(timeout, asked).await {
            Ok(Ok(st)) => {
                let me = st.header().map_or(0, |h| h.member_id());
                Member {
                    endpoint: e.clone(),
                    up: true,
                    leader: me != 0 && st.leader() == me,
                    has_leader: st.leader() != 0,
                    version: Some(st.version().to_string()),
                    error: None,
                }
            }
            Ok(Err(err)) => Member {
                endpoint: e.clone(),
                up: false,
                leader: false,
                has_leader: false,
                version: None,
                error: Some(err.to_string()),
            },
            Err(_) => Member {
                endpoint: e.clone(),
                up: false,
                leader: false,
                has_leader: false,
                version: None,
                error: Some(format!("no answer within {timeout:?}")),
            },
        });
    }
    out
}

fn parse_epoch(key: &str, value: &[u8]) -> Result<u64> {
    let text = String::from_utf8_lossy(value).to_string();
    text.trim().parse::<u64>().map_err(|e| EtcdError::Corrupt {
        key: key.into(),
        value: text.clone(),
        why: e.to_string(),
    })
}

fn parse_holder(key: &str, kv: &etcd_client::KeyValue) -> Result<Holder> {
    let text = String::from_utf8_lossy(kv.value()).to_string();
    let mut h: Holder = serde_json::from_str(&text).map_err(|e| EtcdError::Corrupt {
        key: key.into(),
        value: text.clone(),
        why: e.to_string(),
    })?;
    h.rev = kv.create_revision();
    h.lease = kv.lease();
    Ok(h)
}

const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// Errors a request to another member may not have: a refused connection, a member
/// without a leader for a moment, a closed stream.
fn transient(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::LeaseKeepAliveError(_) => true,
        etcd_client::Error::GRpcStatus(s) => {
            matches!(
                s.code(),
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown
            ) || s.message().contains("leader changed")
                || s.message().contains("no leader")
        }
        _ => false,
    }
}

async fn bounded<T>(
    endpoints: &str,
    timeout: Duration,
    f: impl std::future::Future<Output = std::result::Result<T, etcd_client::Error>>,
) -> Result<T> {
    match tokio::time::timeout(timeout, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(EtcdError::Client {
            endpoints: endpoints.into(),
            source,
        }),
        Err(_) => Err(EtcdError::Timeout {
            endpoints: endpoints.into(),
            timeout,
        }),
    }
}
