//! Batches of legs and links lowered straight from the host's model into a
//! plugin's memory.
//!
//! This is the hottest path of a resync: a million legs cross into the
//! plugin, then half a million links. A leg batch (`leg-batch`, since
//! contract 0.2.0) carries the text of all its legs in one buffer (bytes in
//! 0.3.0, a string in 0.2.0: the same bytes either way), so lowering it
//! costs two guest allocations per batch (the text and the list) instead of
//! three per leg: each allocation is a call into the guest, and with one per
//! string they were a third of the cost of deciding a leg.
//!
//! Wasmtime's derived lowering would write every field of every record
//! through its own bounds-checked view of guest memory (about twenty memory
//! look-ups per leg); the list lowerings below take one view of memory and
//! write the records in one pass. They use the same `Lower` hooks that
//! `#[derive(Lower)]` expands to (the `__internal` API of the pinned
//! wasmtime); the layout comes from the field types' canonical ABI, not from
//! hard-coded offsets, and the `fields` test fixture checks every field.
//!
//! The `public-lowering` feature builds the derived lowering instead (public
//! API only), to measure what the private path saves on a given wasmtime:
//! see benches/README.md.

use super::bindings::wit;
use crate::model;
#[cfg(not(feature = "public-lowering"))]
use std::mem::MaybeUninit;
#[cfg(not(feature = "public-lowering"))]
use std::sync::OnceLock;
#[cfg(not(feature = "public-lowering"))]
use wasmtime::component::__internal::{
    CanonicalAbiInfo, InterfaceType, LowerContext, bad_type_info, map_maybe_uninit,
    wasmtime_environ::component::StringEncoding,
};
use wasmtime::component::{ComponentType, Lower};

/// A `text-span`: `len` bytes of the batch's text from byte `start`.
#[derive(ComponentType, Lower, Clone, Copy, Debug, PartialEq, Eq)]
#[component(record)]
pub struct TextSpan {
    pub start: u32,
    pub len: u32,
}

/// A `packed-leg`: a leg's fields, its strings as spans of the batch text.
#[derive(ComponentType, Clone, Copy, Debug)]
#[cfg_attr(feature = "public-lowering", derive(Lower))]
#[component(record)]
pub struct PackedLeg {
    pub id: u64,
    #[component(name = "session-id")]
    pub session_id: u64,
    pub direction: wit::Direction,
    pub protocol: wit::Protocol,
    pub nap: TextSpan,
    pub calling: TextSpan,
    pub called: TextSpan,
    #[component(name = "offered-at-ms")]
    pub offered_at_ms: u64,
    #[component(name = "answered-at-ms")]
    pub answered_at_ms: Option<u64>,
    #[component(name = "linked-to")]
    pub linked_to: Option<u64>,
}

/// A `leg-batch` as lowered: the text (UTF-8 bytes) and the packed legs.
#[derive(ComponentType, Lower, Clone, Copy)]
#[component(record)]
pub struct LegBatchRef<'a> {
    pub text: &'a [u8],
    pub legs: &'a [PackedLeg],
}

/// A `terminated-leg` of contracts 0.3.0 and 0.2.0: without `held` and
/// `decided-by`.
#[derive(ComponentType, Lower, Clone, Debug)]
#[component(record)]
pub struct TerminatedLegV0_3 {
    pub leg: wit::CallLeg,
    pub reason: wit::TerminationReason,
}

/// A `leg-batch` of contract 0.2.0, whose text is a `string`: the same
/// bytes, lowered as a string (a memory copy either way).
#[derive(ComponentType, Lower, Clone, Copy)]
#[component(record)]
pub struct LegBatchV0_2<'a> {
    pub text: &'a str,
    pub legs: &'a [PackedLeg],
}

impl<'a> LegBatchRef<'a> {
    /// The same batch for a plugin built for contract 0.2.0.
    pub fn as_v0_2(self) -> LegBatchV0_2<'a> {
        LegBatchV0_2 {
            // Always whole: the text is built from `&str`s by `LegBatch`.
            text: std::str::from_utf8(self.text).expect("a batch's text is UTF-8"),
            legs: self.legs,
        }
    }
}

/// The legs of one plugin call, packed: their strings back to back in one
/// text, each leg pointing into it.
#[derive(Debug, Default)]
pub struct LegBatch {
    text: String,
    legs: Vec<PackedLeg>,
}

