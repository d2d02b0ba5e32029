//! `kafka_request`: bytes a Kafka client sent, split into size-prefixed frames as on the
//! wire, fed to a booted single-node broker ([`SimBroker`]) through
//! [`serve_connection`] — the same decoding, dispatch and response encoding as production.
//!
//! Checked: nothing panics; the broker never stops (no client input may kill it); every
//! request that decodes gets a response that decodes at the request's version and carries
//! its correlation id (Produce with acks=0: none), and only undecodable requests close the
//! connection; the served data is committed data: no high watermark or listed offset beyond
//! a log's commit end, fetched batches pass their CRC and end below the high watermark, and
//! every group's commit end lies within its log (after each request).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use fjord::kafka::codec::{self, CodecError};
use fjord::kafka::server::{
    memory_connection_pair, serve_connection, ConnectionClose, ConnectionLimits, FrameConnection,
    FrameWriter,
};
use fjord_log::{BatchHeader, BatchIter};
use fjord_replication::multiraft::GroupId;
use futures::task::LocalSpawnExt;
use futures::FutureExt;
use kafka_protocol::messages::{ApiKey, RequestKind, ResponseKind};

use crate::broker_sim::SimBroker;

/// Frames one input may carry.
const FRAMES_MAX_COUNT: usize = 32;
/// Fake time a request may take before the run stops waiting (long polls, rebalances).
const REQUEST_TIME_MAX_MS: u64 = 3_000;
/// Fake time between an answer and the next request (a client's think time: new
/// partitions elect their leaders, coordinators load).
const THINK_TIME_MS: u64 = 50;

pub fn run(data: &[u8]) {
    run_frames(&split_frames(data));
}

/// Kafka framing: a big-endian `i32` size, then that many bytes. A last frame shorter than
/// its size is taken as it is; a negative size takes the rest of the input.
pub fn split_frames(mut data: &[u8]) -> Vec<Bytes> {
    let mut frames = Vec::new();
    while data.len() >= 4 && frames.len() < FRAMES_MAX_COUNT {
        let size = i32::from_be_bytes([data[0], data[1], data[2], data[3]]);
        data = &data[4..];
        let size = usize::try_from(size).unwrap_or(data.len()).min(data.len());
        frames.push(Bytes::copy_from_slice(&data[..size]));
        data = &data[size..];
    }
    frames
}

/// What a frame should get back.
enum Expect {
    /// A response to `api_key` at `version` (with the frame's correlation id).
    Response {
        api_key: ApiKey,
        version: i16,
        correlation_id: i32,
        request: Option<Box<RequestKind>>,
    },
    /// Nothing (Produce with acks=0).
    Nothing,
    /// The connection closes (undecodable).
    Close,
}

fn expectation(frame: &Bytes) -> Expect {
    match codec::decode_request(frame.clone()) {
        Ok(req) => {
            if matches!(&req.body, RequestKind::Produce(p) if p.acks == 0) {
                return Expect::Nothing;
            }
            Expect::Response {
                api_key: req.api_key,
                version: req.api_version,
                correlation_id: req.correlation_id(),
                request: Some(Box::new(req.body)),
            }
        }
        Err(CodecError::UnsupportedVersion {
            api_key: ApiKey::ApiVersions,
            correlation_id,
            ..
        }) => Expect::Response {
            api_key: ApiKey::ApiVersions,
            version: 0,
            correlation_id,
            request: None,
        },
        Err(_) => Expect::Close,
    }
}

type Shared<T> = Arc<Mutex<T>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sends `frames` one at a time over one connection, each after the previous one was
/// answered, checking every answer and the broker's invariants.
pub fn run_frames(frames: &[Bytes]) {
    let mut session = Session::open();
    for frame in frames {
        if session.send(frame.clone()) == Sent::End {
            return;
        }
    }
}

