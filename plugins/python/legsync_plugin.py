"""Write a legsync policy plugin in Python (contract legsync:policy@0.4.0).

Subclass `Policy`, override what you decide (every method has a default that
rebuilds everything), and export it from your app module under the name
componentize-py looks for:

    import legsync_plugin as legsync

    class NoPremium(legsync.Policy):
        def on_call_leg_sync(self, leg):
            return legsync.REFUSE if leg.called.startswith("1900") else legsync.REBUILD

    Policy = legsync.export(NoPremium)

Build (docs/plugin-guide.md, "Python"):

    componentize-py -d wit -w policy-plugin componentize app \\
        -p plugins/python -p . -o my-policy.wasm

The host sends legs in batches whose strings are spans of one byte buffer;
`legs(batch)` turns a batch into `CallLeg`s with real `str` fields, decoding
each span from the bytes (slicing a decoded `str` would count characters, not
bytes, and misread every leg after a non-ASCII NAP).
"""

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, List, Optional, Tuple, Type

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import datasets as _datasets
from wit_world.imports import host, types

#: The contract version this SDK builds plugins for.
CONTRACT_VERSION = "0.4.0"

CallLeg = types.CallLeg
Link = types.Link
Decision = types.Decision
Direction = types.Direction
# componentize-py 0.25 names the WIT enum `Protocol` in a module that also
# imports typing.Protocol: at run time it is the enum, mypy sees the other.
Protocol = types.Protocol  # type: ignore[attr-defined]
TerminationReason = types.TerminationReason
Mixer = types.Mixer
MixerJoin = types.MixerJoin
JoinRole = types.JoinRole

REBUILD = types.Decision.REBUILD
REFUSE = types.Decision.REFUSE


def _span_reader(text: bytes) -> Callable[[types.TextSpan], str]:
    def span(s: types.TextSpan) -> str:
        return text[s.start : s.start + s.len].decode("utf-8", errors="replace")

    return span


def legs(batch: types.LegBatch) -> List[CallLeg]:
    """The legs of a batch, their strings read from the batch's bytes."""
    span = _span_reader(batch.text)
    return [
        CallLeg(
            id=leg.id,
            session_id=leg.session_id,
            direction=leg.direction,
            protocol=leg.protocol,
            nap=span(leg.nap),
            calling=span(leg.calling),
            called=span(leg.called),
            offered_at_ms=leg.offered_at_ms,
            answered_at_ms=leg.answered_at_ms,
            linked_to=leg.linked_to,
        )
        for leg in batch.legs
    ]


@dataclass(frozen=True)
class Termination:
    """A leg that ended (`OnCallLegTerminated`). Every plugin hears of every
    leg that ends, including legs refused at a resync (by this plugin or
    another), which the host never held: a counter frees a slot only for a
    leg it counted."""

    #: The leg as the host last knew it.
    leg: CallLeg
    #: Why it ended.
    reason: TerminationReason
    #: Whether the host held the leg until now (False for a refused leg).
    held: bool
    #: The plugin that decided the leg at its last resync; None for a leg
    #: the host followed live from its setup.
    decided_by: Optional[str]


#: Reasons given during the current call: (item index, reason).
_reasons: List[Tuple[int, str]] = []
#: The item being decided, for `because`.
_current = [0]


def because(reason: str) -> None:
    """Says why the leg (or link) being decided gets its decision: a rule's
    name, say (typically for a refusal). The host shows it in the audit, a
    reload's blast radius and `legsync enforce`. From a batch override, use
    `because_at`."""
    _reasons.append((_current[0], reason))


def because_at(index: int, reason: str) -> None:
    """`because` for the item at `index` of the batch."""
    _reasons.append((index, reason))


def _explaining(body: Callable[[], List[Decision]]) -> List[Decision]:
    _reasons.clear()
    _current[0] = 0
    decisions = body()
    if _reasons:
        host.explain([types.Explained(index=i, reason=r) for i, r in _reasons])
        _reasons.clear()
    return decisions


