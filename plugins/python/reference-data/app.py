"""`reference-data` in Python: refuses calls to numbers on the `blocked`
list (a set) and to destinations whose rate class in `rates` (a prefix
table: the longest prefix of the called number decides) is `premium`. The
host builds both datasets once from the files in `datasets/`; the plugin's
config grants them (`[policy.plugins.NAME] datasets = ["blocked", "rates"]`).
"""

from typing import List

import legsync_plugin as legsync


class ReferenceData(legsync.Policy):
    def __init__(self, rules: str) -> None:
        self.blocked = legsync.Dataset("blocked")
        self.rates = legsync.Dataset("rates")

    def on_call_leg_sync_batch(self, legs: List[legsync.CallLeg]) -> List[legsync.Decision]:
        # Two host calls for the whole batch: one per dataset.
        called = [leg.called for leg in legs]
        blocked = self.blocked.contains(called)
        rates = self.rates.longest_prefix(called)
        decisions = []
        for index, (is_blocked, rate) in enumerate(zip(blocked, rates)):
            if is_blocked:
                legsync.because_at(index, "blocked number")
                decisions.append(legsync.REFUSE)
            elif rate is not None and rate[1] == "premium":
                legsync.because_at(index, "premium destination")
                decisions.append(legsync.REFUSE)
            else:
                decisions.append(legsync.REBUILD)
        return decisions


Policy = legsync.export(ReferenceData)
