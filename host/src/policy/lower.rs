//! `call-leg` and `link` lists lowered straight from the host's model into a
//! plugin's memory.
//!
//! This is the hottest path of a resync: a million legs cross into the plugin
//! as lists of records with three strings each, then half a million links. Wasmtime's derived lowering
//! writes every field through its own bounds-checked view of guest memory
//! (about twenty memory look-ups per leg, most of the cost of a call). The
//! hand-written list lowering below allocates every string first (each
//! `realloc` is a guest call that may grow, and so move, memory), then takes
//! one view of memory and writes the strings and records in one pass.
//!
//! It uses the same `Lower` hooks that `#[derive(Lower)]` expands to (the
//! `__internal` API of the pinned wasmtime); the layout comes from the field
//! types' canonical ABI, not from hard-coded offsets, and a guest that asked
//! for another string encoding than UTF-8 gets the generic field-by-field path.

use super::bindings::wit;
use crate::model;
use std::mem::MaybeUninit;
use std::sync::OnceLock;
use wasmtime::component::__internal::{
    CanonicalAbiInfo, InterfaceType, LowerContext, bad_type_info, map_maybe_uninit,
    wasmtime_environ::component::StringEncoding,
};
use wasmtime::component::{ComponentType, Lower};

/// A `call-leg` record borrowing the host leg's strings: the generated
/// `wit::CallLeg` owns `String`s, and copying three of them per leg would cost
/// more than the plugin call itself.
#[derive(ComponentType, Clone, Copy)]
#[component(record)]
pub struct CallLegRef<'a> {
    pub id: u64,
    #[component(name = "session-id")]
    pub session_id: u64,
    pub direction: wit::Direction,
    pub protocol: wit::Protocol,
    pub nap: &'a str,
    pub calling: &'a str,
    pub called: &'a str,
    #[component(name = "offered-at-ms")]
    pub offered_at_ms: u64,
    #[component(name = "answered-at-ms")]
    pub answered_at_ms: Option<u64>,
    #[component(name = "linked-to")]
    pub linked_to: Option<u64>,
}

impl<'a> From<&'a model::CallLeg> for CallLegRef<'a> {
    fn from(leg: &'a model::CallLeg) -> Self {
        CallLegRef {
            id: leg.id,
            session_id: leg.session_id,
            direction: leg.direction.into(),
            protocol: leg.protocol.into(),
            nap: &leg.nap,
            calling: &leg.calling,
            called: &leg.called,
            offered_at_ms: leg.offered_at_ms,
            answered_at_ms: leg.answered_at_ms,
            linked_to: leg.linked_to,
        }
    }
}

/// Byte offsets of the record's fields, in declaration order, from the
/// canonical ABI of each field's type.
struct Layout {
    id: usize,
    session_id: usize,
    direction: usize,
    protocol: usize,
    strings: [usize; 3],
    offered_at_ms: usize,
    answered_at_ms: usize,
    linked_to: usize,
    /// Where an `option<u64>`'s payload sits after its discriminant.
    option_payload: usize,
}

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
            strings: [next(<&str>::ABI), next(<&str>::ABI), next(<&str>::ABI)],
            offered_at_ms: next(u64::ABI),
            answered_at_ms: next(Option::<u64>::ABI),
            linked_to: next(Option::<u64>::ABI),
            option_payload: {
                let mut payload = 0;
                u8::ABI.next_field32_size(&mut payload);
                u64::ABI.next_field32_size(&mut payload)
            },
        };
        assert_eq!(offset, CallLegRef::SIZE32, "call-leg layout");
        assert_eq!(
            (wit::Direction::SIZE32, wit::Protocol::SIZE32),
            (1, 1),
            "enum discriminants are one byte"
        );
        layout
    })
}

