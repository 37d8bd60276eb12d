"""`nap-cap` in Python: caps how many calls are held per NAP (trunk group).

The same policy as the Rust `nap-cap` plugin (plugins/nap-cap), and the same
rules text:

    default_max = 1000        # cap for NAPs not listed (absent: no cap)
    [max]
    SIP_CARRIER_A = 200

What it counts, per NAP: the legs it voted to rebuild, and the legs a
decision adopted that the host held when this instance started
(`held_legs()` in `__init__`: a reload, a recycled or failed instance starts
from the host's table, not from zero). Every leg that ends is announced to
every plugin: only a leg it counted frees a slot. State is per instance: run
it with `instances = 1`.
"""

from typing import Dict, List, Optional

import legsync_plugin as legsync


def parse_rules(text: str) -> "tuple[Optional[int], Dict[str, int]]":
    default_max: Optional[int] = None
    caps: Dict[str, int] = {}
    in_max = False
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            in_max = line == "[max]"
            if not in_max:
                raise ValueError(f"line {number}: unknown table {line}; only [max] exists")
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ValueError(f"line {number}: expected `key = number`")
        key = key.strip().strip('"')
        try:
            cap = int(value.strip())
        except ValueError:
            raise ValueError(f"line {number}: `{value.strip()}` is not a whole number")
        if in_max:
            caps[key] = cap
        elif key == "default_max":
            default_max = cap
        else:
            raise ValueError(f"line {number}: unknown key `{key}`")
    return default_max, caps


class NapCap(legsync.Policy):
    def __init__(self, rules: str) -> None:
        self.default_max, self.caps = parse_rules(rules)
        # Legs counted, per NAP, still up; and the NAP of each, by leg id.
        self.active: Dict[str, int] = {}
        self.counted: Dict[int, str] = {}
        for leg, adopted_by in legsync.held_legs():
            if adopted_by is not None:
                self.count(leg)

    def count(self, leg: legsync.CallLeg) -> None:
        if leg.id not in self.counted:
            self.counted[leg.id] = leg.nap
            self.active[leg.nap] = self.active.get(leg.nap, 0) + 1

    def on_call_leg_sync_batch(self, legs: List[legsync.CallLeg]) -> List[legsync.Decision]:
        decisions = []
        refused = 0
        for leg in legs:
            if leg.id in self.counted:
                decisions.append(legsync.REBUILD)
                continue
            cap = self.caps.get(leg.nap, self.default_max)
            if cap is not None and self.active.get(leg.nap, 0) >= cap:
                refused += 1
                decisions.append(legsync.REFUSE)
            else:
                self.count(leg)
                decisions.append(legsync.REBUILD)
        if refused:
            legsync.count("refused_over_cap", refused)
        return decisions

    def on_call_leg_terminated(self, ended: legsync.Termination) -> None:
        # Only a leg this instance counted frees a slot.
        nap = self.counted.pop(ended.leg.id, None)
        if nap is not None:
            self.active[nap] -= 1


Policy = legsync.export(NapCap)
