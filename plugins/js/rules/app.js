// `rules` in JavaScript: the `rules` plugin's decisions for its simpler rule
// sets. The rules text is JSON in the `rules` plugin's format, limited to
// these keys (anything else is refused at load, never ignored):
//
//     {"default": "rebuild", "links": "rebuild",
//      "rule": [{"name": "no premium", "action": "refuse",
//                "nap": ["SIP_TEST"], "called_prefix": ["1900"],
//                "calling_prefix": ["999"], "protocol": ["sip"],
//                "direction": "inbound"}]}
//
// Rules are tried in order; the first whose every condition holds decides;
// a list means "any of these". Conference mixers have rules of their own
// (`mixer_rule`: `name_prefix`, `more_legs_than`); without them the plugin
// abstains from the mixer decision.

import { Policy, REBUILD, REFUSE, because, exportPolicy, info } from '../legsync.js';

const ACTIONS = { rebuild: REBUILD, refuse: REFUSE };
const RULE_KEYS = new Set(['name', 'action', 'nap', 'called_prefix', 'calling_prefix', 'protocol', 'direction']);
const PROTOCOLS = new Set(['sip', 'isdn', 'ss7', 'cas', 'media-only']);
const DIRECTIONS = new Set(['inbound', 'outbound']);

function action(value, where) {
  if (!(value in ACTIONS)) {
    throw new Error(`${where}: unknown action ${JSON.stringify(value)} (rebuild or refuse)`);
  }
  return ACTIONS[value];
}

function unknownKeys(spec, allowed) {
  return Object.keys(spec).filter((k) => !allowed.has(k)).sort();
}

class Rule {
  constructor(index, spec) {
    this.name = spec.name ?? `rule ${index + 1}`;
    const unknown = unknownKeys(spec, RULE_KEYS);
    if (unknown.length) {
      throw new Error(`${this.name}: unknown key(s) ${unknown.join(', ')}`);
    }
    this.action = action(spec.action, this.name);
    this.nap = spec.nap ?? [];
    this.called = spec.called_prefix ?? [];
    this.calling = spec.calling_prefix ?? [];
    this.protocols = new Set(spec.protocol ?? []);
    this.direction = spec.direction;
    for (const p of this.protocols) {
      if (!PROTOCOLS.has(p)) throw new Error(`${this.name}: unknown protocol ${JSON.stringify(p)}`);
    }
    if (this.direction !== undefined && !DIRECTIONS.has(this.direction)) {
      throw new Error(`${this.name}: unknown direction ${JSON.stringify(this.direction)}`);
    }
    if (!(this.nap.length || this.called.length || this.calling.length || this.protocols.size || this.direction)) {
      throw new Error(`${this.name}: a rule without conditions matches every call`);
    }
  }

  matches(leg) {
    return (
      (!this.called.length || this.called.some((p) => leg.called.startsWith(p))) &&
      (!this.calling.length || this.calling.some((p) => leg.calling.startsWith(p))) &&
      (!this.nap.length || this.nap.includes(leg.nap)) &&
      (!this.protocols.size || this.protocols.has(leg.protocol)) &&
      (this.direction === undefined || leg.direction === this.direction)
    );
  }
}

const MIXER_RULE_KEYS = new Set(['name', 'action', 'name_prefix', 'more_legs_than']);

class MixerRule {
  constructor(index, spec) {
    this.name = spec.name ?? `mixer rule ${index + 1}`;
    const unknown = unknownKeys(spec, MIXER_RULE_KEYS);
    if (unknown.length) {
      throw new Error(`${this.name}: unknown key(s) ${unknown.join(', ')}`);
    }
    this.action = action(spec.action, this.name);
    this.prefixes = spec.name_prefix ?? [];
    this.most = spec.more_legs_than;
    if (!this.prefixes.length && this.most === undefined) {
      throw new Error(`${this.name}: a mixer rule without conditions matches every mixer`);
    }
  }

  matches(mixer) {
    return (
      (!this.prefixes.length || this.prefixes.some((p) => mixer.name.startsWith(p))) &&
      (this.most === undefined || mixer.joins.length > this.most)
    );
  }
}

class Rules extends Policy {
  constructor(text) {
    super(text);
    let spec = {};
    if (text.trim()) {
      try {
        spec = JSON.parse(text);
      } catch (e) {
        throw new Error(`invalid JSON rules: ${e.message}`);
      }
    }
    const unknown = unknownKeys(spec, new Set(['default', 'links', 'rule', 'mixer_rule']));
    if (unknown.length) throw new Error(`unknown key(s) ${unknown.join(', ')}`);
    this.default = action(spec.default ?? 'rebuild', 'default');
    this.links = action(spec.links ?? 'rebuild', 'links');
    this.rules = (spec.rule ?? []).map((r, i) => new Rule(i, r));
    this.mixerRules = (spec.mixer_rule ?? []).map((r, i) => new MixerRule(i, r));
    info(`loaded ${this.rules.length} rule(s), ${this.mixerRules.length} mixer rule(s)`);
  }

  decidesMixers() {
    return this.mixerRules.length > 0;
  }

  onMixerSync(mixer) {
    for (const rule of this.mixerRules) {
      if (rule.matches(mixer)) {
        if (rule.action === REFUSE) because(rule.name);
        return rule.action;
      }
    }
    return REBUILD;
  }

  onCallLegSync(leg) {
    for (const rule of this.rules) {
      if (rule.matches(leg)) {
        if (rule.action === REFUSE) because(rule.name);
        return rule.action;
      }
    }
    return this.default;
  }

  onLinkSync(_link) {
    return this.links;
  }
}

export const policy = exportPolicy(Rules);
