// Write a legsync policy plugin in JavaScript (contract legsync:policy@0.4.0).
//
// Extend `Policy`, override what you decide (every method has a default that
// rebuilds everything), and export the contract's interface as `policy`:
//
//     import { Policy, REBUILD, REFUSE, exportPolicy } from '../legsync.js';
//
//     class NoPremium extends Policy {
//       onCallLegSync(leg) {
//         return leg.called.startsWith('1900') ? REFUSE : REBUILD;
//       }
//     }
//
//     export const policy = exportPolicy(NoPremium);
//
// Build (docs/plugin-guide.md, "JavaScript"), from the repository's root
// (`--bundle` pulls this file into the component):
//
//     jco componentize path/to/app.js --bundle \
//         --bundle-config plugins/js/bundle.config.mjs --wit wit/policy.wit \
//         --world-name policy-plugin --disable http fetch-event --out my-policy.wasm
//
// The host sends legs in batches whose strings are spans of one byte buffer
// (a Uint8Array); `legs(batch)` turns a batch into plain leg objects with
// real strings, decoding each span from the bytes (slicing a decoded string
// would count UTF-16 units, not bytes, and misread every leg after a
// non-ASCII NAP). Ids and times are BigInts, as the contract's u64s are.

import {
  log,
  nowMs as hostNowMs,
  heldLegs as hostHeldLegs,
  count as hostCount,
  explain as hostExplain,
} from 'legsync:policy/host@0.4.0';
import {
  open as openDataset,
  contains as hostContains,
  get as hostGet,
  longestPrefix as hostLongestPrefix,
} from 'legsync:policy/datasets@0.4.0';

/** The contract version this SDK builds plugins for. */
export const CONTRACT_VERSION = '0.4.0';

export const REBUILD = 'rebuild';
export const REFUSE = 'refuse';

const utf8 = new TextDecoder('utf-8');
const toUtf8 = new TextEncoder();

const spanReader = (text) => (s) =>
  utf8.decode(text.subarray(s.start, s.start + s.len));

/** The legs of a batch, their strings read from the batch's bytes. */
export function legs(batch) {
  const span = spanReader(batch.text);
  return batch.legs.map((leg) => ({
    id: leg.id,
    sessionId: leg.sessionId,
    direction: leg.direction,
    protocol: leg.protocol,
    nap: span(leg.nap),
    calling: span(leg.calling),
    called: span(leg.called),
    offeredAtMs: leg.offeredAtMs,
    answeredAtMs: leg.answeredAtMs,
    linkedTo: leg.linkedTo,
  }));
}

/** Reasons given during the current call, and the item being decided. */
const reasons = [];
let current = 0;

/** Says why the leg (or link) being decided gets its decision: a rule's
 * name, say (typically for a refusal). The host shows it in the audit, a
 * reload's blast radius and `legsync enforce`. From a batch override, use
 * `becauseAt`. */
export const because = (reason) => {
  reasons.push({ index: current, reason });
};

/** `because` for the item at `index` of the batch. */
export const becauseAt = (index, reason) => {
  reasons.push({ index, reason });
};

function explaining(body) {
  reasons.length = 0;
  current = 0;
  const decisions = body();
  if (reasons.length > 0) {
    hostExplain(reasons.slice());
    reasons.length = 0;
  }
  return decisions;
}

/** Legs asked for per page by `heldLegs` (the host's most). */
const HELD_PAGE = 10000;

/**
 * Every leg the host holds now, by ascending id, as `{ leg, adoptedBy }`
 * (`adoptedBy` null for a leg followed live from its setup). Call it from
 * the constructor to rebuild what the policy counts: a fresh instance
 * (after a reload, a recycle, a failure) starts empty. The wait for the
 * host does not count against the call's deadline.
 */
export function* heldLegs() {
  let after = 0n;
  for (;;) {
    const page = hostHeldLegs(after, HELD_PAGE);
    const span = spanReader(page.batch.text);
    const batchLegs = legs(page.batch);
    for (let i = 0; i < batchLegs.length; i++) {
      yield { leg: batchLegs[i], adoptedBy: span(page.adoptedBy[i]) || null };
    }
    if (page.nextAfter === undefined || page.nextAfter === null) {
      return;
    }
    after = page.nextAfter;
  }
}

/** Adds `delta` (default 1) to the plugin's counter `name`, exported by the
 * host as `legsync_plugin_counter_total{plugin, counter}`. Names are 1 to 64
 * of a-z, 0-9 and _; at most 32 per plugin. */
export const count = (name, delta = 1) => hostCount(name, BigInt(delta));

/**
 * The decisions of one plugin. One object lives per plugin instance, built
 * from the rules text (the plugin's `NAME.rules` sidecar, or ''); throw in
 * the constructor to reject the rules with that message.
 */
export class Policy {
  constructor(_rules) {}

  /** `OnCallLegSync` for one leg the host did not know. */
  onCallLegSync(_leg) {
    return REBUILD;
  }

  /** `OnLinkSync` for one link whose two legs were rebuilt. */
  onLinkSync(_link) {
    return REBUILD;
  }

  /**
   * `OnCallLegTerminated` for one leg that ended (notification only):
   * `{ leg, reason, held, decidedBy }`. Every plugin hears of every leg that
   * ends, including legs refused at a resync (by this plugin or another),
   * which the host never held (`held` false): a counter frees a slot only
   * for a leg it counted.
   */
  onCallLegTerminated(_ended) {}

