//! The client side of the runtime: the cheap, cloneable [`NodeHandle`] that proposes,
//! reads, asks for status and changes membership through the runtime's command queue.

use std::sync::Arc;

use bytes::Bytes;
use raft_proto::{NodeError, NodeId, NodeStatus};
use tokio::sync::{mpsc, oneshot};

use crate::metrics::Metrics;

use super::{ReadAnswer, ReadView};

/// What a reply channel carries: the state machine's encoded response.
pub type Reply = oneshot::Sender<Result<Bytes, NodeError>>;

/// What a read's reply channel carries.
pub type ReadReply = oneshot::Sender<Result<ReadAnswer, NodeError>>;

/// A membership or leadership change.
#[derive(Clone, Copy, Debug)]
pub enum AdminOp {
    /// Hand leadership to a voter.
    TransferLeader(NodeId),
    /// Add a learner.
    AddLearner(NodeId),
    /// Make a learner a voter.
    Promote(NodeId),
    /// Remove a member.
    Remove(NodeId),
}

/// A request to the runtime.
pub enum Command {
    /// Append an encoded `LogCommand` and answer with the state machine's response.
    Propose {
        /// The encoded log command.
        data: Bytes,
        /// Where the answer goes.
        reply: Reply,
    },
    /// Answer a read-only query.
    Read {
        /// The encoded read command.
        op: Bytes,
        /// ReadIndex first (`true`) or serve the local replica as is.
        linearizable: bool,
        /// Where the answer goes.
        reply: ReadReply,
    },
    /// The node's status.
    Status(oneshot::Sender<NodeStatus>),
    /// A membership or leadership change.
    Admin(AdminOp, oneshot::Sender<Result<(), NodeError>>),
}

/// The cheap, cloneable way to talk to a running node.
#[derive(Clone)]
pub struct NodeHandle {
    pub(super) tx: mpsc::Sender<Command>,
    /// The node's metrics.
    pub metrics: Arc<Metrics>,
    /// This node's ID.
    pub id: NodeId,
    /// The leader this node knows of (0: none), kept by the runtime, so that a follower's
    /// router can tell "forward" from "no leader to forward to" without asking the task.
    pub(super) leader: Arc<std::sync::atomic::AtomicU64>,
    /// Why no leader can be elected, while the runtime fails requests at once for it.
    pub(super) no_quorum: Arc<std::sync::Mutex<Option<String>>>,
}

impl NodeHandle {
    /// Why no leader can be elected ("no leader: 1 of 3 voters reachable ..."), while the
    /// node fails requests at once for that reason.
    pub fn no_quorum(&self) -> Option<String> {
        self.no_quorum.lock().expect("not poisoned").clone()
    }

    /// The leader this node currently knows of, if any.
    pub fn leader(&self) -> Option<NodeId> {
        match self.leader.load(std::sync::atomic::Ordering::Relaxed) {
            0 => None,
            l => Some(l),
        }
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, NodeError> {
        let (tx, rx) = oneshot::channel();
        // A full queue means the runtime is behind: tell the client instead of queueing more.
        self.tx.try_send(make(tx)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => NodeError::Busy,
            mpsc::error::TrySendError::Closed(_) => NodeError::ShuttingDown,
        })?;
        rx.await.map_err(|_| NodeError::ShuttingDown)
    }

    /// Proposes an encoded `LogCommand`.
    pub async fn propose(&self, data: Bytes) -> Result<Bytes, NodeError> {
        self.ask(|reply| Command::Propose { data, reply }).await?
    }

    /// Runs a read-only query. With a machine that has a view, the answer is built here,
    /// on the caller's task, not on the runtime's.
    pub async fn read(&self, op: Bytes, linearizable: bool) -> Result<Bytes, NodeError> {
        let answer = self
            .ask(|reply| Command::Read {
                op: op.clone(),
                linearizable,
                reply,
            })
            .await??;
        Ok(match answer {
            ReadAnswer::Bytes(b) => b,
            ReadAnswer::View(view) => view.query(&op),
        })
    }

    /// As [`NodeHandle::read`], leaving the answer to the caller: the machine's encoded
    /// response, or a view to build it from when the caller is ready to hold it.
    pub async fn read_answer(
        &self,
        op: Bytes,
        linearizable: bool,
    ) -> Result<ReadAnswer, NodeError> {
        self.ask(|reply| Command::Read {
            op,
            linearizable,
            reply,
        })
        .await?
    }

    /// The state at an applied index at or after this call's read index (linearizable) or
    /// as this replica has it, for several reads at once; `None` if the machine has no view.
    pub async fn read_view(&self, linearizable: bool) -> Result<Option<ReadView>, NodeError> {
        let answer = self
            .ask(|reply| Command::Read {
                op: Bytes::new(),
                linearizable,
                reply,
            })
            .await??;
        Ok(match answer {
            ReadAnswer::Bytes(_) => None,
            ReadAnswer::View(view) => Some(view),
        })
    }

    /// The node's status.
    pub async fn status(&self) -> Result<NodeStatus, NodeError> {
        self.ask(Command::Status).await
    }

    /// A membership or leadership change.
    pub async fn admin(&self, op: AdminOp) -> Result<(), NodeError> {
        self.ask(|reply| Command::Admin(op, reply)).await?
    }
}
