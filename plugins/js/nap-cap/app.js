// `nap-cap` in JavaScript: caps how many calls are held per NAP (trunk
// group). The same policy as the Rust `nap-cap` plugin (plugins/nap-cap),
// and the same rules text:
//
//     default_max = 1000        # cap for NAPs not listed (absent: no cap)
//     [max]
//     SIP_CARRIER_A = 200
//
// What it counts, per NAP: the legs it voted to rebuild, and the legs a
// decision adopted that the host held when this instance started
// (`heldLegs()` in the constructor: a reload, a recycled or failed instance
// starts from the host's table, not from zero). Every leg that ends is
// announced to every plugin: only a leg it counted frees a slot. State is
// per instance: run it with `instances = 1`.

import { Policy, REBUILD, REFUSE, count, exportPolicy, heldLegs } from '../legsync.js';

function parseRules(text) {
  let defaultMax = null;
  const caps = new Map();
  let inMax = false;
  text.split('\n').forEach((raw, index) => {
    const number = index + 1;
    const line = raw.split('#')[0].trim();
    if (line === '') {
      return;
    }
    if (line.startsWith('[')) {
      inMax = line === '[max]';
      if (!inMax) {
        throw new Error(`line ${number}: unknown table ${line}; only [max] exists`);
      }
      return;
    }
    const eq = line.indexOf('=');
    if (eq < 0) {
      throw new Error(`line ${number}: expected \`key = number\``);
    }
    const key = line.slice(0, eq).trim().replace(/^"|"$/g, '');
    const value = line.slice(eq + 1).trim();
    if (!/^[0-9]+$/.test(value)) {
      throw new Error(`line ${number}: \`${value}\` is not a whole number`);
    }
    if (inMax) {
      caps.set(key, Number(value));
    } else if (key === 'default_max') {
      defaultMax = Number(value);
    } else {
      throw new Error(`line ${number}: unknown key \`${key}\``);
    }
  });
  return { defaultMax, caps };
}

class NapCap extends Policy {
  constructor(rules) {
    super(rules);
    const { defaultMax, caps } = parseRules(rules);
    this.defaultMax = defaultMax;
    this.caps = caps;
    // Legs counted, per NAP, still up; and the NAP of each, by leg id.
    this.active = new Map();
    this.counted = new Map();
    for (const { leg, adoptedBy } of heldLegs()) {
      if (adoptedBy !== null) {
        this.count(leg);
      }
    }
  }

  count(leg) {
    if (!this.counted.has(leg.id)) {
      this.counted.set(leg.id, leg.nap);
      this.active.set(leg.nap, (this.active.get(leg.nap) ?? 0) + 1);
    }
  }

  onCallLegSyncBatch(legs) {
    let refused = 0;
    const decisions = legs.map((leg) => {
      if (this.counted.has(leg.id)) {
        return REBUILD;
      }
      const cap = this.caps.get(leg.nap) ?? this.defaultMax;
      if (cap !== null && (this.active.get(leg.nap) ?? 0) >= cap) {
        refused += 1;
        return REFUSE;
      }
      this.count(leg);
      return REBUILD;
    });
    if (refused > 0) {
      count('refused_over_cap', refused);
    }
    return decisions;
  }

  onCallLegTerminated(ended) {
    // Only a leg this instance counted frees a slot.
    const nap = this.counted.get(ended.leg.id);
    if (nap !== undefined) {
      this.counted.delete(ended.leg.id);
      this.active.set(nap, this.active.get(nap) - 1);
    }
  }
}

export const policy = exportPolicy(NapCap);