/// What became of a request.
#[derive(Debug, PartialEq)]
pub enum Sent {
    Answered(Box<ResponseKind>),
    /// Produce with acks=0.
    NoAnswer,
    /// The connection closed, or the request is still waiting (a long poll, a rebalance):
    /// later requests would queue behind it, so the run ends.
    End,
}

/// One client connection to a booted single-node broker.
pub struct Session {
    pub sim: SimBroker,
    writer: Box<dyn FrameWriter>,
    responses: Shared<Vec<Bytes>>,
    closed: Shared<Option<ConnectionClose>>,
}

impl Session {
    pub fn open() -> Session {
        let mut sim = SimBroker::boot();
        let (client, server) =
            memory_connection_pair(FRAMES_MAX_COUNT + 1, "fuzz-client", "broker");
        let closed: Shared<Option<ConnectionClose>> = Arc::default();
        let responses: Shared<Vec<Bytes>> = Arc::default();
        let handler = Arc::new(sim.handle.clone());
        let close_slot = Arc::clone(&closed);
        sim.pool
            .spawner()
            .spawn_local(async move {
                let limits = ConnectionLimits::default();
                let close = serve_connection(Box::new(server), handler, limits, 1).await;
                *lock(&close_slot) = Some(close);
            })
            .expect("pool accepts tasks");
        let (mut reader, writer) = Box::new(client).split();
        let inbox = Arc::clone(&responses);
        sim.pool
            .spawner()
            .spawn_local(async move {
                while let Ok(Some(frame)) = reader.recv_frame().await {
                    lock(&inbox).push(frame);
                }
            })
            .expect("pool accepts tasks");
        sim.run_until_stalled();
        Session {
            sim,
            writer,
            responses,
            closed,
        }
    }

    /// Lets `ms` of fake time pass (sessions expire, delayed rebalances complete).
    pub fn wait(&mut self, ms: u64) {
        self.sim.run_until(ms, |_| false);
        assert!(
            self.sim.outcome().is_none(),
            "the broker stopped while idle"
        );
        self.sim.check_invariants();
    }

    /// Sends one request frame and checks what comes of it.
    pub fn send(&mut self, frame: Bytes) -> Sent {
        if lock(&self.closed).is_some() {
            return Sent::End;
        }
        let expect = expectation(&frame);
        self.writer
            .send_frame(frame)
            .now_or_never()
            .expect("the connection has room")
            .expect("the broker end is open");
        let (responses, closed) = (Arc::clone(&self.responses), Arc::clone(&self.closed));
        let answered = self.sim.run_until(REQUEST_TIME_MAX_MS, |_| {
            !lock(&responses).is_empty() || lock(&closed).is_some()
        });
        if let Some(close) = lock(&self.closed).as_ref() {
            check_close(close, &expect);
        }
        if let Some(outcome) = self.sim.outcome() {
            panic!("a client request stopped the broker: {outcome:?}");
        }
        self.sim.check_invariants();
        let response = lock(&self.responses).pop();
        let outcome = self.check_answer(expect, response, answered);
        if outcome != Sent::End {
            self.sim.run_until(THINK_TIME_MS, |_| false);
        }
        outcome
    }

    fn check_answer(&mut self, expect: Expect, response: Option<Bytes>, answered: bool) -> Sent {
        match expect {
            Expect::Close => {
                assert!(answered, "an undecodable request closes the connection");
                assert!(response.is_none(), "no answer to an undecodable request");
                Sent::End
            }
            Expect::Nothing => {
                assert!(response.is_none(), "acks=0 is never answered");
                Sent::NoAnswer
            }
            Expect::Response {
                api_key,
                version,
                correlation_id,
                request,
            } => {
                let Some(response) = response else {
                    return Sent::End;
                };
                let (header, body) = codec::decode_response(api_key, version, response)
                    .unwrap_or_else(|e| panic!("{api_key:?} v{version} response: {e}"));
                assert_eq!(header.correlation_id, correlation_id);
                check_response(&mut self.sim, request.as_deref(), &body);
                Sent::Answered(Box::new(body))
            }
        }
    }
}

