// Type declarations for legsync.js, the JavaScript plugin SDK (contract
// legsync:policy@0.4.0). Editors and `tsc` read them beside legsync.js; a
// plugin written in TypeScript compiles against them, then is bundled as
// JavaScript (docs/plugin-guide.md, "JavaScript").

/** The contract version this SDK builds plugins for. */
export const CONTRACT_VERSION: '0.4.0';

/** A plugin's answer for a leg or a link. */
export type Decision = 'rebuild' | 'refuse';
export const REBUILD: 'rebuild';
export const REFUSE: 'refuse';

export type Direction = 'inbound' | 'outbound';
export type Protocol = 'sip' | 'isdn' | 'ss7' | 'cas' | 'media-only';
export type TerminationReason =
  | 'released'
  | 'absent-after-resync'
  | 'grace-expired'
  | 'refused-by-policy'
  | 'host-shutdown';

/** A call leg, its strings decoded. Ids and times are BigInts (u64). */
export interface CallLeg {
  id: bigint;
  sessionId: bigint;
  direction: Direction;
  protocol: Protocol;
  nap: string;
  calling: string;
  called: string;
  /** Unix milliseconds. */
  offeredAtMs: bigint;
  /** Unix milliseconds; undefined until answered. */
  answeredAtMs?: bigint;
  /** The leg this one is linked to, if any. */
  linkedTo?: bigint;
}

/** Two legs joined. */
export interface Link {
  id: bigint;
  legA: bigint;
  legB: bigint;
}

/** `len` bytes of a batch's text from byte `start`. */
export interface TextSpan {
  start: number;
  len: number;
}

/** A leg as the host sends it: its strings are spans of the batch's text. */
export interface PackedLeg {
  id: bigint;
  sessionId: bigint;
  direction: Direction;
  protocol: Protocol;
  nap: TextSpan;
  calling: TextSpan;
  called: TextSpan;
  offeredAtMs: bigint;
  answeredAtMs?: bigint;
  linkedTo?: bigint;
}

/** A batch as the host sends it: the text of all its legs, as UTF-8 bytes. */
export interface LegBatch {
  text: Uint8Array;
  legs: PackedLeg[];
}

/** A leg that ended, as the host sends it. */
export interface TerminatedLeg {
  leg: CallLeg;
  reason: TerminationReason;
  held: boolean;
  decidedBy?: string;
}

/**
 * A leg that ended (`OnCallLegTerminated`). Every plugin hears of every leg
 * that ends, including legs refused at a resync, which the host never held.
 */
export interface Termination {
  /** The leg as the host last knew it. */
  leg: CallLeg;
  /** Why it ended. */
  reason: TerminationReason;
  /** Whether the host held the leg until now (false for a refused leg). */
  held: boolean;
  /** The plugin that decided the leg at its last resync; null for a leg
   * the host followed live from its setup. */
  decidedBy: string | null;
}

/** How a leg takes part in a conference mixer. */
export type JoinRole = 'speaker' | 'listener' | 'both';

/** A leg joined to a mixer. */
export interface MixerJoin {
  leg: bigint;
  role: JoinRole;
}

/** A conference mixer: its legs the host holds are `joins`. */
export interface Mixer {
  id: bigint;
  createdAtMs: bigint;
  name: string;
  joins: MixerJoin[];
}

/** A mixer that ended, as the host sends it. */
export interface TerminatedMixer {
  mixer: Mixer;
  reason: TerminationReason;
}

/** A leg the host holds, and the plugin that adopted it (null: followed
 * live from its setup). */
export interface HeldLeg {
  leg: CallLeg;
  adoptedBy: string | null;
}

/** Every leg the host holds now, by ascending id: call it from the
 * constructor to rebuild what the policy counts. */
export function heldLegs(): Generator<HeldLeg, void, undefined>;

/** Says why the leg (or link) being decided gets its decision (a rule's
 * name): shown in the audit, blast radius and `legsync enforce`. */
