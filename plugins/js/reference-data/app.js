// `reference-data` in JavaScript: refuses calls to numbers on the `blocked`
// list (a set) and to destinations whose rate class in `rates` (a prefix
// table: the longest prefix of the called number decides) is `premium`. The
// host builds both datasets once from the files in `datasets/`; the
// plugin's config grants them
// (`[policy.plugins.NAME] datasets = ["blocked", "rates"]`).

import { Dataset, Policy, REBUILD, REFUSE, becauseAt, exportPolicy } from '../legsync.js';

class ReferenceData extends Policy {
  constructor(rules) {
    super(rules);
    this.blocked = new Dataset('blocked');
    this.rates = new Dataset('rates');
  }

  // Two host calls for the whole batch: one per dataset.
  onCallLegSyncBatch(legs) {
    const called = legs.map((leg) => leg.called);
    const blocked = this.blocked.contains(called);
    const rates = this.rates.longestPrefix(called);
    return legs.map((_, index) => {
      if (blocked[index]) {
        becauseAt(index, 'blocked number');
        return REFUSE;
      }
      if (rates[index]?.[1] === 'premium') {
        becauseAt(index, 'premium destination');
        return REFUSE;
      }
      return REBUILD;
    });
  }
}

export const policy = exportPolicy(ReferenceData);