#: Legs asked for per page by `held_legs` (the host's most).
_HELD_PAGE = 10_000


def held_legs() -> Iterator[Tuple[CallLeg, Optional[str]]]:
    """Every leg the host holds now, by ascending id, with the plugin that
    adopted it (None for a leg followed live from its setup). Call it from
    `__init__` to rebuild what the policy counts: a fresh instance (after a
    reload, a recycle, a failure) starts empty. The wait for the host does
    not count against the call's deadline."""
    after = 0
    while True:
        page = host.held_legs(after, _HELD_PAGE)
        span = _span_reader(page.batch.text)
        for leg, adopted_by in zip(legs(page.batch), page.adopted_by):
            yield leg, (span(adopted_by) or None)
        if page.next_after is None:
            return
        after = page.next_after


def count(name: str, delta: int = 1) -> None:
    """Adds `delta` to the plugin's counter `name`, exported by the host as
    `legsync_plugin_counter_total{plugin, counter}`. Names are 1 to 64 of
    a-z, 0-9 and _; at most 32 per plugin."""
    host.count(name, delta)


def _key_batch(keys: Iterable[str]) -> Tuple[_datasets.KeyBatch, List[bytes]]:
    encoded = [key.encode("utf-8") for key in keys]
    spans = []
    start = 0
    for key in encoded:
        spans.append(types.TextSpan(start=start, len=len(key)))
        start += len(key)
    return _datasets.KeyBatch(text=b"".join(encoded), keys=spans), encoded


class Dataset:
    """Reference data the host built from the operator's files and shares
    with the plugins granted it (`[policy.plugins.NAME] datasets = [...]`):
    a block list (set), a map, or a prefix table (rates by destination).
    Open it in `__init__` and keep it; look keys up a batch at a time (one
    host call per batch, whatever its size). A dataset the plugin was not
    granted raises `ValueError`, and the host rejects the plugin, naming it.
    """

    def __init__(self, name: str) -> None:
        try:
            info = _datasets.open(name)
        except Err as e:
            raise ValueError(str(e.value))
        self.name = name
        self._handle = info.handle
        #: `set`, `map` or `prefix-table`.
        self.kind = {
            _datasets.DatasetKind.SET: "set",
            _datasets.DatasetKind.MAP: "map",
            _datasets.DatasetKind.PREFIX_TABLE: "prefix-table",
        }[info.kind]
        #: The version (the first 16 hex digits of the file's SHA-256), as
        #: the host's audit names it.
        self.version = info.version
        #: Distinct keys.
        self.entries = info.entries

    def contains(self, keys: Iterable[str]) -> List[bool]:
        """For each key: whether the dataset has it, exactly."""
        batch, _ = _key_batch(keys)
        return list(_datasets.contains(self._handle, batch))

    def get(self, keys: Iterable[str]) -> List[Optional[str]]:
        """For each key: its value when the dataset has it exactly ("" for a
        key of a set), else None."""
        batch, _ = _key_batch(keys)
        found = _datasets.get(self._handle, batch)
        text = found.text
        return [
            None if hit is None else text[hit.value.start : hit.value.start + hit.value.len].decode()
            for hit in found.hits
        ]

    def longest_prefix(self, keys: Iterable[str]) -> List[Optional[Tuple[str, str]]]:
        """For each key: the longest of the dataset's keys that is a prefix
        of it, and its value, as (prefix, value); None when no key is."""
        batch, encoded = _key_batch(keys)
        found = _datasets.longest_prefix(self._handle, batch)
        text = found.text
        return [
            None
            if hit is None
            else (
                key[: hit.matched].decode(),
                text[hit.value.start : hit.value.start + hit.value.len].decode(),
            )
            for key, hit in zip(encoded, found.hits)
        ]


