//! The ONE seam between the simulator and the protocol's anti-entropy session.
//!
//! The session (cursor, round cap, stop rule, fetch-before-push, chunking) is the protocol's
//! sans-IO state machine in `dpin_protocol::sync`, the same one the node drives: the world
//! calls `Initiator::poll` / `handle_response` for the initiating side and `respond` for the
//! answering side, encodes every request and answer with the real codec, and charges the
//! network their encoded size. Everything the simulator needs from it goes through these
//! re-exports, so a change of the core's API is one edit here.

pub use dpin_protocol::sync::{
    push_ack, respond, Initiator, InitiatorStep, ResponderAction, SessionConfig, SessionEnd,
    SessionError, MAX_SYNC_ROUNDS,
};
