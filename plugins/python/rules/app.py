"""`rules` in Python: the `rules` plugin's decisions for its simpler rule sets.

The rules text is JSON (or TOML), in the `rules` plugin's format, limited to
these keys (anything else is refused at load, never ignored):

    {"default": "rebuild", "links": "rebuild",
     "rule": [{"name": "no premium", "action": "refuse",
               "nap": ["SIP_TEST"], "called_prefix": ["1900"],
               "calling_prefix": ["999"], "protocol": ["sip"],
               "direction": "inbound"}]}

Rules are tried in order; the first whose every condition holds decides; a
list means "any of these".
"""

import json

import legsync_plugin as legsync

ACTIONS = {"rebuild": legsync.REBUILD, "refuse": legsync.REFUSE}
RULE_KEYS = {"name", "action", "nap", "called_prefix", "calling_prefix", "protocol", "direction"}
PROTOCOLS = {"sip", "isdn", "ss7", "cas", "media-only"}
DIRECTIONS = {"inbound", "outbound"}


def parse_rules(text):
    if not text.strip():
        return {}
    if text.lstrip().startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"invalid JSON rules: {e}")
    import tomllib

    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"invalid TOML rules: {e}")


def action(value, where):
    if value not in ACTIONS:
        raise ValueError(f"{where}: unknown action {value!r} (rebuild or refuse)")
    return ACTIONS[value]


class Rule:
    def __init__(self, index, spec):
        self.name = spec.get("name", f"rule {index + 1}")
        unknown = set(spec) - RULE_KEYS
        if unknown:
            raise ValueError(f"{self.name}: unknown key(s) {', '.join(sorted(unknown))}")
        self.action = action(spec.get("action"), self.name)
        self.nap = spec.get("nap", [])
        self.called = spec.get("called_prefix", [])
        self.calling = spec.get("calling_prefix", [])
        self.protocols = set(spec.get("protocol", []))
        self.direction = spec.get("direction")
        if self.protocols - PROTOCOLS:
            raise ValueError(f"{self.name}: unknown protocol(s) {sorted(self.protocols - PROTOCOLS)}")
        if self.direction is not None and self.direction not in DIRECTIONS:
            raise ValueError(f"{self.name}: unknown direction {self.direction!r}")
        if not (self.nap or self.called or self.calling or self.protocols or self.direction):
            raise ValueError(f"{self.name}: a rule without conditions matches every call")

    def matches(self, leg):
        return (
            (not self.called or any(leg.called.startswith(p) for p in self.called))
            and (not self.calling or any(leg.calling.startswith(p) for p in self.calling))
            and (not self.nap or leg.nap in self.nap)
            and (not self.protocols or protocol_name(leg.protocol) in self.protocols)
            and (self.direction is None or leg.direction.name.lower() == self.direction)
        )


def protocol_name(protocol):
    return protocol.name.lower().replace("_", "-")


class Rules(legsync.Policy):
    def __init__(self, rules):
        spec = parse_rules(rules)
        unknown = set(spec) - {"default", "links", "rule"}
        if unknown:
            raise ValueError(f"unknown key(s) {', '.join(sorted(unknown))}")
        self.default = action(spec.get("default", "rebuild"), "default")
        self.links = action(spec.get("links", "rebuild"), "links")
        self.rules = [Rule(i, r) for i, r in enumerate(spec.get("rule", []))]
        legsync.info(f"loaded {len(self.rules)} rule(s)")

    def on_call_leg_sync(self, leg):
        for rule in self.rules:
            if rule.matches(leg):
                return rule.action
        return self.default

    def on_link_sync(self, link):
        return self.links


Policy = legsync.export(Rules)
