//! Connections to a cluster's brokers for one client: made on demand, kept by address,
//! one request at a time on each; "ask any broker" for requests any broker answers
//! (Metadata, InitProducerId), trying the known brokers, then the bootstrap list.

use std::collections::HashMap;
use std::time::Duration;

use kafka_protocol::messages::{ApiKey, MetadataRequest, MetadataResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use sluice_protocol::ClientConnection;

use crate::metadata_cache::MetadataCache;

pub const METADATA_VERSION: i16 = 12;
pub const CLIENT_ID: &str = "sluice-client";

/// No broker answered a request any broker could answer.
#[derive(Debug, Clone, thiserror::Error)]
#[error("no broker of {bootstrap} answered: {last}")]
pub struct NoBroker {
    pub bootstrap: String,
    pub last: String,
}

/// Connections to brokers, made on demand; one request at a time on each.
pub struct BrokerIo {
    bootstrap: Vec<String>,
    pub timeout: Duration,
    pub connections: HashMap<String, ClientConnection>,
}

impl BrokerIo {
    pub fn new(bootstrap_servers: &str, timeout: Duration) -> Self {
        BrokerIo {
            bootstrap: bootstrap_servers
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
            timeout,
            connections: HashMap::new(),
        }
    }

    pub async fn connection(
        &mut self,
        address: &str,
    ) -> Result<&mut ClientConnection, sluice_protocol::ClientError> {
        if !self.connections.contains_key(address) {
            let c = ClientConnection::connect(address, CLIENT_ID, self.timeout).await?;
            self.connections.insert(address.to_string(), c);
        }
        Ok(self
            .connections
            .get_mut(address)
            .expect("inserted just before"))
    }

    /// Every address worth asking for metadata: known brokers, then the bootstrap list.
    pub fn candidates(&self, metadata: &MetadataCache) -> Vec<String> {
        let mut all: Vec<String> = metadata.brokers().map(|(_, a)| a.to_string()).collect();
        all.sort();
        all.extend(self.bootstrap.iter().cloned());
        all.dedup();
        all
    }

    /// Sends `request` to the known brokers, then the bootstrap ones, until one gives an
    /// answer `accept` takes.
    pub async fn ask_any<Req, Resp>(
        &mut self,
        metadata: &MetadataCache,
        api: ApiKey,
        version: i16,
        request: &Req,
        accept: impl Fn(&Resp) -> Result<(), String>,
    ) -> Result<Resp, NoBroker>
    where
        Req: kafka_protocol::protocol::Encodable,
        Resp: kafka_protocol::protocol::Decodable + Default,
    {
        let mut last = String::from("no address to ask");
        for address in self.candidates(metadata) {
            let answer: Result<Resp, _> = match self.connection(&address).await {
                Ok(c) => c.send(api, version, request, true).await,
                Err(e) => Err(e),
            };
            match answer {
                Ok(response) => match accept(&response) {
                    Ok(()) => return Ok(response),
                    Err(e) => last = e,
                },
                Err(e) => {
                    last = e.to_string();
                    self.connections.remove(&address);
                }
            }
        }
        Err(NoBroker {
            bootstrap: self.bootstrap.join(","),
            last,
        })
    }

    pub async fn metadata(
        &mut self,
        metadata: &MetadataCache,
        topics: &[String],
    ) -> Result<MetadataResponse, NoBroker> {
        let request = MetadataRequest::default()
            .with_topics(Some(
                topics
                    .iter()
                    .map(|t| {
                        kafka_protocol::messages::metadata_request::MetadataRequestTopic::default()
                            .with_name(Some(TopicName(StrBytes::from_string(t.clone()))))
                    })
                    .collect(),
            ))
            .with_allow_auto_topic_creation(true);
        self.ask_any(
            metadata,
            ApiKey::Metadata,
            METADATA_VERSION,
            &request,
            |_| Ok(()),
        )
        .await
    }
}