impl LegBatch {
    pub fn new(legs: &[model::CallLeg]) -> Self {
        let mut batch = LegBatch {
            text: String::with_capacity(legs.len() * 40),
            legs: Vec::with_capacity(legs.len()),
        };
        for leg in legs {
            let nap = batch.push_text(&leg.nap);
            let calling = batch.push_text(&leg.calling);
            let called = batch.push_text(&leg.called);
            batch.legs.push(PackedLeg {
                id: leg.id,
                session_id: leg.session_id,
                direction: leg.direction.into(),
                protocol: leg.protocol.into(),
                nap,
                calling,
                called,
                offered_at_ms: leg.offered_at_ms,
                answered_at_ms: leg.answered_at_ms,
                linked_to: leg.linked_to,
            });
        }
        batch
    }

    /// Appends a string; its span saturates past 4 GiB of text, where the
    /// lowering refuses the batch (the canonical ABI's limit is 2 GiB).
    fn push_text(&mut self, text: &str) -> TextSpan {
        let span = TextSpan {
            start: u32::try_from(self.text.len()).unwrap_or(u32::MAX),
            len: u32::try_from(text.len()).unwrap_or(u32::MAX),
        };
        self.text.push_str(text);
        span
    }

    /// The batch as the generated bindings type it (for `held-legs`, which
    /// is not on the hot path), with `names` appended to its text.
    fn into_wit(mut self, names: &[&str]) -> (wit::LegBatch, Vec<wit::TextSpan>) {
        let spans = names
            .iter()
            .map(|name| {
                let span = self.push_text(name);
                wit::TextSpan {
                    start: span.start,
                    len: span.len,
                }
            })
            .collect();
        let span = |s: TextSpan| wit::TextSpan {
            start: s.start,
            len: s.len,
        };
        let legs = self
            .legs
            .iter()
            .map(|leg| wit::PackedLeg {
                id: leg.id,
                session_id: leg.session_id,
                direction: leg.direction,
                protocol: leg.protocol,
                nap: span(leg.nap),
                calling: span(leg.calling),
                called: span(leg.called),
                offered_at_ms: leg.offered_at_ms,
                answered_at_ms: leg.answered_at_ms,
                linked_to: leg.linked_to,
            })
            .collect();
        let batch = wit::LegBatch {
            text: self.text.into_bytes(),
            legs,
        };
        (batch, spans)
    }

    /// Every leg of the batch.
    pub fn legs(&self) -> &[PackedLeg] {
        &self.legs
    }

    /// The batch's text with `legs`, all or some of the batch's own legs
    /// (their spans point into that text).
    pub fn with_legs<'a>(&'a self, legs: &'a [PackedLeg]) -> LegBatchRef<'a> {
        LegBatchRef {
            text: self.text.as_bytes(),
            legs,
        }
    }
}

#[cfg(not(feature = "public-lowering"))]
/// Byte offsets of the record's fields, in declaration order, from the
/// canonical ABI of each field's type.
struct Layout {
    id: usize,
    session_id: usize,
    direction: usize,
    protocol: usize,
    spans: [usize; 3],
    offered_at_ms: usize,
    answered_at_ms: usize,
    linked_to: usize,
    /// Where an `option<u64>`'s payload sits after its discriminant.
    option_payload: usize,
    /// Where a span's `len` sits after its `start`.
    span_len: usize,
}

#[cfg(not(feature = "public-lowering"))]
fn layout() -> &'static Layout {
    static LAYOUT: OnceLock<Layout> = OnceLock::new();
    LAYOUT.get_or_init(|| {
        let mut offset = 0;
        let mut next = |abi: CanonicalAbiInfo| abi.next_field32_size(&mut offset);
        let layout = Layout {
            id: next(u64::ABI),
            session_id: next(u64::ABI),
            direction: next(wit::Direction::ABI),
            protocol: next(wit::Protocol::ABI),
            spans: [
                next(TextSpan::ABI),
                next(TextSpan::ABI),
                next(TextSpan::ABI),
            ],
            offered_at_ms: next(u64::ABI),
            answered_at_ms: next(Option::<u64>::ABI),
            linked_to: next(Option::<u64>::ABI),
            option_payload: {
                let mut payload = 0;
                u8::ABI.next_field32_size(&mut payload);
                u64::ABI.next_field32_size(&mut payload)
            },
            span_len: {
                let mut end = 0;
                u32::ABI.next_field32_size(&mut end);
                u32::ABI.next_field32_size(&mut end)
            },
        };
        assert_eq!(offset, PackedLeg::SIZE32, "packed-leg layout");
        assert_eq!(
            (wit::Direction::SIZE32, wit::Protocol::SIZE32),
            (1, 1),
            "enum discriminants are one byte"
        );
        layout
    })
}