fn check_close(close: &ConnectionClose, expect: &Expect) {
    match close {
        ConnectionClose::Codec(CodecError::Encode { .. } | CodecError::Mismatch { .. }) => {
            panic!("a response did not encode: {close}")
        }
        ConnectionClose::Codec(_) => assert!(
            matches!(expect, Expect::Close),
            "the connection closed on a decodable request: {close}"
        ),
        other => panic!("unexpected close: {other}"),
    }
}

/// Commit end and log end of every partition, by (topic name, partition).
fn partition_ends(sim: &mut SimBroker) -> BTreeMap<(String, i32), (u64, u64)> {
    let Some(status) = sim.status() else {
        return BTreeMap::new();
    };
    let mut out = BTreeMap::new();
    for (name, topic) in &status.topics {
        for (group, s) in status
            .groups
            .range(GroupId::new(*topic, 0)..=GroupId::new(*topic, u32::MAX))
        {
            out.insert(
                (name.clone(), group.partition as i32),
                (s.commit_end, s.log_end),
            );
        }
    }
    out
}

/// Served offsets are committed offsets.
fn check_response(sim: &mut SimBroker, request: Option<&RequestKind>, body: &ResponseKind) {
    let ends = partition_ends(sim);
    let commit_of = |topic: &str, partition: i32| ends.get(&(topic.to_string(), partition));
    match body {
        ResponseKind::Fetch(f) => {
            for t in &f.responses {
                for p in &t.partitions {
                    let Some(&(commit, _)) = commit_of(t.topic.as_str(), p.partition_index) else {
                        continue;
                    };
                    if p.error_code != 0 {
                        continue;
                    }
                    let hw = u64::try_from(p.high_watermark).expect("a high watermark");
                    assert!(
                        hw <= commit,
                        "fetch high watermark {hw} beyond commit {commit}"
                    );
                    assert!(p.last_stable_offset <= p.high_watermark);
                    assert!(p.log_start_offset <= p.high_watermark);
                    let records = p.records.clone().unwrap_or_default();
                    for item in BatchIter::new(&records) {
                        let (header, bytes) = item.expect("fetched batches are whole");
                        BatchHeader::validate(bytes).expect("fetched batches pass their CRC");
                        assert!(
                            header.next_offset() <= hw,
                            "fetched batch ends at {} beyond the high watermark {hw}",
                            header.next_offset()
                        );
                    }
                }
            }
        }
        ResponseKind::ListOffsets(l) => {
            for t in &l.topics {
                for p in &t.partitions {
                    let Some(&(commit, _)) = commit_of(t.name.as_str(), p.partition_index) else {
                        continue;
                    };
                    if p.error_code == 0 {
                        assert!(
                            p.offset <= commit as i64,
                            "listed offset {} beyond commit {commit}",
                            p.offset
                        );
                    }
                }
            }
        }
        ResponseKind::Produce(resp) => {
            let acks = match request {
                Some(RequestKind::Produce(p)) => p.acks,
                _ => 1,
            };
            for t in &resp.responses {
                for p in &t.partition_responses {
                    let Some(&(commit, end)) = commit_of(t.name.as_str(), p.index) else {
                        continue;
                    };
                    if p.error_code == 0 {
                        assert!(
                            (p.base_offset as u64) < end,
                            "produced at {} beyond the log end {end}",
                            p.base_offset
                        );
                        if acks == -1 {
                            assert!(
                                (p.base_offset as u64) < commit,
                                "acks=all answered before commit"
                            );
                        }
                    }
                }
            }
        }
        _ => {}
    }
}

/// Seeds are the client captures under fuzz/corpus/kafka_request (see fuzz/README.md); the
/// built-in ones are those of the structured target, framed.
pub fn seeds() -> Vec<Vec<u8>> {
    crate::kafka_structured::seed_streams()
}
