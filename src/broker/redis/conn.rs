//! The connection to Redis: one multiplexed connection to a standalone
//! server (kept up by a `ConnectionManager`), or a cluster connection that
//! routes each command by its key's slot (`redis.url` with several
//! comma-separated node addresses).
//!
//! On a cluster, a pipeline must stay within one slot; [`Conn::query_each`]
//! runs commands of different slots (one round trip on a standalone
//! server, concurrent single commands on a cluster).

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use super::map_err;
use crate::broker::{BrokerError, Result};

/// A connection to a standalone Redis or to a Redis Cluster.
#[derive(Clone)]
pub(crate) enum Conn {
    /// One server.
    Single(ConnectionManager),
    /// A cluster: commands go to the master of their key's slot.
    Cluster(ClusterConnection),
}

/// The node URLs of `url`: several, comma-separated, mean a cluster.
pub(crate) fn nodes(url: &str) -> Vec<&str> {
    url.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect()
}

impl Conn {
    /// Connects to `url` (see [`nodes`]).
    ///
    /// # Errors
    /// [`BrokerError::Internal`] for a bad URL, [`BrokerError::Unavailable`]
    /// when nothing answers within `timeout`.
    pub(crate) async fn connect(url: &str, timeout: Duration) -> Result<Conn> {
        let nodes = nodes(url);
        let conn = if nodes.len() > 1 {
            let client = ClusterClientBuilder::new(nodes)
                .connection_timeout(timeout)
                .response_timeout(timeout)
                .retries(4)
                .build()
                .map_err(|e| BrokerError::Internal(format!("invalid redis cluster urls: {e}")))?;
            let conn = tokio::time::timeout(timeout, client.get_async_connection())
                .await
                .map_err(|_| BrokerError::Unavailable("redis cluster connect timed out".into()))?
                .map_err(map_err)?;
            Conn::Cluster(conn)
        } else {
            let client = redis::Client::open(url)
                .map_err(|e| BrokerError::Internal(format!("invalid redis url: {e}")))?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout))
                .set_number_of_retries(4)
                .set_max_delay(Duration::from_secs(2));
            let conn =
                tokio::time::timeout(timeout, ConnectionManager::new_with_config(client, config))
                    .await
                    .map_err(|_| BrokerError::Unavailable("redis connect timed out".into()))?
                    .map_err(map_err)?;
            Conn::Single(conn)
        };
        Ok(conn)
    }

    /// Whether this is a cluster connection.
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Conn::Cluster(_))
    }

    /// Runs commands that may touch different slots; replies in order.
    /// Not atomic, and on a cluster not ordered either.
    pub(crate) async fn query_each(&mut self, cmds: Vec<Cmd>) -> redis::RedisResult<Vec<Value>> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        match self {
            Conn::Single(_) => {
                let mut pipe = Pipeline::with_capacity(cmds.len());
                for cmd in cmds {
                    pipe.add_command(cmd);
                }
                pipe.query_async(self).await
            }
            Conn::Cluster(conn) => {
                let calls = cmds.into_iter().map(|cmd| {
                    let mut conn = conn.clone();
                    async move { cmd.query_async::<Value>(&mut conn).await }
                });
                futures::future::try_join_all(calls).await
            }
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}