#[cfg(not(feature = "public-lowering"))]
unsafe impl Lower for PackedLeg {
    fn linear_lower_to_flat<T>(
        &self,
        cx: &mut LowerContext<'_, T>,
        ty: InterfaceType,
        dst: &mut MaybeUninit<Self::Lower>,
    ) -> wasmtime::Result<()> {
        let fields = match ty {
            InterfaceType::Record(i) => &cx.types[i].fields,
            _ => bad_type_info(),
        };
        let field = |i: usize| fields[i].ty;
        let (f0, f1, f2, f3, f4) = (field(0), field(1), field(2), field(3), field(4));
        let (f5, f6, f7, f8, f9) = (field(5), field(6), field(7), field(8), field(9));
        self.id
            .linear_lower_to_flat(cx, f0, map_maybe_uninit!(dst.id))?;
        (self.session_id).linear_lower_to_flat(cx, f1, map_maybe_uninit!(dst.session_id))?;
        (self.direction).linear_lower_to_flat(cx, f2, map_maybe_uninit!(dst.direction))?;
        (self.protocol).linear_lower_to_flat(cx, f3, map_maybe_uninit!(dst.protocol))?;
        self.nap
            .linear_lower_to_flat(cx, f4, map_maybe_uninit!(dst.nap))?;
        self.calling
            .linear_lower_to_flat(cx, f5, map_maybe_uninit!(dst.calling))?;
        self.called
            .linear_lower_to_flat(cx, f6, map_maybe_uninit!(dst.called))?;
        (self.offered_at_ms).linear_lower_to_flat(cx, f7, map_maybe_uninit!(dst.offered_at_ms))?;
        (self.answered_at_ms).linear_lower_to_flat(
            cx,
            f8,
            map_maybe_uninit!(dst.answered_at_ms),
        )?;
        (self.linked_to).linear_lower_to_flat(cx, f9, map_maybe_uninit!(dst.linked_to))?;
        Ok(())
    }

    fn linear_lower_to_memory<T>(
        &self,
        cx: &mut LowerContext<'_, T>,
        ty: InterfaceType,
        offset: usize,
    ) -> wasmtime::Result<()> {
        Self::linear_store_list_to_memory(cx, ty, offset, std::slice::from_ref(self))
    }

    /// Plain numbers, no allocation: one view of memory for the list. The
    /// spans are byte offsets into UTF-8 text, so a guest that asked for
    /// another string encoding cannot use them and the call fails.
    fn linear_store_list_to_memory<T>(
        cx: &mut LowerContext<'_, T>,
        ty: InterfaceType,
        offset: usize,
        legs: &[Self],
    ) -> wasmtime::Result<()> {
        if !matches!(ty, InterfaceType::Record(_)) {
            bad_type_info()
        }
        let encoding = cx.options().string_encoding;
        if encoding != StringEncoding::Utf8 {
            wasmtime::bail!(
                "the plugin asks for {encoding:?} strings; leg-batch spans are UTF-8 byte offsets"
            );
        }
        let layout = layout();
        store_records(cx, offset, legs, |leg, record| {
            leg.write_record(record, layout)
        })
    }
}

#[cfg(not(feature = "public-lowering"))]
impl PackedLeg {
    /// Writes the record's bytes (little-endian, as the canonical ABI says).
    fn write_record(&self, record: &mut [u8], layout: &Layout) {
        let mut put = |at: usize, bytes: &[u8]| record[at..at + bytes.len()].copy_from_slice(bytes);
        put(layout.id, &self.id.to_le_bytes());
        put(layout.session_id, &self.session_id.to_le_bytes());
        put(layout.direction, &[self.direction as u8]);
        put(layout.protocol, &[self.protocol as u8]);
        for (&at, span) in layout
            .spans
            .iter()
            .zip([self.nap, self.calling, self.called])
        {
            put(at, &span.start.to_le_bytes());
            put(at + layout.span_len, &span.len.to_le_bytes());
        }
        put(layout.offered_at_ms, &self.offered_at_ms.to_le_bytes());
        for (at, value) in [
            (layout.answered_at_ms, self.answered_at_ms),
            (layout.linked_to, self.linked_to),
        ] {
            put(at, &[u8::from(value.is_some())]);
            put(
                at + layout.option_payload,
                &value.unwrap_or(0).to_le_bytes(),
            );
        }
    }
}