class Policy:
    """The decisions of one plugin. One object lives per plugin instance,
    built from the rules text (the plugin's `NAME.rules` sidecar, or "");
    raise `ValueError` in `__init__` to reject the rules with that message."""

    def __init__(self, rules: str) -> None:
        pass

    def on_call_leg_sync(self, leg: CallLeg) -> Decision:
        """`OnCallLegSync` for one leg the host did not know."""
        return REBUILD

    def on_link_sync(self, link: Link) -> Decision:
        """`OnLinkSync` for one link whose two legs were rebuilt."""
        return REBUILD

    def on_call_leg_terminated(self, ended: Termination) -> None:
        """`OnCallLegTerminated` for one leg that ended (notification only)."""

    def on_call_leg_sync_batch(self, legs: List[CallLeg]) -> List[Decision]:
        """A whole batch; override only to share work across it. Must return
        exactly one decision per leg, in order."""
        decisions = []
        for index, leg in enumerate(legs):
            _current[0] = index
            decisions.append(self.on_call_leg_sync(leg))
        return decisions

    def on_link_sync_batch(self, links: List[Link]) -> List[Decision]:
        """A whole batch of links; one decision per link, in order."""
        decisions = []
        for index, link in enumerate(links):
            _current[0] = index
            decisions.append(self.on_link_sync(link))
        return decisions

    def decides_mixers(self) -> bool:
        """Whether this policy decides conference mixers. False (the
        default): it abstains and does not vote on mixers at all."""
        return False

    def on_mixer_sync(self, mixer: Mixer) -> Decision:
        """The mixer decision for one mixer the host did not know (asked
        only when `decides_mixers()`); `mixer.joins` are its legs the host
        holds. A refused mixer is freed at the engine; its legs live on."""
        return REBUILD

    def on_mixer_terminated(self, mixer: Mixer, reason: TerminationReason) -> None:
        """A mixer the host held ended (its legs live on)."""

    def on_mixer_sync_batch(self, mixers: List[Mixer]) -> List[Decision]:
        """A whole batch of mixers; one decision per mixer, in order."""
        decisions = []
        for index, mixer in enumerate(mixers):
            _current[0] = index
            decisions.append(self.on_mixer_sync(mixer))
        return decisions


def export(policy_class: Type[Policy]) -> type:
    """The class to bind to the name `Policy` in your app module: it
    implements the contract's exports with an instance of `policy_class`."""
    state: List[Optional[Policy]] = [None]

    def policy() -> Policy:
        if state[0] is None:
            raise RuntimeError("legsync: a policy export was called before init")
        return state[0]

    class Export(exports.Policy):
        def init(self, config: str) -> None:
            try:
                state[0] = policy_class(config)
            except ValueError as e:
                raise Err(str(e))

        def on_call_leg_sync(self, batch: types.LegBatch) -> List[Decision]:
            return _explaining(lambda: policy().on_call_leg_sync_batch(legs(batch)))

        def on_link_sync(self, links: List[Link]) -> List[Decision]:
            return _explaining(lambda: policy().on_link_sync_batch(links))

        def on_call_leg_terminated(self, ended: List[types.TerminatedLeg]) -> None:
            p = policy()
            for t in ended:
                p.on_call_leg_terminated(Termination(t.leg, t.reason, t.held, t.decided_by))

        def on_mixer_sync(self, mixers: List[Mixer]) -> Optional[List[Decision]]:
            p = policy()
            if not p.decides_mixers():
                return None
            return _explaining(lambda: p.on_mixer_sync_batch(mixers))

        def on_mixer_terminated(self, ended: List[types.TerminatedMixer]) -> None:
            p = policy()
            for t in ended:
                p.on_mixer_terminated(t.mixer, t.reason)

    return Export


def _logger(level: host.Level) -> Callable[[str], None]:
    return lambda message: host.log(level, message)


#: One line to the host log, tagged with the plugin's name (capped per call).
trace = _logger(host.Level.TRACE)
debug = _logger(host.Level.DEBUG)
info = _logger(host.Level.INFO)
warn = _logger(host.Level.WARN)
error = _logger(host.Level.ERROR)


def now_ms() -> int:
    """The host's wall clock in Unix milliseconds (for call ages against
    `answered_at_ms`)."""
    return host.now_ms()
