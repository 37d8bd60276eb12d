"""`rules` in Python: the `rules` plugin's decisions for its simpler rule sets.

The rules text is JSON (or TOML), in the `rules` plugin's format, limited to
these keys (anything else is refused at load, never ignored):

    {"default": "rebuild", "links": "rebuild",
     "rule": [{"name": "no premium", "action": "refuse",
               "nap": ["SIP_TEST"], "called_prefix": ["1900"],
               "calling_prefix": ["999"], "protocol": ["sip"],
               "direction": "inbound"}]}

Rules are tried in order; the first whose every condition holds decides; a
list means "any of these". Conference mixers have rules of their own
(`mixer_rule`: `name_prefix`, `more_legs_than`); without them the plugin
abstains from the mixer decision.
"""

import json
from typing import Any, Dict, List, Optional, Set

import legsync_plugin as legsync

ACTIONS = {"rebuild": legsync.REBUILD, "refuse": legsync.REFUSE}
RULE_KEYS = {"name", "action", "nap", "called_prefix", "calling_prefix", "protocol", "direction"}
PROTOCOLS = {"sip", "isdn", "ss7", "cas", "media-only"}
DIRECTIONS = {"inbound", "outbound"}


def parse_rules(text: str) -> Dict[str, Any]:
    if not text.strip():
        return {}
    if text.lstrip().startswith("{"):
        try:
            parsed: Dict[str, Any] = json.loads(text)
            return parsed
        except json.JSONDecodeError as e:
            raise ValueError(f"invalid JSON rules: {e}")
    import tomllib

    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"invalid TOML rules: {e}")


def action(value: Any, where: str) -> legsync.Decision:
    if value not in ACTIONS:
        raise ValueError(f"{where}: unknown action {value!r} (rebuild or refuse)")
    return ACTIONS[value]


class Rule:
    def __init__(self, index: int, spec: Dict[str, Any]) -> None:
        self.name: str = spec.get("name", f"rule {index + 1}")
        unknown = set(spec) - RULE_KEYS
        if unknown:
            raise ValueError(f"{self.name}: unknown key(s) {', '.join(sorted(unknown))}")
        self.action = action(spec.get("action"), self.name)
        self.nap: List[str] = spec.get("nap", [])
        self.called: List[str] = spec.get("called_prefix", [])
        self.calling: List[str] = spec.get("calling_prefix", [])
        self.protocols: Set[str] = set(spec.get("protocol", []))
        self.direction: Optional[str] = spec.get("direction")
        if self.protocols - PROTOCOLS:
            raise ValueError(f"{self.name}: unknown protocol(s) {sorted(self.protocols - PROTOCOLS)}")
        if self.direction is not None and self.direction not in DIRECTIONS:
            raise ValueError(f"{self.name}: unknown direction {self.direction!r}")
        if not (self.nap or self.called or self.calling or self.protocols or self.direction):
            raise ValueError(f"{self.name}: a rule without conditions matches every call")

    def matches(self, leg: legsync.CallLeg) -> bool:
        return (
            (not self.called or any(leg.called.startswith(p) for p in self.called))
            and (not self.calling or any(leg.calling.startswith(p) for p in self.calling))
            and (not self.nap or leg.nap in self.nap)
            and (not self.protocols or protocol_name(leg.protocol) in self.protocols)
            and (self.direction is None or leg.direction.name.lower() == self.direction)
        )


MIXER_RULE_KEYS = {"name", "action", "name_prefix", "more_legs_than"}


class MixerRule:
    def __init__(self, index: int, spec: Dict[str, Any]) -> None:
        self.name: str = spec.get("name", f"mixer rule {index + 1}")
        unknown = set(spec) - MIXER_RULE_KEYS
        if unknown:
            raise ValueError(f"{self.name}: unknown key(s) {', '.join(sorted(unknown))}")
        self.action = action(spec.get("action"), self.name)
        self.prefixes: List[str] = spec.get("name_prefix", [])
        self.most: Optional[int] = spec.get("more_legs_than")
        if not self.prefixes and self.most is None:
            raise ValueError(f"{self.name}: a mixer rule without conditions matches every mixer")

    def matches(self, mixer: legsync.Mixer) -> bool:
        return (not self.prefixes or any(mixer.name.startswith(p) for p in self.prefixes)) and (
            self.most is None or len(mixer.joins) > self.most
        )


def protocol_name(protocol: Any) -> str:
    name: str = protocol.name.lower().replace("_", "-")
    return name


class Rules(legsync.Policy):
    def __init__(self, rules: str) -> None:
        spec = parse_rules(rules)
        unknown = set(spec) - {"default", "links", "rule", "mixer_rule"}
        if unknown:
            raise ValueError(f"unknown key(s) {', '.join(sorted(unknown))}")
        self.default = action(spec.get("default", "rebuild"), "default")
        self.links = action(spec.get("links", "rebuild"), "links")
        self.rules = [Rule(i, r) for i, r in enumerate(spec.get("rule", []))]
        self.mixer_rules = [MixerRule(i, r) for i, r in enumerate(spec.get("mixer_rule", []))]
        legsync.info(f"loaded {len(self.rules)} rule(s), {len(self.mixer_rules)} mixer rule(s)")

    def on_call_leg_sync(self, leg: legsync.CallLeg) -> legsync.Decision:
        for rule in self.rules:
            if rule.matches(leg):
                if rule.action == legsync.REFUSE:
                    legsync.because(rule.name)
                return rule.action
        return self.default

    def on_link_sync(self, link: legsync.Link) -> legsync.Decision:
        return self.links

    def decides_mixers(self) -> bool:
        return bool(self.mixer_rules)

    def on_mixer_sync(self, mixer: legsync.Mixer) -> legsync.Decision:
        for rule in self.mixer_rules:
            if rule.matches(mixer):
                if rule.action == legsync.REFUSE:
                    legsync.because(rule.name)
                return rule.action
        return legsync.REBUILD


Policy = legsync.export(Rules)