/// A `link` record, lowered a whole list at a time.
#[derive(ComponentType, Clone, Copy)]
#[cfg_attr(feature = "public-lowering", derive(Lower))]
#[component(record)]
pub struct LinkRecord {
    pub id: u64,
    #[component(name = "leg-a")]
    pub leg_a: u64,
    #[component(name = "leg-b")]
    pub leg_b: u64,
}

impl From<&model::Link> for LinkRecord {
    fn from(link: &model::Link) -> Self {
        LinkRecord {
            id: link.id,
            leg_a: link.leg_a,
            leg_b: link.leg_b,
        }
    }
}

#[cfg(not(feature = "public-lowering"))]
unsafe impl Lower for LinkRecord {
    fn linear_lower_to_flat<T>(
        &self,
        cx: &mut LowerContext<'_, T>,
        ty: InterfaceType,
        dst: &mut MaybeUninit<Self::Lower>,
    ) -> wasmtime::Result<()> {
        let fields = match ty {
            InterfaceType::Record(i) => &cx.types[i].fields,
            _ => bad_type_info(),
        };
        let (f0, f1, f2) = (fields[0].ty, fields[1].ty, fields[2].ty);
        self.id
            .linear_lower_to_flat(cx, f0, map_maybe_uninit!(dst.id))?;
        self.leg_a
            .linear_lower_to_flat(cx, f1, map_maybe_uninit!(dst.leg_a))?;
        self.leg_b
            .linear_lower_to_flat(cx, f2, map_maybe_uninit!(dst.leg_b))?;
        Ok(())
    }

    fn linear_lower_to_memory<T>(
        &self,
        cx: &mut LowerContext<'_, T>,
        ty: InterfaceType,
        offset: usize,
    ) -> wasmtime::Result<()> {
        Self::linear_store_list_to_memory(cx, ty, offset, std::slice::from_ref(self))
    }

    /// Three `u64`s per link, no allocation: one view of memory for the list.
    fn linear_store_list_to_memory<T>(
        cx: &mut LowerContext<'_, T>,
        ty: InterfaceType,
        offset: usize,
        links: &[Self],
    ) -> wasmtime::Result<()> {
        if !matches!(ty, InterfaceType::Record(_)) {
            bad_type_info()
        }
        let mut offsets = [0; 3];
        let mut end = 0;
        for field in &mut offsets {
            *field = u64::ABI.next_field32_size(&mut end);
        }
        debug_assert_eq!(end, LinkRecord::SIZE32);
        store_records(cx, offset, links, |link, record| {
            for (at, value) in offsets.into_iter().zip([link.id, link.leg_a, link.leg_b]) {
                record[at..at + 8].copy_from_slice(&value.to_le_bytes());
            }
        })
    }
}

#[cfg(not(feature = "public-lowering"))]
/// Writes a list of records with no strings or lists inside (so nothing to
/// allocate) at `offset`, where `lower_list` has reserved and checked room
/// for them, through one view of guest memory: `write` fills one record.
fn store_records<T, R: ComponentType>(
    cx: &mut LowerContext<'_, T>,
    offset: usize,
    items: &[R],
    write: impl Fn(&R, &mut [u8]),
) -> wasmtime::Result<()> {
    let size = items.len() * R::SIZE32;
    let list = cx
        .as_slice_mut()
        .get_mut(offset..offset + size)
        .ok_or_else(|| wasmtime::format_err!("list lowering out of guest memory"))?;
    for (item, record) in items.iter().zip(list.chunks_exact_mut(R::SIZE32)) {
        write(item, record);
    }
    Ok(())
}

/// A `held-page` for a plugin: the legs packed as a `leg-batch`, each
/// adopter's name a span of the same text (empty for a leg followed live).
pub fn held_page(page: &super::held::HeldLegsPage) -> wit::HeldPage {
    let legs: Vec<model::CallLeg> = page.legs.iter().map(|(leg, _)| leg.clone()).collect();
    let names: Vec<&str> = page
        .legs
        .iter()
        .map(|(_, by)| match by.as_str() {
            model::LIVE => "",
            name => name,
        })
        .collect();
    let (batch, adopted_by) = LegBatch::new(&legs).into_wit(&names);
    wit::HeldPage {
        batch,
        adopted_by,
        next_after: page.next_after,
    }
}
