// Compiled with `tsc --noEmit --strict` by cli/tests/languages.rs: the SDK's
// declarations describe what a TypeScript plugin uses, and reject misuse.
import {
  Dataset,
  Policy,
  REBUILD,
  REFUSE,
  count,
  exportPolicy,
  heldLegs,
  info,
  nowMs,
  type CallLeg,
  type Decision,
  type Mixer,
  type Termination,
  type TerminationReason,
} from '../legsync.js';

class NoPremium extends Policy {
  private readonly prefix: string;

  constructor(rules: string) {
    super(rules);
    this.prefix = rules.trim() || '1900';
  }

  onCallLegSync(leg: CallLeg): Decision {
    const age = leg.answeredAtMs === undefined ? 0n : nowMs() - leg.answeredAtMs;
    if (age > 86_400_000n) {
      info(`leg ${leg.id} is a day old`);
    }
    return leg.called.startsWith(this.prefix) || leg.protocol === 'media-only' ? REFUSE : REBUILD;
  }
}

/** A counter that starts from the calls the host holds. */
class Counting extends Policy {
  private readonly counted = new Set<bigint>();

  constructor(rules: string) {
    super(rules);
    for (const { leg, adoptedBy } of heldLegs()) {
      if (adoptedBy !== null) {
        this.counted.add(leg.id);
      }
    }
  }

  onCallLegTerminated(ended: Termination): void {
    if (ended.held && ended.decidedBy !== null && this.counted.delete(ended.leg.id)) {
      count('freed', 1);
    }
  }
}

/** Reference data: a block list and a rate table, a batch per look-up. */
class Reference extends Policy {
  private readonly blocked = new Dataset('blocked');
  private readonly rates = new Dataset('rates');

  onCallLegSyncBatch(legs: CallLeg[]): Decision[] {
    const called = legs.map((leg) => leg.called);
    const blocked: boolean[] = this.blocked.contains(called);
    const rates = this.rates.longestPrefix(called);
    const ported: (string | undefined)[] = this.rates.get(called);
    return legs.map((_, i) => {
      const rate = rates[i];
      if (blocked[i] || (rate !== undefined && rate[1] === 'premium') || ported[i] === 'X') {
        return REFUSE;
      }
      return this.rates.kind === 'prefix-table' && this.blocked.entries > 0n ? REBUILD : REFUSE;
    });
  }
}

/** Decides conferences: none named `test-`, none above 100 legs. */
class Conferences extends Policy {
  decidesMixers(): boolean {
    return true;
  }

  onMixerSync(mixer: Mixer): Decision {
    const listeners = mixer.joins.filter((join) => join.role === 'listener').length;
    return mixer.name.startsWith('test-') || mixer.joins.length - listeners > 100 ? REFUSE : REBUILD;
  }

  onMixerTerminated(mixer: Mixer, reason: TerminationReason): void {
    info(`mixer ${mixer.id} ended: ${reason}`);
  }
}

export const policy = exportPolicy(NoPremium);
export const conferences = exportPolicy(Conferences);
const abstained: Decision[] | undefined = conferences.onMixerSync([]);
void abstained;
export const reference = exportPolicy(Reference);
export const counting = exportPolicy(Counting);