unsafe impl Lower for CallLegRef<'_> {
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

    fn linear_store_list_to_memory<T>(
        cx: &mut LowerContext<'_, T>,
        ty: InterfaceType,
        offset: usize,
        legs: &[Self],
    ) -> wasmtime::Result<()> {
        if !matches!(ty, InterfaceType::Record(_)) {
            bad_type_info()
        }
        if cx.options().string_encoding != StringEncoding::Utf8 {
            return store_field_by_field(cx, ty, offset, legs);
        }
        // Allocate first: every `realloc` may grow guest memory.
        let mut pointers = Vec::with_capacity(legs.len() * 3);
        for leg in legs {
            for text in leg.strings() {
                let len = checked_len(text)?;
                pointers.push((cx.realloc(0, 0, 1, text.len())?, len));
            }
        }
        // Then write through one view of memory. `realloc` checked each
        // string's range and `lower_list` the list's; memory only grows.
        let layout = layout();
        let memory = cx.as_slice_mut();
        let out_of_bounds = || wasmtime::format_err!("call-leg lowering out of guest memory");
        for (index, (leg, pointers)) in legs.iter().zip(pointers.chunks_exact(3)).enumerate() {
            for (text, &(pointer, _)) in leg.strings().iter().zip(pointers) {
                memory
                    .get_mut(pointer..pointer + text.len())
                    .ok_or_else(out_of_bounds)?
                    .copy_from_slice(text.as_bytes());
            }
            let start = offset + index * CallLegRef::SIZE32;
            let record = memory
                .get_mut(start..start + CallLegRef::SIZE32)
                .ok_or_else(out_of_bounds)?;
            leg.write_record(record, layout, pointers);
        }
        Ok(())
    }
}

impl CallLegRef<'_> {
    fn strings(&self) -> [&str; 3] {
        [self.nap, self.calling, self.called]
    }

    /// Writes the record's bytes (little-endian, as the canonical ABI says)
    /// with its strings already in guest memory at `strings`.
    fn write_record(&self, record: &mut [u8], layout: &Layout, strings: &[(usize, u32)]) {
        let mut put = |at: usize, bytes: &[u8]| record[at..at + bytes.len()].copy_from_slice(bytes);
        put(layout.id, &self.id.to_le_bytes());
        put(layout.session_id, &self.session_id.to_le_bytes());
        put(layout.direction, &[self.direction as u8]);
        put(layout.protocol, &[self.protocol as u8]);
        for (&at, &(pointer, len)) in layout.strings.iter().zip(strings) {
            // Pointers are 32-bit: `realloc` returned them as u32.
            put(at, &(pointer as u32).to_le_bytes());
            put(at + 4, &len.to_le_bytes());
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
        let size = links.len() * LinkRecord::SIZE32;
        let list = cx
            .as_slice_mut()
            .get_mut(offset..offset + size)
            .ok_or_else(|| wasmtime::format_err!("link lowering out of guest memory"))?;
        for (link, record) in links.iter().zip(list.chunks_exact_mut(LinkRecord::SIZE32)) {
            for (at, value) in offsets.into_iter().zip([link.id, link.leg_a, link.leg_b]) {
                record[at..at + 8].copy_from_slice(&value.to_le_bytes());
            }
        }
        Ok(())
    }
}

/// The canonical ABI's limit on one string's length.
fn checked_len(text: &str) -> wasmtime::Result<u32> {
    match u32::try_from(text.len()) {
        Ok(len) if len < 1 << 31 => Ok(len),
        _ => wasmtime::bail!("string of {} bytes too long for a plugin", text.len()),
    }
}

/// The generic path (what `#[derive(Lower)]` does), for guests that want
/// strings in another encoding than UTF-8.
fn store_field_by_field<T>(
    cx: &mut LowerContext<'_, T>,
    ty: InterfaceType,
    offset: usize,
    legs: &[CallLegRef<'_>],
) -> wasmtime::Result<()> {
    let InterfaceType::Record(i) = ty else {
        bad_type_info()
    };
    let fields: Vec<InterfaceType> = cx.types[i].fields.iter().map(|f| f.ty).collect();
    let layout = layout();
    for (index, leg) in legs.iter().enumerate() {
        let base = offset + index * CallLegRef::SIZE32;
        leg.id
            .linear_lower_to_memory(cx, fields[0], base + layout.id)?;
        (leg.session_id).linear_lower_to_memory(cx, fields[1], base + layout.session_id)?;
        (leg.direction).linear_lower_to_memory(cx, fields[2], base + layout.direction)?;
        (leg.protocol).linear_lower_to_memory(cx, fields[3], base + layout.protocol)?;
        for (k, text) in leg.strings().iter().enumerate() {
            text.linear_lower_to_memory(cx, fields[4 + k], base + layout.strings[k])?;
        }
        (leg.offered_at_ms).linear_lower_to_memory(cx, fields[7], base + layout.offered_at_ms)?;
        (leg.answered_at_ms).linear_lower_to_memory(cx, fields[8], base + layout.answered_at_ms)?;
        (leg.linked_to).linear_lower_to_memory(cx, fields[9], base + layout.linked_to)?;
    }
    Ok(())
}
