// Compiled with `tsc --noEmit --strict` by cli/tests/languages.rs: the SDK's
// declarations describe what a TypeScript plugin uses, and reject misuse.
import { Policy, REBUILD, REFUSE, exportPolicy, info, nowMs, type CallLeg, type Decision } from '../legsync.js';

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

export const policy = exportPolicy(NoPremium);
