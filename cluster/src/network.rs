//! openraft's view of the transport: a client per (target node, group)
//! that sends through the node pair's shared connection.

use crate::transport::{Reply, Rpc, SendError, Transport};
use crate::types::{GroupId, NodeId, TypeConfig, Vote};
use openraft::alias::SnapshotOf;
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, v2::RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::{OptionalSend, impls::BasicNode};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Makes clients of one group.
pub struct Network {
    transport: Arc<Transport>,
    group: GroupId,
}

impl Network {
    /// Clients of `group`.
    pub fn new(transport: Arc<Transport>, group: GroupId) -> Self {
        Self { transport, group }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = GroupClient;

    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> GroupClient {
        GroupClient {
            transport: self.transport.clone(),
            group: self.group,
            target,
        }
    }
}

/// Sends one group's messages to one node.
pub struct GroupClient {
    transport: Arc<Transport>,
    group: GroupId,
    target: NodeId,
}

fn rpc_error(e: SendError) -> RPCError<TypeConfig> {
    match e {
        SendError::Unreachable(..) => RPCError::Unreachable(Unreachable::from_string(e)),
        SendError::Remote(..) => RPCError::Network(NetworkError::from_string(e)),
    }
}

fn unexpected(reply: Reply) -> RPCError<TypeConfig> {
    RPCError::Network(NetworkError::from_string(format!(
        "unexpected reply {reply:?}"
    )))
}

impl GroupClient {
    async fn call(&self, rpc: Rpc, option: &RPCOption) -> Result<Reply, SendError> {
        let ttl = option.hard_ttl().max(Duration::from_millis(100));
        self.transport.call(self.target, self.group, rpc, ttl).await
    }
}

impl RaftNetworkV2<TypeConfig> for GroupClient {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self
            .call(Rpc::Append(rpc), &option)
            .await
            .map_err(rpc_error)?
        {
            Reply::Append(response) => Ok(response),
            other => Err(unexpected(other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self
            .call(Rpc::Vote(rpc), &option)
            .await
            .map_err(rpc_error)?
        {
            Reply::Vote(response) => Ok(response),
            other => Err(unexpected(other)),
        }
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self
            .call(Rpc::PreVote(rpc), &option)
            .await
            .map_err(rpc_error)?
        {
            Reply::Vote(response) => Ok(response),
            other => Err(unexpected(other)),
        }
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: SnapshotOf<TypeConfig, Vec<u8>>,
        _cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let bytes = snapshot.snapshot.len();
        let rpc = Rpc::Snapshot {
            vote,
            meta: snapshot.meta,
            data: snapshot.snapshot,
        };
        let reply = self.call(rpc, &option).await.map_err(|e| match e {
            SendError::Unreachable(..) => StreamingError::Unreachable(Unreachable::from_string(e)),
            SendError::Remote(..) => StreamingError::Network(NetworkError::from_string(e)),
        })?;
        metrics::counter!(crate::metrics::SNAPSHOT_BYTES_SENT_TOTAL).increment(bytes as u64);
        match reply {
            Reply::Snapshot(response) => Ok(response),
            other => Err(StreamingError::Network(NetworkError::from_string(format!(
                "unexpected reply {other:?}"
            )))),
        }
    }

    async fn transfer_leader(
        &mut self,
        rpc: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self
            .call(Rpc::TransferLeader(rpc), &option)
            .await
            .map_err(rpc_error)?
        {
            Reply::TransferLeader(response) => Ok(response),
            other => Err(unexpected(other)),
        }
    }
}
