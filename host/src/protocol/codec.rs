//! Framing: `u32` big-endian payload length, then the payload: one version
//! byte and a postcard-encoded message. A bad frame is an error for the
//! connection, never a panic.

use super::{OLDEST_PROTOCOL_VERSION, PROTOCOL_VERSION};
use bytes::{Buf, BytesMut};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::marker::PhantomData;
use tokio_util::codec::{Decoder, Encoder};

/// Why a connection's byte stream could not be understood.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    // The cause is in the message, not also a `source`: `{:#}` would
    // print it twice.
    #[error("connection error: {0}")]
    Io(std::io::Error),
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    Oversized { len: usize, max: usize },
    #[error("empty frame (no version byte)")]
    Empty,
    #[error(
        "frame of protocol version {found}; this side speaks {OLDEST_PROTOCOL_VERSION} to {PROTOCOL_VERSION}"
    )]
    UnknownVersion { found: u8 },
    #[error("malformed frame: {0}")]
    Malformed(postcard::Error),
}

impl From<std::io::Error> for ProtocolError {
    fn from(e: std::io::Error) -> Self {
        ProtocolError::Io(e)
    }
}

impl From<postcard::Error> for ProtocolError {
    fn from(e: postcard::Error) -> Self {
        ProtocolError::Malformed(e)
    }
}

impl ProtocolError {
    /// True when the peer sent bytes we cannot trust (as opposed to the
    /// connection itself failing).
    pub fn is_peer_fault(&self) -> bool {
        !matches!(self, ProtocolError::Io(_))
    }
}

/// Decodes `In` frames and encodes `Out` frames.
///
/// It reads frames of any version this build speaks (the first frame of a
/// connection tells an engine which one the host chose) and writes frames
/// of its own version, [`PROTOCOL_VERSION`] until [`FrameCodec::set_version`].
#[derive(Debug)]
pub struct FrameCodec<In, Out> {
    max_frame: usize,
    version: u8,
    _types: PhantomData<fn(Out) -> In>,
}

impl<In, Out> FrameCodec<In, Out> {
    pub fn new(max_frame: usize) -> Self {
        FrameCodec {
            max_frame,
            version: PROTOCOL_VERSION,
            _types: PhantomData,
        }
    }

    /// Writes frames of `version` from now on (one [`super::speaks`]).
    pub fn set_version(&mut self, version: u8) {
        debug_assert!(super::speaks(version));
        self.version = version;
    }

    /// The version this side writes.
    pub fn version(&self) -> u8 {
        self.version
    }
}

impl<In: DeserializeOwned, Out> Decoder for FrameCodec<In, Out> {
    type Item = In;
    type Error = ProtocolError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<In>, ProtocolError> {
        if src.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes(src[..4].try_into().expect("4 bytes")) as usize;
        if len > self.max_frame {
            return Err(ProtocolError::Oversized {
                len,
                max: self.max_frame,
            });
        }
        if src.len() < 4 + len {
            src.reserve(4 + len - src.len());
            return Ok(None);
        }
        src.advance(4);
        let payload = src.split_to(len);
        let (&version, body) = payload.split_first().ok_or(ProtocolError::Empty)?;
        if !super::speaks(version) {
            return Err(ProtocolError::UnknownVersion { found: version });
        }
        Ok(Some(postcard::from_bytes(body)?))
    }
}

impl<In, Out: Serialize> Encoder<Out> for FrameCodec<In, Out> {
    type Error = ProtocolError;

    fn encode(&mut self, item: Out, dst: &mut BytesMut) -> Result<(), ProtocolError> {
        dst.extend_from_slice(&encode_frame(&item, self.version, self.max_frame)?);
        Ok(())
    }
}

/// One leg as it appears inside a `SnapshotLegs` frame, for an engine that
/// keeps its legs encoded (see [`encode_encoded_legs_frame`]).
pub fn encode_leg(leg: &crate::model::CallLeg) -> Box<[u8]> {
    postcard::to_allocvec(leg)
        .expect("a leg always encodes: no maps, no unsized sequences")
        .into_boxed_slice()
}

/// `SnapshotLegs`'s variant index in `EngineMessage` (postcard encodes a
/// variant as its index; the test below holds this to the real enum).
const SNAPSHOT_LEGS_VARIANT: u8 = 3;

