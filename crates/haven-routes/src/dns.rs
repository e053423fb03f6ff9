//! A DNS route: one name (`kafka.dr.example.`) whose A records say where clients write,
//! changed with RFC 2136 updates signed with TSIG (hmac-sha256), with the fencing epoch
//! kept beside it in a TXT record (`_epoch.kafka.dr.example.`).
//!
//! Every update carries the epoch last written as a **prerequisite** (or "no epoch yet"):
//! the DNS server itself applies the update only if nobody wrote another epoch in the
//! meantime, and Haven never writes an epoch lower than the one it read. A stale writer (a
//! frozen agent woken later, an old plan) is refused by the server, not by Haven's good
//! behaviour. Opening sets the A records to this route's address; closing removes it.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hickory_proto::dnssec::rdata::tsig::TsigAlgorithm;
use hickory_proto::dnssec::tsig::TSigner;
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode, UpdateMessage};
use hickory_proto::rr::rdata::{A, AAAA, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

use crate::{Action, Result, RouteError};

/// Where and how to update one name.
#[derive(Debug, Clone)]
pub struct DnsRoute {
    /// The route's name, for errors.
    pub route: String,
    /// The primary (authoritative) server, `host:port`.
    pub server: SocketAddr,
    /// The zone (`dr.example.`).
    pub zone: String,
    /// The name clients resolve (`kafka.dr.example.`).
    pub name: String,
    /// This route's address: set when opened, removed when closed.
    pub address: IpAddr,
    /// TTL of the A records (seconds; keep it short).
    pub ttl: u32,
    /// TSIG key name and secret (the raw bytes of the base64 secret).
    pub key_name: String,
    pub key: Vec<u8>,
    pub timeout: Duration,
}

impl DnsRoute {
    fn fail(&self, message: String) -> RouteError {
        RouteError::Dns {
            route: self.route.clone(),
            message,
        }
    }

    fn names(&self) -> Result<(Name, Name, Name)> {
        let parse = |n: &str| {
            let mut name = Name::from_str(n)
                .map_err(|e| self.fail(format!("{n:?} is not a DNS name: {e}")))?;
            name.set_fqdn(true);
            Ok::<_, RouteError>(name)
        };
        let zone = parse(&self.zone)?;
        let name = parse(&self.name)?;
        if !zone.zone_of(&name) {
            return Err(self.fail(format!("{} is not in zone {}", self.name, self.zone)));
        }
        let epoch = parse(&format!("_epoch.{}", name))?;
        Ok((zone, name, epoch))
    }

    /// Sends one message over UDP and returns the answer.
    async fn exchange(
        &self,
        message: &Message,
        verify: bool,
        signer: Option<&TSigner>,
    ) -> Result<Message> {
        let mut message = message.clone();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or(0);
        let verifier = match signer {
            Some(s) => message
                .finalize(s, now)
                .map_err(|e| self.fail(format!("cannot sign the update: {e}")))?,
            None => None,
        };
        let bytes = message
            .to_vec()
            .map_err(|e| self.fail(format!("cannot encode the message: {e}")))?;
        let talk = async {
            let bind: SocketAddr = if self.server.is_ipv4() {
                "0.0.0.0:0".parse().expect("a literal address")
            } else {
                "[::]:0".parse().expect("a literal address")
            };
            let sock = tokio::net::UdpSocket::bind(bind).await?;
            sock.connect(self.server).await?;
            sock.send(&bytes).await?;
            let mut buf = vec![0u8; 4096];
            loop {
                let n = sock.recv(&mut buf).await?;
                if n >= 2 && buf[..2] == bytes[..2] {
                    buf.truncate(n);
                    return Ok::<_, std::io::Error>(buf);
                }
            }
        };
        let answer = tokio::time::timeout(self.timeout, talk)
            .await
            .map_err(|_| {
                self.fail(format!(
                    "{} did not answer within {:?}",
                    self.server, self.timeout
                ))
            })?
            .map_err(|e| self.fail(format!("{}: {e}", self.server)))?;
        if verify {
            if let Some(mut v) = verifier {
                v(&answer).map_err(|e| {
                    self.fail(format!("the server's answer failed TSIG verification: {e}"))
                })?;
            }
        }
        Message::from_vec(&answer).map_err(|e| self.fail(format!("unreadable answer: {e}")))
    }

    async fn query(&self, name: &Name, kind: RecordType) -> Result<Vec<RData>> {
        let mut m = Message::new();
        m.set_id(rand_id())
            .set_message_type(MessageType::Query)
            .set_op_code(OpCode::Query)
            .set_recursion_desired(false);
        m.add_query(Query::query(name.clone(), kind));
        let answer = self.exchange(&m, false, None).await?;
        match answer.response_code() {
            ResponseCode::NoError | ResponseCode::NXDomain => {}
            other => return Err(self.fail(format!("query {name} {kind}: {other}"))),
        }
        Ok(answer
            .answers()
            .iter()
            .filter(|r| r.record_type() == kind)
            .map(|r| r.data().clone())
            .collect())
    }

    /// The epoch last written to DNS (None: never).
    pub async fn epoch(&self) -> Result<Option<u64>> {
        let (_, _, epoch_name) = self.names()?;
        let values = self.query(&epoch_name, RecordType::TXT).await?;
        let mut out = None;
        for v in values {
            if let RData::TXT(t) = v {
                let text: String = t
                    .txt_data()
                    .iter()
                    .map(|b| String::from_utf8_lossy(b).to_string())
                    .collect();
                let e = text.trim().parse::<u64>().map_err(|_| {
                    self.fail(format!("_epoch.{} holds {text:?}, not an epoch", self.name))
                })?;
                out = Some(out.map_or(e, |o: u64| o.max(e)));
            }
        }
        Ok(out)
    }

    /// The addresses the name resolves to now (at the authoritative server).
    pub async fn addresses(&self) -> Result<Vec<IpAddr>> {
        let (_, name, _) = self.names()?;
        let mut out = Vec::new();
        for kind in [RecordType::A, RecordType::AAAA] {
            for v in self.query(&name, kind).await? {
                match v {
                    RData::A(a) => out.push(IpAddr::V4(a.0)),
                    RData::AAAA(a) => out.push(IpAddr::V6(a.0)),
                    _ => {}
                }
            }
        }
        Ok(out)
    }

    /// Opens (this address becomes the only one) or closes (this address goes away) the
    /// route under `epoch`, in one signed update whose prerequisite is the epoch read just
    /// before. Refused without change if DNS already holds a higher epoch, or if another
    /// writer changed it in between. Checked by reading it back.
    pub async fn apply(&self, action: Action, epoch: u64) -> Result<()> {
        let current = self.epoch().await?;
        if let Some(c) = current {
            if c > epoch {
                return Err(self.fail(format!(
                    "DNS holds epoch {c}, newer than this change's {epoch}: a newer failover \
                     owns the route; refusing to write"
                )));
            }
        }
        self.update(action, epoch, current).await
    }

    /// The update itself, on the condition (checked by the server) that DNS holds epoch
    /// `expected` (None: no epoch record).
    pub async fn update(&self, action: Action, epoch: u64, expected: Option<u64>) -> Result<()> {
        let (zone, name, epoch_name) = self.names()?;
        let current = expected;
        let mut m = Message::new();
        m.set_id(rand_id())
            .set_message_type(MessageType::Query)
            .set_op_code(OpCode::Update)
            .set_recursion_desired(false);
        let mut z = Query::new();
        z.set_name(zone)
            .set_query_class(DNSClass::IN)
            .set_query_type(RecordType::SOA);
        m.add_zone(z);
        // Prerequisite: the epoch is what was read (value-dependent), or there is none.
        match current {
            Some(c) => {
                let mut p = Record::from_rdata(
                    epoch_name.clone(),
                    0,
                    RData::TXT(TXT::new(vec![c.to_string()])),
                );
                p.set_dns_class(DNSClass::IN);
                m.add_pre_requisite(p);
            }
            None => {
                let mut p = Record::update0(epoch_name.clone(), 0, RecordType::TXT);
                p.set_dns_class(DNSClass::NONE);
                m.add_pre_requisite(p);
            }
        }
        let address_record = |ttl: u32| match self.address {
            IpAddr::V4(a) => Record::from_rdata(name.clone(), ttl, RData::A(A(a))),
            IpAddr::V6(a) => Record::from_rdata(name.clone(), ttl, RData::AAAA(AAAA(a))),
        };
        let kind = if self.address.is_ipv4() {
            RecordType::A
        } else {
            RecordType::AAAA
        };
        match action {
            Action::Open => {
                let mut del = Record::update0(name.clone(), 0, kind);
                del.set_dns_class(DNSClass::ANY);
                m.add_update(del);
                m.add_update(address_record(self.ttl));
            }
            Action::Close => {
                let mut del = address_record(0);
                del.set_dns_class(DNSClass::NONE);
                m.add_update(del);
            }
        }
        let mut del_epoch = Record::update0(epoch_name.clone(), 0, RecordType::TXT);
        del_epoch.set_dns_class(DNSClass::ANY);
        m.add_update(del_epoch);
        m.add_update(Record::from_rdata(
            epoch_name,
            self.ttl,
            RData::TXT(TXT::new(vec![epoch.to_string()])),
        ));
        let signer = TSigner::new(
            self.key.clone(),
            TsigAlgorithm::HmacSha256,
            Name::from_str(&self.key_name)
                .map_err(|e| self.fail(format!("key name {:?}: {e}", self.key_name)))?,
            300,
        )
        .map_err(|e| self.fail(format!("TSIG key: {e}")))?;
        let answer = self.exchange(&m, true, Some(&signer)).await?;
        match answer.response_code() {
            ResponseCode::NoError => {}
            ResponseCode::NXRRSet | ResponseCode::YXRRSet => {
                return Err(self.fail(format!(
                    "the server refused the update: the epoch changed since it was read ({}): \
                     another writer acted; refusing",
                    answer.response_code()
                )))
            }
            ResponseCode::NotAuth => {
                return Err(self.fail(format!(
                    "the server refused the TSIG key {:?} (NOTAUTH): check the key name and secret",
                    self.key_name
                )))
            }
            other => return Err(self.fail(format!("the server refused the update: {other}"))),
        }
        let (now, addrs) = (self.epoch().await?, self.addresses().await?);
        let in_place = match action {
            Action::Open => addrs == vec![self.address],
            Action::Close => !addrs.contains(&self.address),
        };
        if now != Some(epoch) || !in_place {
            return Err(self.fail(format!(
                "after the update the server shows epoch {now:?} and addresses {addrs:?}"
            )));
        }
        Ok(())
    }
}

fn rand_id() -> u16 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    (nanos ^ (nanos >> 16)) as u16
}