export function because(reason: string): void;
/** `because` for the item at `index` of the batch (from a batch override). */
export function becauseAt(index: number, reason: string): void;

/** Adds `delta` (default 1) to the plugin's counter `name`, exported as
 * `legsync_plugin_counter_total{plugin, counter}`. */
export function count(name: string, delta?: number | bigint): void;

/** The legs of a batch, their strings read from the batch's bytes. */
export function legs(batch: LegBatch): CallLeg[];

/**
 * The decisions of one plugin: extend it and override what you decide.
 * One object lives per plugin instance, built from the rules text; throw
 * in the constructor to reject the rules with that message.
 */
export class Policy {
  constructor(rules: string);
  /** `OnCallLegSync` for one leg the host did not know. */
  onCallLegSync(leg: CallLeg): Decision;
  /** `OnLinkSync` for one link whose two legs were rebuilt. */
  onLinkSync(link: Link): Decision;
  /** `OnCallLegTerminated` for one leg that ended (every leg, to every plugin). */
  onCallLegTerminated(ended: Termination): void;
  /** A whole batch; one decision per leg, in order. */
  onCallLegSyncBatch(legs: CallLeg[]): Decision[];
  /** A whole batch of links; one decision per link, in order. */
  onLinkSyncBatch(links: Link[]): Decision[];
  /** Whether this policy decides mixers (default false: it abstains). */
  decidesMixers(): boolean;
  /** The mixer decision for one mixer the host did not know. */
  onMixerSync(mixer: Mixer): Decision;
  /** A mixer the host held ended (its legs live on). */
  onMixerTerminated(mixer: Mixer, reason: TerminationReason): void;
  /** A whole batch of mixers; one decision per mixer, in order. */
  onMixerSyncBatch(mixers: Mixer[]): Decision[];
}

/** The contract's exports, as `exportPolicy` builds them. */
export interface PolicyExports {
  init(config: string): void;
  onCallLegSync(batch: LegBatch): Decision[];
  onLinkSync(links: Link[]): Decision[];
  onCallLegTerminated(ended: TerminatedLeg[]): void;
  /** Undefined: the policy abstains from the mixer decision. */
  onMixerSync(mixers: Mixer[]): Decision[] | undefined;
  onMixerTerminated(ended: TerminatedMixer[]): void;
}

/** The contract's exports, implemented by an instance of `PolicyClass`:
 * export it from your module as `policy`. */
export function exportPolicy(PolicyClass: new (rules: string) => Policy): PolicyExports;

/** One line to the host log, tagged with the plugin's name (capped per call). */
export function trace(message: string): void;
export function debug(message: string): void;
export function info(message: string): void;
export function warn(message: string): void;
export function error(message: string): void;

/** The host's wall clock in Unix milliseconds (for call ages against
 * `answeredAtMs`). */
export function nowMs(): bigint;

/** What a dataset's file holds. */
export type DatasetKind = 'set' | 'map' | 'prefix-table';

/** Reference data the host shares with the plugins granted it
 * (`[policy.plugins.NAME] datasets = [...]`). Open it in the constructor;
 * look keys up a batch at a time. Throws when the dataset is not granted. */
export class Dataset {
  constructor(name: string);
  readonly name: string;
  readonly kind: DatasetKind;
  /** The first 16 hex digits of the file's SHA-256, as the audit names it. */
  readonly version: string;
  /** Distinct keys. */
  readonly entries: bigint;
  /** For each key: whether the dataset has it, exactly. */
  contains(keys: Iterable<string>): boolean[];
  /** For each key: its value when the dataset has it exactly ('' for a key of a set). */
  get(keys: Iterable<string>): (string | undefined)[];
  /** For each key: [the longest prefix of it that is a key, its value]. */
  longestPrefix(keys: Iterable<string>): ([string, string] | undefined)[];
}