/// One whole `SnapshotLegs` frame from legs encoded by [`encode_leg`]: byte
/// for byte the frame of `EngineMessage::SnapshotLegs` with those legs.
pub fn encode_encoded_legs_frame(
    legs: &[&[u8]],
    version: u8,
    max_frame: usize,
) -> Result<bytes::Bytes, ProtocolError> {
    let body: usize = legs.iter().map(|leg| leg.len()).sum();
    let mut frame = Vec::with_capacity(16 + body);
    frame.extend_from_slice(&[0, 0, 0, 0, version, SNAPSHOT_LEGS_VARIANT]);
    let mut frame = postcard::to_extend(&(legs.len() as u64), frame)?;
    for leg in legs {
        frame.extend_from_slice(leg);
    }
    finish_frame(frame, max_frame)
}

/// One whole frame (length prefix included) for `message`, of protocol
/// `version`.
pub fn encode_frame(
    message: &impl Serialize,
    version: u8,
    max_frame: usize,
) -> Result<bytes::Bytes, ProtocolError> {
    let mut frame = Vec::with_capacity(64);
    frame.extend_from_slice(&[0, 0, 0, 0, version]);
    finish_frame(postcard::to_extend(message, frame)?, max_frame)
}

/// Checks the size and writes the length prefix of an encoded frame.
fn finish_frame(mut frame: Vec<u8>, max_frame: usize) -> Result<bytes::Bytes, ProtocolError> {
    let len = frame.len() - 4;
    if len > max_frame {
        return Err(ProtocolError::Oversized {
            len,
            max: max_frame,
        });
    }
    frame[..4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(frame.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{CallLeg, Link};
    use crate::protocol::{EngineEvent, EngineMessage, HostMessage};
    use bytes::BufMut;

    type EngineSide = FrameCodec<HostMessage, EngineMessage>;
    type HostSide = FrameCodec<EngineMessage, HostMessage>;

    fn leg(id: u64) -> CallLeg {
        CallLeg {
            id,
            session_id: 7,
            direction: Default::default(),
            protocol: Default::default(),
            nap: "SIP_A".into(),
            calling: "5145550100".into(),
            called: "18005550199".into(),
            offered_at_ms: 1,
            answered_at_ms: Some(2),
            linked_to: Some(id + 1),
            state: Default::default(),
        }
    }

    fn encode(msg: EngineMessage) -> BytesMut {
        let mut buf = BytesMut::new();
        EngineSide::new(1 << 20).encode(msg, &mut buf).unwrap();
        buf
    }

    #[test]
    fn messages_round_trip() {
        let messages = vec![
            EngineMessage::Hello {
                protocol: 1,
                boot_id: 42,
                engine: "sim".into(),
                epoch: 7,
            },
            EngineMessage::SnapshotLegs(vec![leg(1), leg(2)]),
            EngineMessage::SnapshotLinks(vec![Link {
                id: 1,
                leg_a: 1,
                leg_b: 2,
            }]),
            EngineMessage::Event(EngineEvent::LegAnswered(leg(3))),
            EngineMessage::SnapshotEnd,
        ];
        let mut buf = BytesMut::new();
        for m in &messages {
            buf.extend_from_slice(&encode(m.clone()));
        }
        let mut codec = HostSide::new(1 << 20);
        for m in messages {
            assert_eq!(codec.decode(&mut buf).unwrap(), Some(m));
        }
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        assert!(buf.is_empty());
    }

    #[test]
    fn a_frame_of_encoded_legs_encodes_like_the_owned_message() {
        for count in [0, 1, 2, 200] {
            let legs: Vec<CallLeg> = (1..=count).map(leg).collect();
            let encoded: Vec<Box<[u8]>> = legs.iter().map(encode_leg).collect();
            let parts: Vec<&[u8]> = encoded.iter().map(|leg| &**leg).collect();
            let fast = encode_encoded_legs_frame(&parts, PROTOCOL_VERSION, 1 << 20).unwrap();
            assert_eq!(
                &fast[..],
                &encode(EngineMessage::SnapshotLegs(legs))[..],
                "{count} legs"
            );
        }
        let one = [&*encode_leg(&leg(1))];
        assert!(matches!(
            encode_encoded_legs_frame(&one, PROTOCOL_VERSION, 10),
            Err(ProtocolError::Oversized { max: 10, .. })
        ));
    }

    #[test]
    fn a_truncated_frame_waits_for_more_bytes() {
        let full = encode(EngineMessage::SnapshotLegs(vec![leg(1)]));
        let mut codec = HostSide::new(1 << 20);
        for cut in 0..full.len() {
            let mut partial = BytesMut::from(&full[..cut]);
            assert_eq!(codec.decode(&mut partial).unwrap(), None, "cut at {cut}");
        }
    }

    #[test]
    fn an_oversized_frame_is_rejected_before_it_is_buffered() {
        let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xf0][..]);
        let err = HostSide::new(1024).decode(&mut buf).unwrap_err();
        assert!(
            matches!(
                err,
                ProtocolError::Oversized {
                    len: 0xffff_fff0,
                    max: 1024
                }
            ),
            "{err}"
        );
        assert!(err.is_peer_fault());
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        let mut codec = HostSide::new(1 << 20);
        for seed in 0u32..500 {
            let body: Vec<u8> = (0..(seed % 40))
                .map(|i| (seed.wrapping_mul(2654435761) >> (i % 24)) as u8)
                .collect();
            let mut buf = BytesMut::new();
            buf.put_u32(body.len() as u32 + 1);
            buf.put_u8(PROTOCOL_VERSION);
            buf.extend_from_slice(&body);
            // Any outcome but a panic is fine; most are Malformed.
            let _ = codec.decode(&mut buf);
        }
        let mut buf = BytesMut::from(&[0, 0, 0, 3, PROTOCOL_VERSION, 0xff, 0xff][..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(ProtocolError::Malformed(_))
        ));
    }

    /// A bounded fuzz run inside `cargo test`: valid frames of every
    /// message, mutated (bytes flipped, cut, spliced, lengths forged), fed
    /// to both sides' decoders. Whatever arrives, decoding returns a frame,
    /// asks for more, or names an error: it never panics and never
    /// allocates past the frame limit. Seeded (`LEGSYNC_FUZZ_SEED` replays,
    /// `LEGSYNC_FUZZ_CASES` runs longer).
    #[test]
    fn mutated_frames_never_panic_either_decoder() {
        let seed: u64 = std::env::var("LEGSYNC_FUZZ_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0xF00D);
        let cases: usize = std::env::var("LEGSYNC_FUZZ_CASES")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(20_000);
        let mut state = seed;
        let mut next = move || {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        let seeds: Vec<BytesMut> = vec![
            encode(EngineMessage::Hello {
                protocol: PROTOCOL_VERSION,
                boot_id: 1,
                engine: "sim".into(),
                epoch: 3,
            }),
            encode(EngineMessage::SnapshotBegin { legs: 2, links: 1 }),
            encode(EngineMessage::SnapshotLegs(vec![leg(1), leg(2)])),
            encode(EngineMessage::SnapshotLinks(vec![Link {
                id: 1,
                leg_a: 1,
                leg_b: 2,
            }])),
            encode(EngineMessage::Event(EngineEvent::LegAnswered(leg(3)))),
            encode(EngineMessage::Busy { reason: "x".into() }),
        ];
        for case in 0..cases {
            let mut bytes = seeds[next() as usize % seeds.len()].to_vec();
            for _ in 0..=(next() % 4) {
                match next() % 5 {
                    0 if !bytes.is_empty() => {
                        let at = next() as usize % bytes.len();
                        bytes[at] ^= 1 << (next() % 8);
                    }
                    1 if !bytes.is_empty() => bytes.truncate(next() as usize % bytes.len()),
                    2 => {
                        let other = &seeds[next() as usize % seeds.len()];
                        bytes.extend_from_slice(&other[..next() as usize % other.len()]);
                    }
                    3 if bytes.len() >= 4 => {
                        let forged = (next() as u32).to_be_bytes();
                        bytes[..4].copy_from_slice(&forged);
                    }
                    _ => bytes.extend((0..next() % 16).map(|_| next() as u8)),
                }
            }
            for side in 0..2 {
                let mut buf = BytesMut::from(&bytes[..]);
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    // Decode until the buffer is used up, asks for more, or errs.
                    for _ in 0..64 {
                        let progress = if side == 0 {
                            HostSide::new(1 << 16).decode(&mut buf).map(|m| m.is_some())
                        } else {
                            FrameCodec::<HostMessage, EngineMessage>::new(1 << 16)
                                .decode(&mut buf)
                                .map(|m| m.is_some())
                        };
                        if !matches!(progress, Ok(true)) {
                            break;
                        }
                    }
                    assert!(buf.capacity() <= (1 << 16) + 4 + bytes.len() * 2);
                }));
                assert!(
                    outcome.is_ok(),
                    "case {case} (seed {seed}) panicked the decoder on {bytes:?}"
                );
            }
        }
    }

    #[test]
    fn mixer_messages_round_trip_and_come_after_every_version_3_variant() {
        use crate::model::{Join, JoinRole, Mixer};
        use crate::protocol::{Command, HostMessage};
        let mixer = Mixer {
            id: 9,
            created_at_ms: 1_700_000_000_000,
            name: "conf-Ünïcode".into(),
        };
        let join = Join {
            mixer: 9,
            leg: 3,
            role: JoinRole::Listener,
        };
        let messages = vec![
            EngineMessage::SnapshotMixers(vec![mixer.clone()]),
            EngineMessage::SnapshotJoins(vec![join]),
            EngineMessage::Event(EngineEvent::MixerCreated(mixer)),
            EngineMessage::Event(EngineEvent::LegJoined(join)),
            EngineMessage::Event(EngineEvent::LegUnjoined { mixer: 9, leg: 3 }),
            EngineMessage::Event(EngineEvent::MixerFreed(9)),
        ];
        let mut codec = HostSide::new(1 << 20);
        for m in messages {
            let mut buf = encode(m.clone());
            assert_eq!(codec.decode(&mut buf).unwrap(), Some(m));
        }
        // Version 3's variants keep their indices (docs/protocol.md): the
        // new ones are appended, so a version 3 peer's frames decode as
        // they always did.
        let body = |m: &EngineMessage| postcard::to_allocvec(m).unwrap()[0];
        assert_eq!(body(&EngineMessage::Busy { reason: "x".into() }), 8);
        assert_eq!(body(&EngineMessage::SnapshotMixers(vec![])), 9);
        assert_eq!(body(&EngineMessage::SnapshotJoins(vec![])), 10);
        let event = |e: EngineEvent| postcard::to_allocvec(&e).unwrap()[0];
        assert_eq!(event(EngineEvent::LinkRemoved(1)), 6);
        assert_eq!(
            event(EngineEvent::MixerCreated(Mixer {
                id: 1,
                created_at_ms: 1,
                name: "".into()
            })),
            7
        );
        assert_eq!(event(EngineEvent::LegUnjoined { mixer: 1, leg: 1 }), 10);
        let command = |c: Command| postcard::to_allocvec(&c).unwrap()[0];
        assert_eq!(command(Command::DropLink(1)), 1);
        assert_eq!(command(Command::FreeMixer(1)), 2);
        assert_eq!(command(Command::UnjoinLeg { mixer: 1, leg: 1 }), 3);
        let mut buf = BytesMut::new();
        let mut host = FrameCodec::<EngineMessage, HostMessage>::new(1 << 20);
        host.encode(HostMessage::Heartbeat, &mut buf).unwrap();
        assert_eq!(buf[4], PROTOCOL_VERSION);
    }

    #[test]
    fn a_codec_set_to_version_3_writes_version_3_frames_that_a_newer_side_reads() {
        let mut engine = EngineSide::new(1 << 20);
        engine.set_version(OLDEST_PROTOCOL_VERSION);
        let mut buf = BytesMut::new();
        engine.encode(EngineMessage::Heartbeat, &mut buf).unwrap();
        assert_eq!(buf[4], 3);
        assert_eq!(
            HostSide::new(1 << 20).decode(&mut buf).unwrap(),
            Some(EngineMessage::Heartbeat)
        );
        let mut old = BytesMut::from(&[0, 0, 0, 2, 2, 1][..]);
        assert!(matches!(
            HostSide::new(1 << 20).decode(&mut old),
            Err(ProtocolError::UnknownVersion { found: 2 })
        ));
    }

    #[test]
    fn an_unknown_version_and_an_empty_frame_are_rejected() {
        let mut buf = BytesMut::from(&[0, 0, 0, 2, 9, 0][..]);
        let err = HostSide::new(1 << 20).decode(&mut buf).unwrap_err();
        assert!(
            matches!(err, ProtocolError::UnknownVersion { found: 9 }),
            "{err}"
        );
        let mut buf = BytesMut::from(&[0, 0, 0, 0][..]);
        assert!(matches!(
            HostSide::new(1 << 20).decode(&mut buf),
            Err(ProtocolError::Empty)
        ));
    }

    #[test]
    fn encoding_past_the_maximum_fails_and_leaves_the_buffer_clean() {
        let mut buf = BytesMut::from(&b"prior"[..]);
        let big = EngineMessage::SnapshotLegs((0..100).map(leg).collect());
        assert!(EngineSide::new(100).encode(big, &mut buf).is_err());
        assert_eq!(&buf[..], b"prior");
    }
}