  /** A whole batch; one decision per leg, in order. */
  onCallLegSyncBatch(legs) {
    return legs.map((leg, index) => {
      current = index;
      return this.onCallLegSync(leg);
    });
  }

  /** A whole batch of links; one decision per link, in order. */
  onLinkSyncBatch(links) {
    return links.map((link, index) => {
      current = index;
      return this.onLinkSync(link);
    });
  }

  /**
   * Whether this policy decides conference mixers. False (the default): it
   * abstains and does not vote on mixers at all.
   */
  decidesMixers() {
    return false;
  }

  /**
   * The mixer decision for one mixer the host did not know (asked only when
   * `decidesMixers()`): `{ id, createdAtMs, name, joins: [{ leg, role }] }`,
   * its joins the legs the host holds. A refused mixer is freed at the
   * engine; its legs live on.
   */
  onMixerSync(_mixer) {
    return REBUILD;
  }

  /** A mixer the host held ended (its legs live on). */
  onMixerTerminated(_mixer, _reason) {}

  /** A whole batch of mixers; one decision per mixer, in order. */
  onMixerSyncBatch(mixers) {
    return mixers.map((mixer, index) => {
      current = index;
      return this.onMixerSync(mixer);
    });
  }
}

/** The contract's exports, implemented by an instance of `PolicyClass`:
 * export it from your module as `policy`. */
export function exportPolicy(PolicyClass) {
  let current = null;
  const policy = () => {
    if (current === null) {
      throw new Error('legsync: a policy export was called before init');
    }
    return current;
  };
  return {
    init(config) {
      try {
        current = new PolicyClass(config);
      } catch (e) {
        // The contract's `result<_, string>`: the message is shown to the
        // operator and the plugin is rejected.
        throw e instanceof Error ? e.message : String(e);
      }
    },
    onCallLegSync(batch) {
      return explaining(() => policy().onCallLegSyncBatch(legs(batch)));
    },
    onLinkSync(links) {
      return explaining(() => policy().onLinkSyncBatch(links));
    },
    onCallLegTerminated(ended) {
      const p = policy();
      for (const { leg, reason, held, decidedBy } of ended) {
        p.onCallLegTerminated({ leg, reason, held, decidedBy: decidedBy ?? null });
      }
    },
    // `option<list<decision>>`: undefined abstains.
    onMixerSync(mixers) {
      const p = policy();
      if (!p.decidesMixers()) {
        return undefined;
      }
      return explaining(() => p.onMixerSyncBatch(mixers));
    },
    onMixerTerminated(ended) {
      const p = policy();
      for (const { mixer, reason } of ended) {
        p.onMixerTerminated(mixer, reason);
      }
    },
  };
}

/** One line to the host log, tagged with the plugin's name (capped per call). */
export const trace = (message) => log('trace', message);
export const debug = (message) => log('debug', message);
export const info = (message) => log('info', message);
export const warn = (message) => log('warn', message);
export const error = (message) => log('error', message);

/** The host's wall clock in Unix milliseconds, a BigInt (for call ages
 * against `answeredAtMs`). */
export const nowMs = () => hostNowMs();

/** Keys as the host reads them: their bytes in one buffer, each a span. */
function keyBatch(keys) {
  const encoded = Array.from(keys, (key) => toUtf8.encode(key));
  const text = new Uint8Array(encoded.reduce((n, key) => n + key.length, 0));
  const spans = [];
  let start = 0;
  for (const key of encoded) {
    text.set(key, start);
    spans.push({ start, len: key.length });
    start += key.length;
  }
  return [{ text, keys: spans }, encoded];
}

/**
 * Reference data the host built from the operator's files and shares with
 * the plugins granted it (`[policy.plugins.NAME] datasets = [...]`): a
 * block list (set), a map, or a prefix table (rates by destination). Open
 * it in the constructor and keep it; look keys up a batch at a time (one
 * host call per batch, whatever its size). A dataset the plugin was not
 * granted throws, and the host rejects the plugin, naming it.
 */
export class Dataset {
  constructor(name) {
    let info;
    try {
      info = openDataset(name);
    } catch (e) {
      throw new Error(String(e?.payload ?? e?.message ?? e));
    }
    this.name = name;
    this.handle = info.handle;
    /** `set`, `map` or `prefix-table`. */
    this.kind = info.kind;
    /** The version (the first 16 hex digits of the file's SHA-256). */
    this.version = info.version;
    /** Distinct keys (a BigInt). */
    this.entries = info.entries;
  }

  /** For each key: whether the dataset has it, exactly. */
  contains(keys) {
    return hostContains(this.handle, keyBatch(keys)[0]);
  }

  /** For each key: its value when the dataset has it exactly ('' for a key
   * of a set), else undefined. */
  get(keys) {
    const found = hostGet(this.handle, keyBatch(keys)[0]);
    const value = spanReader(found.text);
    return found.hits.map((hit) => (hit === undefined ? undefined : value(hit.value)));
  }

  /** For each key: the longest of the dataset's keys that is a prefix of
   * it and its value, as [prefix, value]; undefined when no key is. */
  longestPrefix(keys) {
    const [batch, encoded] = keyBatch(keys);
    const found = hostLongestPrefix(this.handle, batch);
    const value = spanReader(found.text);
    return found.hits.map((hit, i) =>
      hit === undefined
        ? undefined
        : [utf8.decode(encoded[i].subarray(0, hit.matched)), value(hit.value)],
    );
  }
}
